"""Counting the bytes autograd keeps for backward: a deterministic, device-independent memory measure."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SavedTensorBytes"]


class SavedTensorBytes(torch.autograd.graph.saved_tensors_hooks):
    """Context manager: ``bytes`` = size of the distinct storages saved for backward while it is active.

    Parameters (and anything else saved that already existed) count too; storages saved twice count once.

    Example::

        with SavedTensorBytes() as saved:
            loss = net(x).sum()
        print(saved.bytes)
    """

    def __init__(self) -> None:
        self._storages: dict[int, int] = {}
        super().__init__(self._pack, lambda tensor: tensor)

    def _pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        self._storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())
