"""Same-size convolution that keeps PyTorch's CPU convolutions on oneDNN.

PyTorch sends a float32 CPU convolution of a single image to its im2col fallback (``slow_conv3d``) when
N·C·D·H ≤ 20480 (ATen's ``ConvParams::use_mkldnn``, "for some case, native is faster"), a rule that catches most of
an iUNet's sub-network convolutions below full resolution: 16 → 16 channels at 32³ take 104 ms forward and backward
there, 10 ms on oneDNN (2 threads; ``docs/benchmarks/cpu.md``). A batch of two is never sent there, so such a
convolution runs here as a batch of the two halves of the volume along the first spatial axis, each with the
``kernel // 2`` slices of its neighbour that it needs: the same convolution (to rounding), for one copy of the
input. The output halves of a channels-last convolution lie in memory exactly as the whole output does, so joining
them is a view; autograd keeps the input, as for any convolution (the halves are rebuilt in backward).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import is_channels_last, memory_format_of

__all__ = ["SameConv", "falls_back", "same_conv", "splits_batch"]

_FALLBACK_MAX_ELEMENTS = 20480  # ATen's threshold on N·C·D·H (N·C·H·W in 2D) below which it picks the fallback
# a property of the build, read once: torch.compile cannot trace the call (a graph break in every sub-network)
_ONEDNN_BUILT = torch.backends.mkldnn.is_available()


def splits_batch(x: Tensor, weight: Tensor) -> bool:
    """Whether :func:`same_conv` runs ``x`` as two half-volumes: a float32 CPU input that PyTorch would send to its
    fallback kernel (see :func:`falls_back`), with oneDNN there to take the batch of two."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and _ONEDNN_BUILT
        and torch.backends.mkldnn.enabled
        and not torch.is_autocast_enabled("cpu")  # autocast runs it in bf16/fp16, which PyTorch sends to oneDNN
        and not torch.jit.is_tracing()  # a trace or an export records one graph for all sizes
        and not torch.compiler.is_exporting()
        and falls_back(x.shape, weight.shape)
    )


def falls_back(input_shape: Sequence[int], weight_shape: Sequence[int]) -> bool:
    """Whether PyTorch sends a float32 CPU same-size convolution of these shapes (batch first, stride 1, one group)
    to its fallback kernel in a way that halving the first spatial axis avoids (ATen's rule, 2D/3D)."""
    kernel = weight_shape[2:]
    return (
        len(input_shape) >= 4
        and input_shape[0] == 1
        and input_shape[2] % 2 == 0
        and input_shape[2] // 2 >= kernel[0] // 2  # a halo no thicker than a half
        and not all(k == 1 for k in kernel)  # 1×1 convolutions need no columns: the fallback is a plain matmul
        and not (kernel[-1] > 3 and kernel[-2] > 3)
        and math.prod(input_shape[1:4]) <= _FALLBACK_MAX_ELEMENTS
    )


def same_conv(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """Stride-1, zero-padded convolution with odd kernels (output size = input size), on oneDNN where it pays."""
    padding = [k // 2 for k in weight.shape[2:]]
    if not splits_batch(x, weight):
        return _conv(x, weight, bias, padding)
    return _HalvedConvolution.apply(x, weight, bias)


def _halves(x: Tensor, p: int) -> Tensor:
    """The two halves of ``x`` along its first spatial axis, each with the ``p`` slices of its neighbour (or of zero
    padding) that a same-size convolution needs, as one batch of two, in ``x``'s layout."""
    half = x.shape[2] // 2
    halves = torch.empty(
        (2, x.shape[1], half + 2 * p, *x.shape[3:]), dtype=x.dtype, device=x.device, memory_format=memory_format_of(x)
    )
    halves[:1, :, :p] = 0
    halves[:1, :, p:] = x[:, :, : half + p]
    halves[1:, :, : half + p] = x[:, :, half - p :]
    halves[1:, :, half + p :] = 0
    return halves


def _join(halves: Tensor) -> Tensor:
    """(2, C, h, ...) → (1, C, 2h, ...) with the strides of a tensor allocated so (the batch stride included, which
    the next op's layout choice reads): a view for channels-last tensors, a copy otherwise."""
    c, h, rest = halves.shape[1], halves.shape[2], halves.shape[3:]
    if is_channels_last(halves):
        return halves.movedim(1, -1).reshape(1, 2 * h, *rest, c).movedim(-1, 1)
    return halves.movedim(0, 1).reshape(c, 2 * h, *rest).unsqueeze(0)


class _HalvedConvolution(torch.autograd.Function):
    """The convolution on the batch of halves. Saves ``x`` rather than the halves (rebuilt in backward, a copy), so
    that autograd keeps exactly what it keeps for an ordinary convolution."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        padding = [k // 2 for k in weight.shape[2:]]
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _join(_conv(_halves(x, padding[0]), weight, bias, [0, *padding[1:]]))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor):
        x, weight = ctx.saved_tensors
        n, p = weight.dim() - 2, weight.shape[2] // 2
        half = x.shape[2] // 2
        # the output gradient split as the output was joined (the inverse view / copy)
        grad_halves = grad_y[0].reshape(grad_y.shape[1], 2, half, *grad_y.shape[3:]).movedim(1, 0)
        grad_halves = grad_halves.contiguous(memory_format=memory_format_of(x))
        grad_in, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
            grad_halves, _halves(x, p), weight, [weight.shape[0]] if ctx.has_bias else None, [1] * n,
            [0] + [k // 2 for k in weight.shape[3:]], [1] * n, False, [0] * n, 1,
            [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]],
        )
        grad_x = None
        if grad_in is not None:  # each half's gradient back in place; the halo slices overlap the other half
            grad_x = torch.empty_like(x)
            grad_x[:, :, :half] = grad_in[:1, :, p : p + half]
            grad_x[:, :, half:] = grad_in[1:, :, p : p + half]
            grad_x[:, :, half : half + p] += grad_in[:1, :, p + half :]
            grad_x[:, :, half - p : half] += grad_in[1:, :, :p]
        return grad_x, grad_weight, grad_bias


def _conv(x: Tensor, weight: Tensor, bias: Tensor | None, padding: list[int]) -> Tensor:
    # the functional forms, not torch.convolution: autocast casts only these
    if weight.dim() == 5:
        return F.conv3d(x, weight, bias, 1, padding)
    if weight.dim() == 4:
        return F.conv2d(x, weight, bias, 1, padding)
    return F.conv1d(x, weight, bias, 1, padding)


class SameConv(nn.Module):
    """A stride-1 convolution whose output has its input's size (odd kernel, zero padding), for 1, 2 or 3 spatial
    dims; parameters, their names and their initialisation as ``nn.Conv{1,2,3}d`` (checkpoints are interchangeable).
    On CPU it avoids PyTorch's slow fallback kernel, see :func:`same_conv`.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: odd kernel size (int, or one per spatial axis).
        bias: whether to add a learnable bias.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int | tuple = 3, bias: bool = True
    ) -> None:
        super().__init__()
        kernel = (kernel_size,) * spatial_dims if isinstance(kernel_size, int) else tuple(kernel_size)
        if len(kernel) != spatial_dims or any(k < 1 or k % 2 == 0 for k in kernel):
            raise ValueError(f"kernel_size must be odd (one value or {spatial_dims}), got {kernel_size!r}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *kernel))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        # nn.Conv*d's initialisation
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(in_channels * math.prod(kernel))
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return _conv(x, self.weight, self.bias, [k // 2 for k in self.kernel_size])
        return self._same_conv(x)

    @torch.jit.unused
    def _same_conv(self, x: Tensor) -> Tensor:
        return same_conv(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, bias={self.bias is not None}"
