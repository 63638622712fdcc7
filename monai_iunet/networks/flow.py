"""``IUNetFlow``: the fully invertible U-Net as a normalizing flow (the paper's future work, §5).

The iUNet's orthogonal resampling and channel mixing have |det| = 1 exactly, so as a flow only its affine
couplings and actnorm layers contribute log-determinants. The topology is the :class:`InvertibleUNet`'s program,
preceded by an invertible front end (a learnable orthogonal squeeze, Haar-initialised) in place of ``IUNet``'s linear
lift, so the whole map is bijective; the engine carries the log-determinant through its reconstructing backward,
so training memory stays flat in depth as for segmentation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..engine.reversible import Program, flatten_program, invert_program, run, walk_program
from ..layers.actnorm import ActNorm
from ..layers.base import (
    MEMORY_FORMATS,
    check_input,
    enter_layout,
    leave_layout,
    weights_channels_last,
)
from ..layers.resampling import OrthogonalDownsampling, as_strides
from .invertible_unet import InvertibleUNet

__all__ = ["IUNetFlow", "standard_normal_log_prob"]

LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` summed over all but the batch dimension."""
    return -0.5 * (z.square() + LOG_2PI).flatten(1).sum(1)


class IUNetFlow(nn.Module):
    """A normalizing flow shaped like the iUNet: ``z = f(x)`` with a standard normal base, exact ``log_prob`` and
    ``sample``; ``forward`` returns ``(z, log|det ∂z/∂x|)``, ``inverse`` maps ``z`` back exactly.

    ``f`` is a learnable orthogonal squeeze (``in_channels`` → ``in_channels·σ`` channels at 1/``squeeze_stride``
    the resolution) followed by an :class:`InvertibleUNet` with affine couplings and, optionally, actnorm before each
    coupling. The latent ``z`` has the squeezed shape (:meth:`latent_shape`). Where the iUNet splits channels off
    as skips, they bypass the coarser levels and are mixed back in by the decoder's couplings; a final orthogonal
    map would not change the likelihood under the isotropic base, so none is added.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: channels of the data (e.g. 4 MRI modalities).
        num_levels: resolution levels of the core.
        blocks_per_level: (actnorm +) affine coupling layers per level and side.
        squeeze_stride: stride of the front end's orthogonal squeeze (int or per axis).
        strides: the core's downsampling strides (see :class:`InvertibleUNet`).
        split_fraction: the core's λ (see :class:`InvertibleUNet`).
        actnorm: an actnorm layer before every coupling (Glow); initialise with :meth:`initialize`.
        subnet_convs, kernel_size, norm, act: the coupling sub-networks (see :class:`InvertibleUNet`).
        memory_efficient: reconstruct activations in backward instead of storing them.
        memory_format: ``"channels_last"`` (default) or ``"contiguous"``.

    Example::

        flow = IUNetFlow(spatial_dims=3, in_channels=4, num_levels=3)
        flow.initialize(batch)
        loss = -flow.log_prob(batch).mean()
        samples = flow.sample(2, (32, 32, 32))
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        num_levels: int = 3,
        blocks_per_level: int | Sequence[int] = 2,
        squeeze_stride: int | Sequence[int] = 2,
        strides: int | Sequence = 2,
        split_fraction: float | Sequence[float] | None = None,
        actnorm: bool = True,
        subnet_convs: int = 2,
        kernel_size: int = 3,
        norm: tuple | str = ("group", {"num_groups": 1}),
        act: tuple | str = ("leakyrelu", {"negative_slope": 0.01}),
        memory_efficient: bool = True,
        memory_format: str = "channels_last",
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}.")
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}.")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.memory_efficient = memory_efficient
        squeeze = as_strides(squeeze_stride, spatial_dims, "squeeze_stride")
        self.squeeze = OrthogonalDownsampling(spatial_dims, in_channels, squeeze, init="haar")
        self.core = InvertibleUNet(
            spatial_dims, self.squeeze.out_channels, num_levels, blocks_per_level, strides, split_fraction,
            coupling="affine", subnet_convs=subnet_convs, kernel_size=kernel_size, norm=norm, act=act,
            memory_efficient=memory_efficient, memory_format=memory_format, actnorm=actnorm,
        )
        self.squeeze_strides = list(squeeze)
        self.total_stride = [s * c for s, c in zip(squeeze, self.core.total_stride)]
        self.channels_last = self.core.channels_last
        if self.channels_last:
            weights_channels_last(self.squeeze, spatial_dims)

    def program(self) -> Program:
        """The flow as one program for the engine: the squeeze, then the core's program."""
        return [self.squeeze] + self.core.program()

    def latent_shape(self, spatial_shape: Sequence[int]) -> tuple[int, ...]:
        """Shape of ``z`` (without batch) for data of spatial shape ``spatial_shape``."""
        self._check_input(torch.empty(1, self.in_channels, *spatial_shape, device="meta"))  # data of that shape
        return (self.squeeze.out_channels, *(s // k for s, k in zip(spatial_shape, self.squeeze_strides)))

    def _check_input(self, x: Tensor) -> None:
        check_input(x, "IUNetFlow", self.spatial_dims, self.in_channels, self.total_stride, "crop or pad the data")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log|det ∂z/∂x|)``; the log-determinant per sample, shape ``(batch,)``."""
        self._check_input(x)
        x, restore = enter_layout(x, self.channels_last)
        z, log_det = run(self.program(), x, self.memory_efficient, log_det=True)
        return leave_layout(z, restore), log_det

    def inverse(self, z: Tensor) -> Tensor:
        """The data ``x`` with ``f(x) = z`` (exact up to rounding)."""
        check_input(z, "IUNetFlow.inverse", self.spatial_dims, self.squeeze.out_channels,
                    [t // k for t, k in zip(self.total_stride, self.squeeze_strides)], "z comes from forward or sample")
        z, restore = enter_layout(z, self.channels_last)
        return leave_layout(invert_program(self.program(), z), restore)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x)`` in nats per sample (change of variables: base log-density of ``z`` plus the log-det)."""
        z, log_det = self(x)
        return standard_normal_log_prob(z) + log_det

    @torch.no_grad()
    def sample(self, n: int, spatial_shape: Sequence[int], temperature: float = 1.0) -> Tensor:
        """``n`` samples of spatial shape ``spatial_shape`` (``temperature`` scales the base's standard deviation)."""
        parameter = next(self.parameters())
        z = temperature * torch.randn(n, *self.latent_shape(spatial_shape), device=parameter.device,
                                      dtype=parameter.dtype)
        return self.inverse(z)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Glow's data-dependent initialisation: each actnorm layer normalises, per channel, what reaches it for
        the batch ``x`` (run once before training)."""
        self._check_input(x)
        x, _ = enter_layout(x, self.channels_last)

        def apply(layer, t):
            if isinstance(layer, ActNorm):
                layer.initialize(t)
            return layer(t)

        walk_program(flatten_program(self.program()), x, apply)
