"""``IUNet``: the MONAI-facing segmentation/regression network around the invertible core."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.base import check_input, to_channels_last, weights_channels_last
from ..layers.conv import SameConv
from .invertible_unet import InvertibleUNet

__all__ = ["IUNet"]


class IUNet(nn.Module):
    """Invertible U-Net of Etmann, Ke & Schönlieb (2020) with learnable orthogonal resampling.

    A linear convolution lifts ``in_channels`` to ``channels``, the fully invertible core (:class:`InvertibleUNet`,
    attribute ``core``) processes them, and a linear convolution projects to ``out_channels``. With
    ``memory_efficient=True`` the core keeps no activations during training: backward reconstructs them by
    inversion, so training memory does not grow with depth. The two linear convolutions keep only the network input
    and the core output (paper §3.1).

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: number of input channels (e.g. 4 MRI modalities).
        out_channels: number of output channels (e.g. 3 BraTS regions).
        channels: width C of the invertible core at full resolution (the paper's "channel blowup": 16/32/64).
        num_levels: resolution levels of the core.
        blocks_per_level: coupling layers per level and side (int or one per level).
        strides: downsampling strides (int, per-axis, or per-level; see :class:`InvertibleUNet`).
        lift_kernel_size: kernel size of the lifting convolution.
        head_kernel_size: kernel size of the output convolution.
        pad_input: pad spatial sizes that are not multiples of the total stride (output cropped back); if False such
            inputs raise ``ValueError``.
        memory_efficient: reconstruct activations in backward instead of storing them (training only).
        identity_init: start as the identity map (``in_channels == out_channels``): the lift copies the input into the
            first channels, the head reads them back, and the core is the identity (its ``zero_init``, on by
            default). Suits tasks whose answer is close to the input, e.g. post-processing (paper §4.1).
        memory_format: ``"channels_last"`` (default) runs lift, core and head with channels stored last (the fast
            layout for the small-channel 3D convolutions, see :class:`InvertibleUNet`); inputs and outputs stay in
            PyTorch's ordinary channels-first layout. ``"contiguous"``: channels-first throughout.
        core_kwargs: further :class:`InvertibleUNet` arguments (``split_fraction``, ``coupling``, ``norm``, ``act``,
            ``resampling_method``, ``resampling_init``, ``channel_mixing``, ``zero_init``, ``subnet_dtype``, …).

    Example::

        net = IUNet(spatial_dims=3, in_channels=4, out_channels=3, channels=16, num_levels=5, blocks_per_level=2)
        logits = net(torch.randn(1, 4, 160, 192, 128))
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: int = 16,
        num_levels: int = 4,
        blocks_per_level: int | Sequence[int] = 2,
        strides: int | Sequence = 2,
        lift_kernel_size: int = 3,
        head_kernel_size: int = 1,
        pad_input: bool = True,
        memory_efficient: bool = True,
        identity_init: bool = False,
        memory_format: str = "channels_last",
        **core_kwargs,
    ) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels} and {out_channels}.")
        for name, k in (("lift_kernel_size", lift_kernel_size), ("head_kernel_size", head_kernel_size)):
            if k < 1 or k % 2 != 1:
                raise ValueError(f"{name} must be a positive odd int, got {k}.")
        if identity_init and (in_channels != out_channels or in_channels > channels):
            raise ValueError(
                f"identity_init needs in_channels == out_channels <= channels, got {in_channels}, {out_channels}, "
                f"{channels}."
            )
        if identity_init and not core_kwargs.get("zero_init", True):
            raise ValueError("identity_init needs the core's zero_init (the couplings start as the identity).")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.pad_input = pad_input
        self.core = InvertibleUNet(
            spatial_dims, channels, num_levels, blocks_per_level, strides, memory_efficient=memory_efficient,
            memory_format=memory_format, **core_kwargs,
        )
        self.lift = SameConv(spatial_dims, in_channels, channels, lift_kernel_size)
        self.head = SameConv(spatial_dims, channels, out_channels, head_kernel_size)
        if identity_init:
            for layer, kernel_size in ((self.lift, lift_kernel_size), (self.head, head_kernel_size)):
                with torch.no_grad():
                    layer.weight.zero_()
                    layer.bias.zero_()
                    for c in range(in_channels):  # a centred delta: channel c -> channel c
                        layer.weight[(c, c, *[kernel_size // 2] * spatial_dims)] = 1.0
        if self.core.channels_last:  # the core's weights already are
            weights_channels_last(self.lift, spatial_dims)
            weights_channels_last(self.head, spatial_dims)

    @property
    def total_stride(self) -> list[int]:
        """Per-axis factor that spatial sizes must be multiples of (else they are padded)."""
        return self.core.total_stride

    @property
    def memory_efficient(self) -> bool:
        return self.core.memory_efficient

    @memory_efficient.setter
    def memory_efficient(self, value: bool) -> None:
        self.core.memory_efficient = value

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, "IUNet", self.spatial_dims, self.in_channels)  # no strides: the input is padded to them
        spatial = x.shape[2:]
        pad: list[int] = []
        for size, stride in zip(spatial, self.core.total_stride):
            pad = [0, (stride - size % stride) % stride] + pad  # F.pad lists the last axis first
        if sum(pad) > 0:
            if not self.pad_input:
                raise ValueError(
                    f"IUNet: spatial size {list(spatial)} is not a multiple of the total stride "
                    f"{self.core.total_stride} and pad_input=False; crop/pad the input or set pad_input=True."
                )
            x = F.pad(x, pad)
        if self.core.channels_last:
            # The core gets its state channels-last, so that it neither converts nor returns a copy: the lift writes
            # it so from a channels-last input (an in_channels-wide copy), except where PyTorch's kernel for it
            # returns channels-first whatever the layout (float64, the CPU fallback).
            h = to_channels_last(self.lift(to_channels_last(x)))
        else:
            h = self.lift(x)
        y = self.head(self.core(h))
        if self.core.channels_last:
            y = y.contiguous()  # out_channels wide: callers get the ordinary layout
        if sum(pad) > 0:
            y = self._crop(y, spatial)
        return y

    @torch.jit.unused
    def reconstruction_error(self, x: Tensor) -> float:
        """The invertible core's relative reconstruction error ``‖core⁻¹(core(h)) − h‖ / ‖h‖`` on ``h = lift(x)``
        (cropped to a multiple of the total stride), computed in eval mode so that no running statistics change.
        The memory-efficient gradients are exact only while this is small."""
        training = self.training
        self.eval()
        try:
            with torch.no_grad():
                h = self.lift(x.to(self.lift.weight.device)).float()
                h = self._crop(h, [n - n % s for n, s in zip(h.shape[2:], self.core.total_stride)])
                return float((self.core.inverse(self.core(h)) - h).norm() / h.norm().clamp_min(1e-12))
        finally:
            self.train(training)

    def _crop(self, y: Tensor, spatial: list[int]) -> Tensor:
        for axis, size in enumerate(spatial):
            y = y.narrow(axis + 2, 0, size)
        return y
