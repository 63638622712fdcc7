"""Counting the bytes autograd keeps for backward: a deterministic, device-independent memory measure."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["SavedTensorBytes"]


class SavedTensorBytes(torch.autograd.graph.saved_tensors_hooks):
    """Context manager: ``bytes`` = size of the distinct storages saved for backward while it is active.

    Parameters are model state, not activations, and are left out unless ``include_parameters``; storages saved
    twice count once.

    Example::

        with SavedTensorBytes() as saved:
            loss = net(x).sum()
        print(saved.bytes)
    """

    def __init__(self, include_parameters: bool = False) -> None:
        self._storages: dict[int, int] = {}
        self._include_parameters = include_parameters
        super().__init__(self._pack, lambda tensor: tensor)

    def __enter__(self) -> SavedTensorBytes:
        super().__enter__()
        return self

    def _pack(self, tensor: Tensor) -> Tensor:
        if isinstance(tensor, nn.Parameter) and not self._include_parameters:
            return tensor
        storage = tensor.untyped_storage()
        self._storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    @property
    def bytes(self) -> int:
        return sum(self._storages.values())
