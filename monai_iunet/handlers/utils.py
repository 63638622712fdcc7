"""What the handlers share: the cases of a batch (for messages), the main process, the module inside DDP; and what
bundle configs use to put handlers together (``existing``, ``handlers_for_rank``)."""

from __future__ import annotations

import torch

__all__ = ["batch_dicts", "batch_cases", "is_main_process", "unwrapped", "existing", "handlers_for_rank"]


def batch_dicts(batch) -> list[dict]:
    """A batch as a list of dicts: MONAI engines decollate ``state.batch`` into per-sample dicts, and crops with
    ``num_samples`` collate to a list of dicts."""
    if isinstance(batch, dict):
        return [batch]
    return [b for b in batch if isinstance(b, dict)] if isinstance(batch, (list, tuple)) else []


def batch_cases(batch) -> list[str]:
    """Names of the cases in a collated batch (their first image file), for messages."""
    names: list[str] = []
    for item in batch_dicts(batch):
        found = (getattr(item.get("image"), "meta", None) or {}).get("filename_or_obj", [])
        names += [str(n) for n in (found if isinstance(found, (list, tuple)) else [found])]
    return list(dict.fromkeys(names))


def is_main_process() -> bool:
    """True outside a distributed run and on its rank 0: the one process that writes checkpoints."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def unwrapped(obj):
    """The module inside ``DistributedDataParallel``/``DataParallel``, so that checkpoints hold plain keys (no
    ``module.`` prefix) whether or not the run was distributed; anything else as it is."""
    parallel = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    return obj.module if isinstance(obj, parallel) else obj


def existing(instance):
    """``instance`` itself. A config's handler list entry ``{"_target_": "monai_iunet.handlers.existing", "instance":
    "@lr_scheduler"}`` attaches an object defined elsewhere in the config (one that the resumable checkpoint also
    saves) while keeping every entry a dict, as MONAI Label requires (it reads ``_target_`` of each)."""
    return instance


def handlers_for_rank(handlers: list, rank: int) -> list:
    """The trainer handlers a process of a distributed run attaches: all on rank 0; on the others, everything but
    the console and TensorBoard logging (one copy of each line and curve). Chosen by type, not by position, because
    tools such as MONAI Label insert handlers of their own into the list."""
    from ignite.handlers import ProgressBar
    from monai.handlers import StatsHandler, TensorBoardStatsHandler

    if rank == 0:
        return list(handlers)
    return [h for h in handlers if not isinstance(h, (ProgressBar, StatsHandler, TensorBoardStatsHandler))]
