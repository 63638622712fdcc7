from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from monai_iunet.layers import InvertibleChannelMixing, OrthogonalDownsampling, OrthogonalUpsampling

from ..conftest import perturb

METHODS = st.sampled_from(["exp", "cayley", "householder"])


@st.composite
def resampling_case(draw):
    spatial_dims = draw(st.integers(1, 3))
    strides = tuple(draw(st.lists(st.integers(1, 3), min_size=spatial_dims, max_size=spatial_dims)))
    multiples = draw(st.lists(st.integers(1, 3), min_size=spatial_dims, max_size=spatial_dims))
    channels = draw(st.integers(1, 3))
    shape = (draw(st.integers(1, 2)), channels, *(s * m for s, m in zip(strides, multiples)))
    init = draw(st.sampled_from(["pixel_shuffle", "random"] + (["haar"] if max(strides) <= 2 else [])))
    return spatial_dims, strides, shape, init


@given(case=resampling_case(), method=METHODS)
def test_down_up_invertible_and_norm_preserving(case, method):
    spatial_dims, strides, shape, init = case
    down = perturb(OrthogonalDownsampling(spatial_dims, shape[1], strides, method=method, init=init), 0.3)
    x = torch.randn(shape, dtype=torch.float64)
    down = down.double()
    y = down(x)
    sigma = math.prod(strides)
    assert y.shape == (shape[0], shape[1] * sigma, *(n // s for n, s in zip(shape[2:], strides)))
    torch.testing.assert_close(y.norm(), x.norm())  # orthogonal operator
    torch.testing.assert_close(down.inverse(y), x)
    up = OrthogonalUpsampling(spatial_dims, shape[1] * sigma, strides, method=method, init=down.matrix().detach())
    up = up.double()
    torch.testing.assert_close(up(y), x)
    torch.testing.assert_close(up.inverse(x), y)


@pytest.mark.parametrize("stride", [2, 3])
def test_pixel_shuffle_init_is_pixel_unshuffle(stride):
    down = OrthogonalDownsampling(2, 3, stride, init="pixel_shuffle")
    x = torch.randn(2, 3, 2 * stride, 3 * stride)
    torch.testing.assert_close(down(x), F.pixel_unshuffle(x, stride))


def test_haar_init_2d_computes_haar_coefficients():
    down = OrthogonalDownsampling(2, 1, 2, init="haar")
    x = torch.tensor([[[[1.0, 2.0], [3.0, 5.0]]]])
    a, b, c, d = 1.0, 2.0, 3.0, 5.0
    expected = torch.tensor([a + b + c + d, -a + b - c + d, -a - b + c + d, a - b - c + d]) / 2
    torch.testing.assert_close(down(x).flatten(), expected)


def test_haar_init_3d_lowpass_channel_is_scaled_average():
    down = OrthogonalDownsampling(3, 2, 2, init="haar")
    x = torch.randn(1, 2, 4, 6, 8)
    low = down(x)[:, ::8]  # channel c·8 is the average filter of channel c
    torch.testing.assert_close(low, F.avg_pool3d(x, 2) * 8 / math.sqrt(8))


def test_anisotropic_stride_and_per_channel_matrices():
    down = OrthogonalDownsampling(3, 4, (2, 2, 1), init="random")
    assert down.matrix.theta.shape == (4, 4, 4)
    assert down(torch.randn(1, 4, 4, 4, 3)).shape == (1, 16, 2, 2, 3)


def test_custom_init_tensor():
    q = torch.linalg.qr(torch.randn(3, 8, 8, dtype=torch.float64))[0]
    down = OrthogonalDownsampling(3, 3, 2, init=q)
    torch.testing.assert_close(down.matrix(), q.float())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(spatial_dims=4, channels=2), "spatial_dims"),
        (dict(spatial_dims=2, channels=0), "channels"),
        (dict(spatial_dims=2, channels=2, stride=(2, 2, 2)), "stride"),
        (dict(spatial_dims=2, channels=2, stride=0), "stride"),
        (dict(spatial_dims=2, channels=2, init="wavelet"), "init"),
        (dict(spatial_dims=2, channels=2, stride=3, init="haar"), "haar"),
        (dict(spatial_dims=2, channels=2, method="givens"), "method"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OrthogonalDownsampling(**kwargs)


def test_bad_inputs_name_the_problem():
    down = OrthogonalDownsampling(2, 2, 2)
    with pytest.raises(ValueError, match="divisible"):
        down(torch.randn(1, 2, 5, 4))
    with pytest.raises(ValueError, match="channels"):
        down(torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="spatial"):
        down(torch.randn(1, 2, 4))
    with pytest.raises(ValueError, match="multiple"):
        OrthogonalUpsampling(2, 6, 2)


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
@pytest.mark.parametrize("init", ["identity", "random"])
def test_channel_mixing(spatial_dims, init):
    mix = perturb(InvertibleChannelMixing(spatial_dims, 5, init=init), 0.2)
    x = torch.randn(2, 5, *([4] * spatial_dims))
    y = mix(x)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1))  # orthogonal per voxel
    torch.testing.assert_close(mix.inverse(y), x, atol=1e-5, rtol=1e-5)
    if init == "identity":
        torch.testing.assert_close(InvertibleChannelMixing(spatial_dims, 5)(x), x)
