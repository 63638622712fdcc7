from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from monai_iunet.layers import AdditiveCoupling, AffineCoupling
from monai_iunet.layers.base import InvertibleModule
from monai_iunet.networks.blocks import coupling_block

from ..conftest import perturb, relative_error


@pytest.mark.parametrize("coupling", ["additive", "affine"])
@pytest.mark.parametrize("spatial_dims,channels", [(1, 2), (2, 5), (3, 4)])
def test_coupling_invertible_and_identity_at_init(coupling, spatial_dims, channels):
    block = coupling_block(spatial_dims, channels, coupling).double()
    x = torch.randn(2, channels, *([6] * spatial_dims), dtype=torch.float64)
    torch.testing.assert_close(block(x), x)  # zero-initialised final norm
    perturb(block, 0.3)
    y = block(x)
    assert relative_error(y, x) > 1e-2
    torch.testing.assert_close(block.inverse(y), x)


def test_zero_init_can_be_disabled():
    block = coupling_block(2, 4, "additive", zero_init=False)
    x = torch.randn(1, 4, 6, 6)
    assert relative_error(block(x), x) > 1e-3


@pytest.mark.parametrize("coupling", ["additive", "affine"])
def test_invert_and_backward_matches_autograd(coupling):
    """The fused additive path and the generic path both equal plain autograd (input and parameter grads)."""
    block = perturb(coupling_block(2, 4, coupling), 0.3).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    y = block(x)
    grad_y = torch.randn_like(y)
    params = [p for p in block.parameters()]
    expected = torch.autograd.grad(y, [x, *params], grad_y)
    x_rec, grad_x, grads = block.invert_and_backward(y.detach(), grad_y)
    torch.testing.assert_close(x_rec, x.detach())
    torch.testing.assert_close(grad_x, expected[0])
    for p, g in zip(params, expected[1:]):
        torch.testing.assert_close(grads[p], g)
    generic_x, generic_grad, _ = InvertibleModule.invert_and_backward(block, y.detach(), grad_y)
    torch.testing.assert_close(generic_grad, grad_x)
    # overwrite=True: same results, written into the given tensors' memory
    y_owned, grad_owned = y.detach().clone(), grad_y.clone()
    x_over, grad_over, grads_over = block.invert_and_backward(y_owned, grad_owned, overwrite=True)
    torch.testing.assert_close(x_over, x_rec)
    torch.testing.assert_close(grad_over, grad_x)
    for p in params:
        torch.testing.assert_close(grads_over[p], grads[p])
    if coupling == "additive":
        assert x_over.data_ptr() == y_owned.data_ptr() and grad_over.data_ptr() == grad_owned.data_ptr()


class _Fused(torch.autograd.Function):
    """y = coupling(x) whose backward is the fused invert_and_backward: gradcheck checks it like any custom path."""

    @staticmethod
    def forward(ctx, x, block):
        ctx.block = block
        with torch.no_grad():
            y = block(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        (y,) = ctx.saved_tensors
        _, grad_x, _ = ctx.block.invert_and_backward(y, grad_y)
        return grad_x, None


def test_gradcheck_fused_additive_backward():
    block = perturb(coupling_block(2, 4, "additive", num_convs=1), 0.3).double()
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    assert gradcheck(lambda x: _Fused.apply(x, block), (x,))


def test_too_few_channels():
    with pytest.raises(ValueError, match="at least 2 channels"):
        AdditiveCoupling(1, torch.nn.Identity(), torch.nn.Identity())
    with pytest.raises(ValueError, match="coupling"):
        coupling_block(2, 4, "multiplicative")
    assert AffineCoupling(2, torch.nn.Identity(), torch.nn.Identity()).split == 1
