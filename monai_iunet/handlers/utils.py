"""What the handlers share: the cases of a batch (for messages), the main process, the module inside DDP."""

from __future__ import annotations

import torch

__all__ = ["batch_dicts", "batch_cases", "is_main_process", "unwrapped"]


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
