"""Activation normalisation (Kingma & Dhariwal 2018, Glow): a per-channel affine map with a data-dependent start."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .base import InvertibleModule

__all__ = ["ActNorm"]


class ActNorm(InvertibleModule):
    """``y = (x + b) · exp(s)`` per channel; ``log|det| = Σ_c s_c · (number of voxels)``.

    Starts as the identity. :meth:`initialize` sets ``b`` and ``s`` from a batch so that each channel of the output
    has zero mean and unit variance (Glow's data-dependent initialisation); call it once before training, e.g. via
    ``IUNetFlow.initialize``.

    Args:
        spatial_dims: 1, 2 or 3.
        channels: number of channels.
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        if channels < 1:
            raise ValueError(f"channels must be positive, got {channels}.")
        shape = (1, channels) + (1,) * spatial_dims
        self.bias = nn.Parameter(torch.zeros(shape))
        self.log_scale = nn.Parameter(torch.zeros(shape))

    @torch.no_grad()
    def initialize(self, x: Tensor, eps: float = 1e-6) -> None:
        dims = [0] + list(range(2, x.dim()))
        self.bias.copy_(-x.mean(dims, keepdim=True))
        self.log_scale.copy_(-torch.log(x.std(dims, keepdim=True) + eps))

    def forward(self, x: Tensor) -> Tensor:
        return (x + self.bias.to(x.dtype)) * torch.exp(self.log_scale.to(x.dtype))

    def inverse(self, y: Tensor) -> Tensor:
        return y * torch.exp(-self.log_scale.to(y.dtype)) - self.bias.to(y.dtype)

    @torch.jit.unused
    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        voxels = math.prod(x.shape[2:])
        return self.forward(x), (self.log_scale.to(x.dtype).sum() * voxels).expand(x.shape[0])
