"""Learnable orthogonal (hence exactly invertible) downsampling, upsampling and channel mixing.

All three are one operator (paper §2, Thm. 4 / Cor. 6): a grouped convolution whose stride equals its kernel size,
so windows do not overlap, and whose per-group weight is an orthogonal matrix reshaped into conv filters. The
operator is then orthogonal and its inverse is the transposed convolution with the same weight. One implementation
serves 1D, 2D and 3D (``torch.convolution`` is dimension-generic).

- downsampling: ``groups = channels``; each channel's s1×…×sd window becomes σ = s1·…·sd channels.
- upsampling: the inverse of a downsampling (``channels`` must be divisible by σ).
- channel mixing: ``groups = 1``, stride 1, a ``channels × channels`` matrix (an orthogonal 1×1 convolution).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .base import InvertibleModule, autocast_disabled, check_input, is_channels_last
from .orthogonal import OrthogonalMatrix, haar_matrix, random_orthogonal

__all__ = ["OrthogonalDownsampling", "OrthogonalUpsampling", "InvertibleChannelMixing", "as_strides"]


def as_strides(stride: int | Sequence[int], spatial_dims: int, name: str = "stride") -> tuple[int, ...]:
    """An int or per-axis sequence → a tuple of ``spatial_dims`` positive ints (ValueError naming ``name``)."""
    strides = (stride,) * spatial_dims if isinstance(stride, int) else tuple(int(s) for s in stride)
    if len(strides) != spatial_dims or any(s < 1 for s in strides):
        raise ValueError(f"{name} must be a positive int or {spatial_dims} positive ints, got {stride!r}.")
    return strides


def _resampling_init(init: str | Tensor, strides: tuple[int, ...]) -> Tensor:
    sigma = math.prod(strides)
    if isinstance(init, Tensor):
        return init
    if init == "haar":
        return haar_matrix(strides)
    if init == "pixel_shuffle":
        return torch.eye(sigma, dtype=torch.float64)
    if init == "random":
        return random_orthogonal(1, sigma)[0]
    raise ValueError(f"init must be 'haar', 'pixel_shuffle', 'random' or a tensor, got {init!r}.")


class _OrthogonalConv(InvertibleModule):
    """``groups`` orthogonal m×m matrices (m = in-channels-per-group · σ) applied as a conv with stride = kernel."""

    volume_preserving = True  # orthogonal: |det| = 1

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        groups: int,
        strides: tuple[int, ...],
        method: str,
        init: Tensor,
        learnable: bool,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
        self.layer_name = type(self).__name__  # for error messages (type() is not scriptable)
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.groups = groups
        self.strides = list(strides)
        self.group_channels = in_channels // groups
        self.out_channels = in_channels * math.prod(strides)
        self.pointwise = groups == 1 and math.prod(strides) == 1  # a plain channel mixing
        size = self.group_channels * math.prod(strides)
        self.matrix = OrthogonalMatrix(groups, size, method, init, learnable)

    def weight(self) -> Tensor:
        """The conv weight ``(groups·m, in_channels/groups, *strides)``: row k of group g's matrix is filter g·m+k."""
        matrix = self.matrix()
        return matrix.reshape([matrix.shape[0] * matrix.shape[1], self.group_channels] + self.strides)

    def _conv(self, x: Tensor, transposed: bool) -> Tensor:
        if self.pointwise:
            # A 1×1 convolution as a matrix product over channels: the same arithmetic without the convolution
            # kernels' layout copies (oneDNN copies input and output, e.g. +32 MiB at 16×64³ on CPU).
            matrix = self.matrix()[0].to(x.dtype)
            if is_channels_last(x):  # channels are the last, contiguous axis: (…voxels, C) @ Mᵀ, no copy
                last = torch.movedim(x, 1, -1)
                return torch.movedim(torch.matmul(last, matrix if transposed else matrix.transpose(0, 1)), -1, 1)
            flat = x.reshape(x.shape[0], x.shape[1], -1)
            return torch.matmul(matrix.transpose(0, 1) if transposed else matrix, flat).reshape(x.shape)
        zeros = [0] * self.spatial_dims
        ones = [1] * self.spatial_dims
        weight = self.weight().to(x.dtype)
        return torch.convolution(x, weight, None, self.strides, zeros, ones, transposed, zeros, self.groups)

    def _analysis(self, x: Tensor) -> Tensor:
        check_input(x, self.layer_name, self.spatial_dims, self.in_channels, self.strides,
                    "pad the input (IUNet pads automatically) or change the strides")
        return self._conv(x, False)

    def _synthesis(self, y: Tensor) -> Tensor:
        check_input(y, self.layer_name, self.spatial_dims, self.out_channels)
        return self._conv(y, True)

    # The invertible state stays in the input's precision under autocast: a bf16 state drifts on reconstruction.
    def _run(self, x: Tensor, transposed: bool) -> Tensor:
        if torch.jit.is_scripting():
            return self._synthesis(x) if transposed else self._analysis(x)
        return self._run_without_autocast(x, transposed)

    @torch.jit.unused
    def _run_without_autocast(self, x: Tensor, transposed: bool) -> Tensor:
        with autocast_disabled(x.device.type):
            return self._synthesis(x) if transposed else self._analysis(x)


class OrthogonalDownsampling(_OrthogonalConv):
    """Learnable invertible downsampling: ``(B, C, *S) → (B, C·σ, *S/s)`` with one orthogonal σ×σ matrix per channel.

    Args:
        spatial_dims: 1, 2 or 3.
        channels: number of input channels C.
        stride: int or per-axis sequence s (anisotropic strides such as ``(2, 2, 1)`` are fine); σ = ∏ s.
        method: orthogonal parametrisation, ``"exp"``, ``"cayley"`` or ``"householder"``.
        init: ``"haar"`` (separable Haar wavelet; strides of 1 or 2), ``"pixel_shuffle"`` (a pure voxel reorder,
            equal to ``pixel_unshuffle`` in 2D), ``"random"`` (a random rotation shared by all channels) or a tensor
            of shape ``(σ, σ)`` or ``(C, σ, σ)`` holding orthogonal matrices whose rows are the filters.
        learnable: False freezes the matrices.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        stride: int | Sequence[int] = 2,
        method: str = "exp",
        init: str | Tensor = "haar",
        learnable: bool = True,
    ) -> None:
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}.")
        strides = as_strides(stride, spatial_dims)
        super().__init__(spatial_dims, channels, channels, strides, method, _resampling_init(init, strides), learnable)

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, False)

    def inverse(self, y: Tensor) -> Tensor:
        return self._run(y, True)


class OrthogonalUpsampling(_OrthogonalConv):
    """Learnable invertible upsampling, the inverse of :class:`OrthogonalDownsampling`: ``(B, C, *S) → (B, C/σ, *S·s)``.

    Args:
        spatial_dims: 1, 2 or 3.
        channels: number of input channels C; must be divisible by σ = ∏ stride.
        stride: int or per-axis sequence.
        method, init, learnable: as for :class:`OrthogonalDownsampling`; with equal arguments an upsampling is
            initialised as the exact inverse of the downsampling.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        stride: int | Sequence[int] = 2,
        method: str = "exp",
        init: str | Tensor = "haar",
        learnable: bool = True,
    ) -> None:
        strides = as_strides(stride, spatial_dims)
        sigma = math.prod(strides)
        if channels < 1 or channels % sigma != 0:
            raise ValueError(f"channels ({channels}) must be a positive multiple of prod(stride) = {sigma}.")
        out_channels = channels // sigma
        super().__init__(
            spatial_dims, out_channels, out_channels, strides, method, _resampling_init(init, strides), learnable
        )

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, True)

    def inverse(self, y: Tensor) -> Tensor:
        return self._run(y, False)


class InvertibleChannelMixing(_OrthogonalConv):
    """Invertible channel mixing: an orthogonal 1×1 convolution (one ``channels × channels`` matrix).

    Args:
        spatial_dims: 1, 2 or 3.
        channels: number of channels.
        method: orthogonal parametrisation, ``"exp"``, ``"cayley"`` or ``"householder"``.
        init: ``"identity"``, ``"random"`` (a random rotation) or an orthogonal ``(channels, channels)`` tensor.
        learnable: False freezes the matrix.
    """

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        method: str = "exp",
        init: str | Tensor = "identity",
        learnable: bool = True,
    ) -> None:
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}.")
        if isinstance(init, str):
            if init not in ("identity", "random"):
                raise ValueError(f"init must be 'identity', 'random' or a tensor, got {init!r}.")
            init = torch.eye(channels, dtype=torch.float64) if init == "identity" else random_orthogonal(1, channels)[0]
        super().__init__(spatial_dims, channels, 1, (1,) * spatial_dims, method, init, learnable)

    def forward(self, x: Tensor) -> Tensor:
        return self._run(x, False)

    def inverse(self, y: Tensor) -> Tensor:
        return self._run(y, True)
