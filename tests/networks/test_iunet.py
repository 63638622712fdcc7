from __future__ import annotations

from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks import eval_mode

import monai_iunet
from monai_iunet import IUNet

from ..conftest import perturb

PRESETS = Path(__file__).resolve().parents[2] / "configs" / "networks"

TEST_CASES = [
    # (constructor kwargs, input shape, expected output shape)
    (dict(spatial_dims=1, in_channels=1, out_channels=2, channels=4, num_levels=3), (2, 1, 16), (2, 2, 16)),
    (dict(spatial_dims=2, in_channels=3, out_channels=10, channels=4, num_levels=3), (1, 3, 16, 12), (1, 10, 16, 12)),
    (dict(spatial_dims=2, in_channels=3, out_channels=2, channels=4, num_levels=3), (1, 3, 13, 7), (1, 2, 13, 7)),
    (dict(spatial_dims=3, in_channels=4, out_channels=3, channels=4, num_levels=3), (1, 4, 16, 16, 8),
     (1, 3, 16, 16, 8)),
    (dict(spatial_dims=3, in_channels=4, out_channels=3, channels=4, num_levels=3), (1, 4, 15, 17, 9),
     (1, 3, 15, 17, 9)),
    (dict(spatial_dims=3, in_channels=1, out_channels=1, channels=8, num_levels=3, strides=(2, 2, 1),
          coupling="affine"), (1, 1, 8, 8, 3), (1, 1, 8, 8, 3)),
]


@pytest.mark.parametrize("kwargs,input_shape,expected_shape", TEST_CASES)
def test_shape(kwargs, input_shape, expected_shape):
    net = IUNet(**kwargs)
    with eval_mode(net):
        assert net(torch.randn(input_shape)).shape == expected_shape
    net.train()
    x = torch.randn(input_shape, requires_grad=True)
    net(x).sum().backward()
    assert x.grad.shape == input_shape


def test_padding_is_cropped_not_leaked():
    """Outputs of a padded input equal the top-left crop of the network applied to the zero-padded input."""
    net = perturb(IUNet(3, 2, 2, channels=4, num_levels=3), 0.1).eval()
    x = torch.randn(1, 2, 7, 9, 8)
    padded = torch.nn.functional.pad(x, (0, 0, 0, 3, 0, 1))
    torch.testing.assert_close(net(x), net(padded)[:, :, :7, :9, :8])


def test_pad_input_false_raises_with_sizes():
    net = IUNet(3, 4, 3, channels=4, num_levels=3, pad_input=False)
    with pytest.raises(ValueError, match=r"\[15, 16, 16\].*\[4, 4, 4\]"):
        net(torch.randn(1, 4, 15, 16, 16))


def test_wrong_channels_names_expected_and_got():
    net = IUNet(3, 4, 3, channels=4, num_levels=2)
    with pytest.raises(ValueError, match="in_channels=4 .* got 3"):
        net(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="spatial dims"):
        net(torch.randn(4, 8, 8, 8))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(in_channels=0), "in_channels"),
        (dict(lift_kernel_size=2), "lift_kernel_size"),
        (dict(channels=6), "split_fraction"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IUNet(**{"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "channels": 4, "num_levels": 2, **kwargs})


def test_core_is_identity_at_init():
    net = IUNet(3, 4, 3, channels=8, num_levels=3)
    h = torch.randn(1, 8, 8, 8, 8)
    torch.testing.assert_close(net.core(h), h, atol=1e-5, rtol=1e-5)
    assert isinstance(net.core, monai_iunet.InvertibleUNet)


@pytest.mark.parametrize("export", ["script", "trace", "export"])
def test_export_matches_eager(export):
    net = perturb(IUNet(3, 4, 3, channels=4, num_levels=3), 0.1).eval()
    x = torch.randn(1, 4, 16, 16, 12)
    with torch.no_grad():
        expected = net(x)
        if export == "script":
            exported = torch.jit.script(net)
        elif export == "trace":
            exported = torch.jit.trace(net, x)
        else:
            exported = torch.export.export(net, (x,)).module()
        torch.testing.assert_close(exported(x), expected)


def test_scripted_module_keeps_input_checks():
    scripted = torch.jit.script(IUNet(2, 2, 1, channels=4, num_levels=2).eval())
    with pytest.raises(torch.jit.Error, match="ValueError: IUNet expects in_channels=2"):
        scripted(torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("target", ["IUNet", "monai_iunet.IUNet"])
def test_bundle_config_target(target):
    config = {
        "imports": ["$import monai_iunet"],
        "network_def": {"_target_": target, "spatial_dims": 3, "in_channels": 4, "out_channels": 3,
                        "channels": 4, "num_levels": 2},
    }
    parser = ConfigParser(config)
    net = parser.get_parsed_content("network_def")
    assert isinstance(net, IUNet)


@pytest.mark.parametrize("preset", sorted(p.name for p in PRESETS.glob("*.json")))
def test_presets_build(preset):
    parser = ConfigParser()
    parser.read_config(PRESETS / preset)
    assert parser["network_def"]["_target_"] == "IUNet"
    network = parser.get_parsed_content("network_def")
    assert isinstance(network, IUNet)


def test_brats_preset_channels():
    parser = ConfigParser()
    parser.read_config(PRESETS / "iunet16.json")
    net = parser.get_parsed_content("network_def")
    assert net.core.level_channels == [16, 32, 64, 128, 256]
    assert net.total_stride == [16, 16, 16]


def test_identity_init_is_exactly_the_identity_and_trains_away_from_it():
    net = IUNet(3, 1, 1, channels=4, num_levels=2, blocks_per_level=2, identity_init=True)
    x = torch.randn(2, 1, 8, 12, 8)
    torch.testing.assert_close(net(x), x, rtol=0, atol=1e-6)
    loss = (net(x) - 2 * x).pow(2).mean()
    loss.backward()
    assert any(float(p.grad.abs().sum()) > 0 for p in net.core.parameters() if p.grad is not None)
    for bad in (dict(in_channels=2, out_channels=1), dict(in_channels=1, out_channels=1, zero_init=False)):
        with pytest.raises(ValueError, match="identity_init"):
            IUNet(3, channels=4, num_levels=2, identity_init=True, **bad)
