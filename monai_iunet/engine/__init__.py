"""Memory-efficient backpropagation for invertible layers (no MONAI imports)."""

from .accounting import SavedTensorBytes
from .reversible import (
    Concat,
    Program,
    Split,
    flatten_program,
    invert_program,
    run,
    run_memory_efficient,
    run_program,
    walk_program,
)

__all__ = [
    "SavedTensorBytes",
    "Concat",
    "Program",
    "Split",
    "flatten_program",
    "invert_program",
    "run",
    "run_memory_efficient",
    "run_program",
    "walk_program",
]
