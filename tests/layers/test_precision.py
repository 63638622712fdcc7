from __future__ import annotations

import pytest
import torch
from torch import nn

from monai_iunet.layers import MixedPrecisionSequential, SameConv


def _layers():
    torch.manual_seed(0)
    return [SameConv(3, 2, 4), nn.GroupNorm(1, 4), nn.LeakyReLU(), SameConv(3, 4, 2), nn.GroupNorm(1, 2)]


def _record_input_dtypes(module: nn.Module) -> dict[str, torch.dtype]:
    seen = {}
    for name, layer in module.named_children():
        layer.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0].dtype))
    return seen


def test_same_parameters_and_output_as_sequential():
    plain, mixed = nn.Sequential(*_layers()), MixedPrecisionSequential(*_layers())
    assert list(plain.state_dict()) == list(mixed.state_dict())
    mixed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 2, 6, 6, 6)
    torch.testing.assert_close(mixed(x), plain(x), rtol=0, atol=0)


@pytest.mark.parametrize("compute_dtype", ["bfloat16", torch.bfloat16])
def test_convolutions_in_low_precision_norms_in_fp32(compute_dtype):
    subnet = MixedPrecisionSequential(*_layers(), compute_dtype=compute_dtype)
    seen = _record_input_dtypes(subnet)
    x = torch.randn(2, 2, 6, 6, 6, requires_grad=True)
    y = subnet(x)
    # autocast casts inside F.conv3d, so the convolutions output bf16; the norms get it back in fp32
    assert seen["1"] == seen["4"] == torch.float32
    assert y.dtype == torch.float32  # a norm's output
    y.sum().backward()
    assert x.grad.dtype == torch.float32 and torch.isfinite(x.grad).all()
    # the convolutions did run in bf16: their output differs from fp32 by bf16 rounding, not by fp32 rounding
    reference = MixedPrecisionSequential(*_layers())
    error = (reference(x) - y).abs().max().item()
    assert 1e-4 < error < 0.1


def test_norms_in_fp32_under_an_enclosing_autocast():
    subnet = MixedPrecisionSequential(*_layers())
    seen = _record_input_dtypes(subnet)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        subnet(torch.randn(1, 2, 6, 6, 6))
    assert seen["1"] == seen["4"] == torch.float32


def test_meta_device_has_no_autocast():
    """The memory planner runs networks on the meta device, which has no autocast."""
    subnet = MixedPrecisionSequential(*_layers(), compute_dtype="bfloat16").to("meta")
    assert subnet(torch.empty(1, 2, 6, 6, 6, device="meta")).shape == (1, 2, 6, 6, 6)


def test_scripted_runs_the_layers_in_order():
    subnet = MixedPrecisionSequential(*_layers())
    x = torch.randn(1, 2, 6, 6, 6)
    torch.testing.assert_close(torch.jit.script(subnet)(x), subnet(x))


@pytest.mark.parametrize("bad", ["bf16", torch.float64])
def test_rejects_other_dtypes(bad):
    with pytest.raises(ValueError, match="compute_dtype"):
        MixedPrecisionSequential(*_layers(), compute_dtype=bad)


def test_a_network_in_bf16_throughout_stays_in_bf16():
    """Without autocast (e.g. a network converted with ``.to(torch.bfloat16)``) the norms keep the network's dtype."""
    subnet = MixedPrecisionSequential(*_layers()).to(torch.bfloat16)
    seen = _record_input_dtypes(subnet)
    assert subnet(torch.randn(1, 2, 6, 6, 6, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert seen["1"] == seen["4"] == torch.bfloat16
