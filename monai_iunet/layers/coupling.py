"""Coupling layers (Dinh et al.; Jacobsen et al. 2018): invertible for any sub-networks ``f`` and ``g``.

The input's channels are split into ``x1`` (the first ``channels // 2``) and ``x2``. The sub-networks are built by
the caller (see :func:`monai_iunet.networks.blocks.coupling_subnet`), so this module stays free of MONAI.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import InvertibleModule, like_layout, trainable_parameters

__all__ = ["AdditiveCoupling", "AffineCoupling"]


class _Coupling(InvertibleModule):
    def __init__(self, channels: int, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling layer needs at least 2 channels, got channels={channels}.")
        self.split = channels // 2
        self.f = f
        self.g = g

    # The half a sub-network reads is given in the input's layout (its convolutions run in it); the other half only
    # enters an elementwise operation, which follows the sub-network output's layout.
    def _forward_halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = self._halves(x)
        return x1, like_layout(x2, x)

    def _inverse_halves(self, y: Tensor) -> tuple[Tensor, Tensor]:
        y1, y2 = self._halves(y)
        return like_layout(y1, y), y2

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # one split, not two slices: autograd then joins the halves' gradients in one copy instead of zero-filling a
        # full-size gradient for each slice and adding them
        x1, x2 = torch.split(x, [self.split, x.shape[1] - self.split], dim=1)
        return x1, x2


class AdditiveCoupling(_Coupling):
    """``y1 = x1 + f(x2)``, ``y2 = x2 + g(y1)``.

    Args:
        channels: number of channels C of input and output.
        f: sub-network mapping ``C - C//2`` to ``C//2`` channels.
        g: sub-network mapping ``C//2`` to ``C - C//2`` channels.
    """

    volume_preserving = True  # a shear: |det| = 1

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self._forward_halves(x)
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], dim=1)

    def inverse(self, y: Tensor) -> Tensor:
        y1, y2 = self._inverse_halves(y)
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return torch.cat([x1, x2], dim=1)

    def invert_and_backward(
        self, y: Tensor, grad_y: Tensor, overwrite: bool = False, grad_log_det: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[Tensor, Tensor]]:
        # (log-det 0: grad_log_det has nothing to flow into.) RevNet-style fusion: the activations needed to
        # backpropagate through g and f are exactly the ones computed while inverting, so each sub-network runs forward
        # once (with grad) instead of twice. The halves of x and of its gradient are written straight into their final
        # tensors (with ``overwrite``, into y and grad_y themselves: each half is overwritten only after its last use),
        # so backward allocates no full-size tensor at the point where it needs the most memory.
        s = self.split
        y1, y2 = y[:, :s].detach(), y[:, s:].detach()
        grad_y1, grad_y2 = grad_y[:, :s], grad_y[:, s:]
        x, grad_x = (y, grad_y) if overwrite else (torch.empty_like(y), torch.empty_like(grad_y))
        g_params, f_params = trainable_parameters(self.g), trainable_parameters(self.f)
        # g reads y1 in the state's layout: a half-size copy for channels-last states, dropped once g is done
        g_input = like_layout(y1, y).detach().requires_grad_(True)
        with torch.enable_grad():
            g_out = self.g(g_input)
        grads = torch.autograd.grad(g_out, [g_input, *g_params], grad_y2.to(g_out.dtype), allow_unused=True)
        del g_input
        _add(grad_y1, grads[0], out=grad_x[:, :s])
        param_grads = dict(zip(g_params, grads[1:]))
        torch.sub(y2, g_out.detach(), out=x[:, s:])
        del g_out, grads
        x2 = like_layout(x[:, s:], x).detach().requires_grad_(True)
        with torch.enable_grad():
            f_out = self.f(x2)
        grads = torch.autograd.grad(f_out, [x2, *f_params], grad_x[:, :s].to(f_out.dtype), allow_unused=True)
        _add(grad_y2, grads[0], out=grad_x[:, s:])
        param_grads.update(zip(f_params, grads[1:]))
        torch.sub(y1.detach(), f_out.detach(), out=x[:, :s])
        return x, grad_x, param_grads


def _add(a: Tensor, b: Tensor | None, out: Tensor) -> None:
    """``out = a + b`` (``b`` None: unused input, no gradient)."""
    if b is None:
        out.copy_(a)
    else:
        torch.add(a, b, out=out)


class AffineCoupling(_Coupling):
    """``y1 = x1·exp(s1) + t1`` with ``(s1, t1) = f(x2)``, then ``y2 = x2·exp(s2) + t2`` with ``(s2, t2) = g(y1)``.

    The log-scales pass through ``tanh`` (scales within [1/e, e]) so that inversion stays well conditioned.

    Args:
        channels: number of channels C of input and output.
        f: sub-network mapping ``C - C//2`` to ``2·(C//2)`` channels (log-scale, shift).
        g: sub-network mapping ``C//2`` to ``2·(C - C//2)`` channels.
    """

    @staticmethod
    def _scale_shift(params: Tensor) -> tuple[Tensor, Tensor]:
        log_scale, shift = params.chunk(2, dim=1)
        return torch.tanh(log_scale), shift

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x)[0]

    @torch.jit.unused
    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, log_scale1, log_scale2 = self._forward(x)
        return y, log_scale1.flatten(1).sum(1, dtype=x.dtype) + log_scale2.flatten(1).sum(1, dtype=x.dtype)

    def _forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x1, x2 = self._forward_halves(x)
        log_scale1, shift = self._scale_shift(self.f(x2))
        y1 = x1 * torch.exp(log_scale1) + shift
        log_scale2, shift = self._scale_shift(self.g(y1))
        y2 = x2 * torch.exp(log_scale2) + shift
        return torch.cat([y1, y2], dim=1), log_scale1, log_scale2

    def inverse(self, y: Tensor) -> Tensor:
        y1, y2 = self._inverse_halves(y)
        log_scale, shift = self._scale_shift(self.g(y1))
        x2 = (y2 - shift) * torch.exp(-log_scale)
        log_scale, shift = self._scale_shift(self.f(x2))
        x1 = (y1 - shift) * torch.exp(-log_scale)
        return torch.cat([x1, x2], dim=1)
