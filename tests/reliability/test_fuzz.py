"""Fuzzing the public API: every call returns a correct result or raises ValueError/TypeError with a message —
never a crash, a hang or a silently wrong shape."""

from __future__ import annotations

import math

import torch
from hypothesis import given
from hypothesis import strategies as st

from monai_iunet import IUNet, OrthogonalDownsampling

from ..conftest import perturb, relative_error

DTYPES = st.sampled_from([torch.float32, torch.float64, torch.bfloat16])


@st.composite
def network_and_input(draw):
    spatial_dims = draw(st.integers(1, 3))
    strides = draw(st.one_of(st.integers(1, 3), st.lists(st.integers(1, 3), min_size=spatial_dims,
                                                         max_size=spatial_dims)))
    kwargs = dict(
        spatial_dims=spatial_dims,
        in_channels=draw(st.integers(1, 3)),
        out_channels=draw(st.integers(1, 3)),
        channels=draw(st.integers(1, 9)),
        num_levels=draw(st.integers(1, 3)),
        blocks_per_level=draw(st.integers(0, 2)),
        strides=strides,
        pad_input=draw(st.booleans()),
        memory_efficient=draw(st.booleans()),
        coupling=draw(st.sampled_from(["additive", "affine"])),
        subnet_convs=1,
    )
    channels = kwargs["in_channels"] + draw(st.sampled_from([0, 0, 0, 1]))  # sometimes the wrong count
    shape = (draw(st.integers(1, 2)), channels, *draw(st.lists(st.integers(3, 12), min_size=spatial_dims,
                                                               max_size=spatial_dims)))
    return kwargs, shape, draw(DTYPES)


def _expect_clear_error(error: Exception) -> None:
    assert isinstance(error, (ValueError, TypeError)), f"{type(error).__name__}: {error}"
    assert str(error), "error without a message"


@given(case=network_and_input())
def test_iunet_is_correct_or_refuses_clearly(case):
    kwargs, shape, dtype = case
    try:
        net = IUNet(**kwargs)
    except Exception as error:  # noqa: BLE001 — the point is to classify whatever is raised
        _expect_clear_error(error)
        return
    net = perturb(net, 0.05).to(dtype)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    try:
        y = net(x)
    except Exception as error:  # noqa: BLE001
        _expect_clear_error(error)
        return
    assert shape[1] == kwargs["in_channels"], "a wrong channel count was accepted"
    assert y.shape == (shape[0], kwargs["out_channels"], *shape[2:]) and y.dtype == dtype
    assert torch.isfinite(y).all()
    y.float().square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if dtype == torch.bfloat16:
        return
    # Exactness where the precision allows: memory-efficient gradients equal plain autograd's, the core inverts.
    tolerance = 1e-4 if dtype == torch.float32 else 1e-9
    grads = torch.cat([p.grad.flatten() for p in net.parameters()])
    net.zero_grad()
    net.memory_efficient = not net.memory_efficient
    net(x.detach()).float().square().mean().backward()
    assert relative_error(grads, torch.cat([p.grad.flatten() for p in net.parameters()])) <= tolerance
    with torch.no_grad():
        h = net.lift(torch.nn.functional.pad(x, _pad(shape[2:], net.total_stride)))
        assert relative_error(net.core.inverse(net.core(h)), h) <= tolerance


def _pad(spatial, total_stride) -> list[int]:
    pad: list[int] = []
    for size, stride in zip(spatial, total_stride):
        pad = [0, (-size) % stride] + pad
    return pad


@given(
    spatial_dims=st.integers(1, 3),
    channels=st.integers(0, 3),
    stride=st.integers(0, 3),
    size=st.integers(1, 9),
    init=st.sampled_from(["haar", "pixel_shuffle", "random", "bogus"]),
    method=st.sampled_from(["exp", "cayley", "householder", "bogus"]),
    dtype=DTYPES,
)
def test_resampling_is_correct_or_refuses_clearly(spatial_dims, channels, stride, size, init, method, dtype):
    try:
        layer = OrthogonalDownsampling(spatial_dims, channels, stride, method=method, init=init).to(dtype)
    except Exception as error:  # noqa: BLE001
        _expect_clear_error(error)
        return
    x = torch.randn(1, channels, *([size] * spatial_dims), dtype=dtype)
    try:
        y = layer(x)
    except Exception as error:  # noqa: BLE001
        _expect_clear_error(error)
        return
    assert size % stride == 0
    assert y.shape == (1, channels * stride**spatial_dims, *([size // stride] * spatial_dims))
    tolerance = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 3e-2}[dtype]
    assert relative_error(layer.inverse(y).float(), x.float()) <= tolerance
    assert math.isclose(float(y.float().norm()), float(x.float().norm()), rel_tol=max(tolerance, 1e-6))
