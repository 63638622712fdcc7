"""Ignite handlers for bundle configs (``monai_iunet.handlers.<Name>``): resumable atomic checkpoints and the best
model (``checkpoint``), the learning-rate schedule (``schedule``), the non-finite guard (``non_finite``) and the
inversion-drift monitor (``inversion_drift``). They talk to a network only through its public methods
(``state_dict``, ``reconstruction_error``)."""

from .checkpoint import (
    AtomicFileSaver,
    BestModelSaver,
    GradScalerState,
    RandomStates,
    ResumableCheckpoint,
    UnvalidatedModelSaver,
    save_atomically,
)
from .inversion_drift import InversionDriftMonitor
from .non_finite import NonFiniteGuard
from .schedule import PolyLRSchedule
from .utils import batch_cases, existing, handlers_for_rank, is_main_process, unwrapped

__all__ = [
    "AtomicFileSaver",
    "BestModelSaver",
    "GradScalerState",
    "InversionDriftMonitor",
    "NonFiniteGuard",
    "PolyLRSchedule",
    "RandomStates",
    "ResumableCheckpoint",
    "UnvalidatedModelSaver",
    "batch_cases",
    "existing",
    "handlers_for_rank",
    "is_main_process",
    "save_atomically",
    "unwrapped",
]
