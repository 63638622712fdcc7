"""Channels-last end to end: the layout holds through the engine, and results do not depend on it."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from monai_iunet import InvertibleUNet, IUNet, SavedTensorBytes
from monai_iunet.layers.base import is_channels_last

from ..conftest import perturb, relative_error


def _pair(**kwargs):
    """The same network (same weights) in both layouts."""
    kwargs = {"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "channels": 8, "num_levels": 3,
              "blocks_per_level": 1, **kwargs}
    fast = perturb(IUNet(**kwargs, memory_format="channels_last"), 0.1)
    plain = IUNet(**kwargs, memory_format="contiguous")
    plain.load_state_dict(fast.state_dict())
    return fast, plain


def _layouts(net, x) -> Counter:
    """Layout of every 5D output of every layer, in forward and in the engine's backward recomputations."""
    seen: Counter = Counter()

    def hook(module, inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 5:
            seen["channels_last" if is_channels_last(output) else "other"] += 1

    handles = [m.register_forward_hook(hook) for m in net.core.modules()]
    try:
        net(x).square().mean().backward()
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("coupling", ["additive", "affine"])
def test_layout_holds_through_the_engine(coupling, batch):
    # Batch 2: PyTorch sends every convolution to oneDNN; batch 1 at these sizes: SameConv runs them as a batch of
    # two halves (PyTorch alone would keep them on its channels-first kernel). Every layer output shows whether the
    # layout held.
    net, _ = _pair(coupling=coupling)
    x = torch.randn(batch, 4, 16, 16, 16)
    seen = _layouts(net, x)
    assert seen["other"] == 0 and seen["channels_last"] > 50, seen
    assert net(x).is_contiguous()  # callers get PyTorch's ordinary layout


@pytest.mark.parametrize("memory_efficient", [True, False])
@pytest.mark.parametrize("coupling", ["additive", "affine"])
def test_layouts_give_equal_outputs_and_gradients(coupling, memory_efficient):
    fast, plain = _pair(coupling=coupling, memory_efficient=memory_efficient)
    x = torch.randn(2, 4, 16, 16, 12)
    results = []
    for net in (fast, plain):
        net.zero_grad(set_to_none=True)
        y = net(x)
        y.square().mean().backward()
        results.append([y.detach()] + [p.grad for p in net.parameters()])
    for i, (a, b) in enumerate(zip(*results)):
        assert relative_error(a, b) <= 1e-5, (i, relative_error(a, b))


def test_channels_last_keeps_no_more_for_backward():
    x = torch.randn(2, 4, 16, 16, 16)
    saved = {}
    for name, net in zip(("channels_last", "contiguous"), _pair(blocks_per_level=2)):
        for memory_efficient in (True, False):
            net.memory_efficient = memory_efficient
            with SavedTensorBytes() as counter:
                loss = net(x).square().mean()
            loss.backward()
            saved[name, memory_efficient] = counter.bytes
    assert saved["channels_last", True] <= saved["contiguous", True], saved
    assert saved["channels_last", False] <= 1.05 * saved["contiguous", False], saved


def test_gradcheck_memory_efficient_core_channels_last():
    core = perturb(InvertibleUNet(3, 4, num_levels=2, blocks_per_level=1, subnet_convs=1), 0.2).double()
    assert core.channels_last and core.memory_efficient
    # mixing, encoder, decoder
    names = ["steps.1.matrix.theta", "steps.0.layers.0.f.0.weight", "steps.6.layers.0.g.1.weight"]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in core.named_parameters() if n in names}
    assert len(params) == len(names)
    x = torch.randn(1, 4, 4, 4, 2, dtype=torch.float64).contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_(True)

    def run(x, *values):
        return functional_call(core, dict(zip(params, values)), (x,))

    assert gradcheck(run, (x, *params.values()))


def test_both_layouts_invert_and_reject_unknown_formats():
    for memory_format in ("channels_last", "contiguous"):
        core = perturb(InvertibleUNet(3, 8, num_levels=3, memory_format=memory_format), 0.1)
        h = torch.randn(1, 8, 8, 8, 8)
        with torch.no_grad():
            y = core(h)
            assert y.is_contiguous()  # the output comes in the input's layout
            torch.testing.assert_close(core.inverse(y), h, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="memory_format"):
        IUNet(3, 4, 3, channels=4, num_levels=2, memory_format="nhwc")
