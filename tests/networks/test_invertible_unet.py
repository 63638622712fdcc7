from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from monai_iunet import InvertibleUNet
from monai_iunet.networks.blocks import coupling_subnet

from ..conftest import perturb

CORE_CASES = [
    # (kwargs, input shape)
    (dict(spatial_dims=1, channels=4, num_levels=3), (2, 4, 16)),
    (dict(spatial_dims=2, channels=4, num_levels=3, blocks_per_level=[1, 2, 1]), (1, 4, 8, 12)),
    (dict(spatial_dims=3, channels=4, num_levels=2, coupling="affine"), (1, 4, 8, 8, 4)),
    (dict(spatial_dims=3, channels=8, num_levels=3, strides=[[2, 2, 1], 2]), (1, 8, 8, 8, 4)),
    (dict(spatial_dims=2, channels=6, num_levels=2, split_fraction=1 / 3, channel_mixing=False), (1, 6, 4, 4)),
    (dict(spatial_dims=2, channels=4, num_levels=2, resampling_method="householder", mixing_init="random"),
     (1, 4, 4, 4)),
    (dict(spatial_dims=3, channels=4, num_levels=2, resampling_method="cayley", resampling_init="pixel_shuffle"),
     (1, 4, 4, 4, 4)),
    # the reference iunets block: conv → LeakyReLU → GroupNorm(1)
    (dict(spatial_dims=3, channels=4, num_levels=2, subnet_convs=1, adn_ordering="AN"), (1, 4, 4, 4, 4)),
]


@pytest.mark.parametrize("kwargs,shape", CORE_CASES)
def test_identity_at_init_then_invertible(kwargs, shape):
    core = InvertibleUNet(**kwargs)
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(core(x), x, atol=1e-5, rtol=1e-5)
        perturb(core, 0.1)
        y = core(x)
        assert (y - x).abs().max() > 1e-2
        torch.testing.assert_close(core.inverse(y), x, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-4), (torch.float64, 1e-10)])
def test_five_level_3d_core_with_four_blocks_inverts(dtype, tolerance):
    core = perturb(InvertibleUNet(3, 4, num_levels=5, blocks_per_level=4), 0.1).to(dtype)
    x = torch.randn(1, 4, 16, 16, 16, dtype=dtype)
    with torch.no_grad():
        y = core(x)
        assert (y - x).abs().max() > 1e-2
        assert (core.inverse(y) - x).abs().max().item() <= tolerance


def test_channel_bookkeeping_doubles_per_level():
    assert InvertibleUNet(3, 16, num_levels=5).level_channels == [16, 32, 64, 128, 256]
    assert InvertibleUNet(2, 16, num_levels=3).level_channels == [16, 32, 64]
    core = InvertibleUNet(3, 16, num_levels=3, strides=[(2, 2, 1), 2])
    assert core.level_channels == [16, 32, 64] and core.total_stride == [4, 4, 2]


@st.composite
def core_case(draw):
    spatial_dims = draw(st.integers(1, 3))
    num_levels = draw(st.integers(1, 3))
    strides = [tuple(draw(st.lists(st.integers(1, 2), min_size=spatial_dims, max_size=spatial_dims)))
               for _ in range(num_levels - 1)]
    strides = [s if max(s) == 2 else (2,) + s[1:] for s in strides]  # each level must downsample
    channels = draw(st.sampled_from([4, 8]))
    multiples = draw(st.lists(st.integers(1, 2), min_size=spatial_dims, max_size=spatial_dims))
    return spatial_dims, num_levels, strides, channels, multiples


@given(case=core_case(), method=st.sampled_from(["exp", "cayley", "householder"]))
def test_invertibility_over_dims_strides_channels(case, method):
    spatial_dims, num_levels, strides, channels, multiples = case
    core = InvertibleUNet(spatial_dims, channels, num_levels, 1, strides=strides or 2, resampling_method=method,
                          subnet_convs=1)
    perturb(core.double(), 0.1)
    total = core.total_stride
    x = torch.randn(1, channels, *(t * m for t, m in zip(total, multiples)), dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(core.inverse(core(x)), x)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(spatial_dims=3, channels=6, num_levels=2), "split_fraction"),
        (dict(spatial_dims=3, channels=1, num_levels=2), "channels"),
        (dict(spatial_dims=2, channels=4, num_levels=0), "num_levels"),
        (dict(spatial_dims=5, channels=4, num_levels=2), "spatial_dims"),
        (dict(spatial_dims=2, channels=4, num_levels=3, blocks_per_level=[1, 1]), "blocks_per_level"),
        (dict(spatial_dims=2, channels=4, num_levels=3, strides=[2, 2, 2]), "strides"),
        (dict(spatial_dims=2, channels=4, num_levels=2, strides=1), "downsample"),
        (dict(spatial_dims=2, channels=4, num_levels=2, split_fraction=1.0), "split_fraction"),
        (dict(spatial_dims=2, channels=4, num_levels=2, coupling="glow"), "coupling"),
        (dict(spatial_dims=2, channels=4, num_levels=2, adn_ordering="NDA"), "adn_ordering"),
    ],
)
def test_impossible_configurations_raise_at_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        InvertibleUNet(**kwargs)


def test_bad_input_shapes():
    core = InvertibleUNet(2, 4, 3)
    with pytest.raises(ValueError, match="divisible"):
        core(torch.randn(1, 4, 6, 8))
    with pytest.raises(ValueError, match="InvertibleUNet expects in_channels=4 input channels, got 3"):
        core(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize(
    "ordering,num_convs,layers",
    [
        ("NA", 1, ["SameConv", "GroupNorm"]),
        ("NA", 2, ["SameConv", "GroupNorm", "LeakyReLU", "SameConv", "GroupNorm"]),
        ("AN", 1, ["SameConv", "LeakyReLU", "GroupNorm"]),
        ("AN", 2, ["SameConv", "LeakyReLU", "GroupNorm", "SameConv", "LeakyReLU", "GroupNorm"]),
    ],
)
def test_subnet_layer_order_ends_at_the_zero_initialised_norm(ordering, num_convs, layers):
    subnet = coupling_subnet(2, 3, 5, num_convs=num_convs, adn_ordering=ordering)
    assert [type(m).__name__ for m in subnet] == layers
    assert subnet[-1].weight.abs().sum() == 0 and subnet(torch.randn(1, 3, 4, 4)).abs().max() == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(spatial_dims=3, num_levels=5, split_fraction=0.25),
        dict(spatial_dims=3, num_levels=3, strides=[[2, 2, 1], 2]),
        dict(spatial_dims=2, num_levels=4),
        dict(spatial_dims=3, num_levels=2, blocks_per_level=[0, 1], split_fraction=0.5),
    ],
)
def test_plan_is_the_topology_the_network_builds(kwargs):
    """One description: the plan decides the valid widths and the channel/stride topology; the network follows it
    and the planner's width search reads it without building networks."""
    from monai_iunet.networks.invertible_unet import unet_plan
    from monai_iunet.planner import _width_step

    step = _width_step({"in_channels": 4, "out_channels": 3, **kwargs})
    for width in range(2, step):
        with pytest.raises(ValueError):
            InvertibleUNet(channels=width, **kwargs)
    with torch.device("meta"):
        core = InvertibleUNet(channels=step, **kwargs)
    plan = unet_plan(channels=step, **kwargs)
    assert list(plan.level_channels) == core.level_channels and list(plan.skip_channels) == core.skip_channels
    assert plan.total_stride == core.total_stride
    assert [list(s) for s in plan.level_strides] == core.level_strides


@pytest.mark.parametrize("num_levels", [1, 2, 3])
def test_torchscript_runs_the_same_program(num_levels):
    torch.manual_seed(0)
    net = perturb(InvertibleUNet(3, 8, num_levels=num_levels, blocks_per_level=1), 0.2).eval()
    x = torch.randn(1, 8, 8, 8, 4)
    scripted = torch.jit.script(net)
    torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-5)
    assert len(net.program()) == len(net.steps) + 2 * (num_levels - 1)
