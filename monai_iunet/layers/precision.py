"""Mixed precision for the coupling sub-networks: convolutions in bf16/fp16, normalisation in fp32.

An invertible network's state must stay in fp32 (a low-precision state drifts on reconstruction, see
:func:`monai_iunet.engine.run`), but its coupling sub-networks may compute in low precision: their outputs are only
added to (or scale) the fp32 state. :class:`MixedPrecisionSequential` runs a sub-network under autocast to a given
dtype on the input's device, whatever the caller's autocast, and under autocast gives every normalisation layer an
fp32 input: CUDA's autocast computes normalisations in fp32, CPU autocast leaves them in the input's dtype, and
ATen's reduced-precision CPU normalisation kernels differ per instruction set (``docs/benchmarks/training_cpu.md``);
with this rule a sub-network computes the same on every device.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from .base import autocast_state

__all__ = ["MixedPrecisionSequential", "REDUCED_PRECISION"]

REDUCED_PRECISION = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


class MixedPrecisionSequential(nn.Sequential):
    """``nn.Sequential`` (same parameters, names and state dict) whose layers run under autocast to
    ``compute_dtype``, with normalisation layers always in fp32.

    Args:
        layers: the layers, in order.
        compute_dtype: ``"bfloat16"``, ``"float16"`` (or the torch dtypes) to run the layers under autocast on the
            input's device; None: no autocast of its own (an enclosing autocast still applies).
    """

    def __init__(self, *layers: nn.Module, compute_dtype: str | torch.dtype | None = None) -> None:
        super().__init__(*layers)
        if isinstance(compute_dtype, str):
            if compute_dtype not in REDUCED_PRECISION:
                raise ValueError(f"compute_dtype must be one of {tuple(REDUCED_PRECISION)} or None, got "
                                 f"{compute_dtype!r}.")
            compute_dtype = REDUCED_PRECISION[compute_dtype]
        if compute_dtype is not None and compute_dtype not in REDUCED_PRECISION.values():
            raise ValueError(f"compute_dtype must be torch.bfloat16, torch.float16 or None, got {compute_dtype!r}.")
        self.compute_dtype = compute_dtype

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            for layer in self:
                x = layer(x)
            return x
        return self._mixed_forward(x)

    @torch.jit.unused
    def _mixed_forward(self, x: Tensor) -> Tensor:
        autocast = self.compute_dtype is not None and torch.amp.is_autocast_available(x.device.type)
        with torch.autocast(x.device.type, dtype=self.compute_dtype) if autocast else nullcontext():
            # under autocast (ours or the caller's) the norms' parameters are fp32: give them an fp32 input; a
            # network converted to bf16/fp16 as a whole stays in its dtype
            norms_in_fp32 = autocast_state(x.device.type)[0]
            for layer in self:
                if norms_in_fp32 and isinstance(layer, _NORMS) and x.dtype in (torch.float16, torch.bfloat16):
                    x = x.float()
                x = layer(x)
        return x

    def extra_repr(self) -> str:
        return "" if self.compute_dtype is None else f"compute_dtype={self.compute_dtype}"
