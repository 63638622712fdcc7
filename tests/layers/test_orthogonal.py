from __future__ import annotations

import math

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from monai_iunet.layers import (
    InvertibleChannelMixing,
    OrthogonalDownsampling,
    OrthogonalMatrix,
    haar_matrix,
    orthogonal_map,
)
from monai_iunet.layers.orthogonal import ORTHOGONAL_METHODS

# Paper §2.2: θ whose exp(θ - θᵀ) is the 2D Haar transform.
PAPER_THETA = math.pi / 4 * torch.tensor(
    [[0, 0, -1, -1], [0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]], dtype=torch.float64
)
PAPER_HAAR = 0.5 * torch.tensor(
    [[1, 1, -1, -1], [1, 1, 1, 1], [1, -1, 1, -1], [1, -1, -1, 1]], dtype=torch.float64
)


@pytest.mark.parametrize("method", ORTHOGONAL_METHODS)
def test_maps_are_orthogonal(method):
    theta = torch.randn(3, 6, 6, dtype=torch.float64)
    q = orthogonal_map(theta, method)
    torch.testing.assert_close(q @ q.mT, torch.eye(6, dtype=torch.float64).expand(3, 6, 6))


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="method"):
        OrthogonalMatrix(1, 4, "givens", torch.eye(4))


def test_paper_theta_gives_haar_exactly():
    torch.testing.assert_close(orthogonal_map(PAPER_THETA, "exp"), PAPER_HAAR)


def _rows_up_to_sign(matrix):
    # Every Haar filter has a nonzero first tap: fix its sign to +.
    return {tuple(r.tolist()) for r in torch.round(2 * matrix * torch.sign(matrix[:, :1]))}


def test_haar_init_matches_paper_up_to_row_order_and_sign():
    ours = haar_matrix((2, 2))
    assert _rows_up_to_sign(ours) == _rows_up_to_sign(PAPER_HAAR)
    torch.testing.assert_close(ours[0], torch.full((4,), 0.5, dtype=torch.float64))  # the average comes first


def test_haar_3d_is_separable_and_orthogonal():
    h = haar_matrix((2, 2, 2))
    torch.testing.assert_close(h @ h.T, torch.eye(8, dtype=torch.float64))
    torch.testing.assert_close(h, torch.kron(torch.kron(haar_matrix((2,)), haar_matrix((2,))), haar_matrix((2,))))
    with pytest.raises(ValueError, match="haar"):
        haar_matrix((3, 2))


@pytest.mark.parametrize("method", ORTHOGONAL_METHODS)
@pytest.mark.parametrize("init", [torch.eye(4), haar_matrix((2, 2)), -torch.eye(4)])
def test_init_is_exact_for_every_method(method, init):
    # det(-I) = +1 in 4D; det -1 matrices are covered by the reflection below.
    matrix = OrthogonalMatrix(2, 4, method, init)
    torch.testing.assert_close(matrix(), init.float().expand(2, 4, 4))
    reflection = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0]))
    matrix.set_matrix(reflection)
    torch.testing.assert_close(matrix(), reflection.expand(2, 4, 4))


def test_non_orthogonal_init_rejected():
    with pytest.raises(ValueError, match="orthogonal"):
        OrthogonalMatrix(1, 4, "exp", torch.ones(4, 4))


class _Inverse(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, y):
        return self.layer.inverse(y)


@pytest.mark.parametrize("method", ORTHOGONAL_METHODS)
@pytest.mark.parametrize("spatial_dims,stride", [(1, 3), (2, (2, 1)), (3, 2)])
def test_gradcheck_through_resampling_layer(method, spatial_dims, stride):
    """Forward and inverse of the whole layer, w.r.t. the input and θ, in float64 (the reference's exp/Cayley fail)."""
    layer = OrthogonalDownsampling(spatial_dims, 2, stride, method=method, init="random").double()
    strides = (stride,) * spatial_dims if isinstance(stride, int) else stride
    x = torch.randn(1, 2, *(2 * s for s in strides), dtype=torch.float64, requires_grad=True)
    theta = (0.3 * torch.randn_like(layer.matrix.theta)).requires_grad_(True)
    assert gradcheck(lambda x, t: functional_call(layer, {"matrix.theta": t}, (x,)), (x, theta))
    y = layer(x).detach().requires_grad_(True)
    inverse = _Inverse(layer)
    assert gradcheck(lambda y, t: functional_call(inverse, {"layer.matrix.theta": t}, (y,)), (y, theta))


@pytest.mark.parametrize("method", ORTHOGONAL_METHODS)
@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_gradcheck_through_channel_mixing(method, spatial_dims):
    """The mixing runs as a matrix product over channels: gradcheck it like the resampling (batch 2, and a
    non-contiguous input, as after a channel split)."""
    layer = InvertibleChannelMixing(spatial_dims, 3, method=method, init="random").double()
    x = torch.randn(2, 5, *([3] * spatial_dims), dtype=torch.float64)[:, 1:4].requires_grad_(True)
    theta = (0.3 * torch.randn_like(layer.matrix.theta)).requires_grad_(True)
    assert gradcheck(lambda x, t: functional_call(layer, {"matrix.theta": t}, (x,)), (x, theta))
    y = layer(x).detach().requires_grad_(True)
    assert gradcheck(lambda y, t: functional_call(_Inverse(layer), {"layer.matrix.theta": t}, (y,)), (y, theta))
    weight = layer.matrix()[0].reshape(3, 3, *([1] * spatial_dims))
    convolution = [torch.nn.functional.conv1d, torch.nn.functional.conv2d, torch.nn.functional.conv3d][spatial_dims - 1]
    torch.testing.assert_close(layer(x), convolution(x, weight))


@pytest.mark.parametrize("method", ORTHOGONAL_METHODS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_keeps_matrix_and_state_in_fp32(method, dtype):
    layer = OrthogonalDownsampling(3, 2, 2, method=method, init="random")
    with torch.no_grad():
        layer.matrix.theta.normal_(0, 0.3)
    x = torch.randn(1, 2, 4, 4, 4)
    with torch.autocast("cpu", dtype=dtype):
        matrix = layer.matrix()
        y = layer(x)
    assert matrix.dtype == torch.float32 and y.dtype == torch.float32
    torch.testing.assert_close(y, layer(x))
    torch.testing.assert_close(layer.inverse(y), x, atol=1e-5, rtol=1e-5)


def test_learnable_false_freezes():
    layer = OrthogonalDownsampling(2, 3, learnable=False)
    assert list(layer.parameters()) == []
    assert "matrix.theta" in layer.state_dict()
