from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from monai_iunet.engine import SavedTensorBytes
from monai_iunet.layers.conv import SameConv, falls_back, same_conv, splits_batch

CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}
select_backend = getattr(torch._C, "_select_conv_backend", None)


def _backend(x: torch.Tensor, weight: torch.Tensor) -> str:
    n = weight.dim() - 2
    padding = [k // 2 for k in weight.shape[2:]]
    return select_backend(x, weight, None, [1] * n, padding, [1] * n, False, [0] * n, 1).name


@pytest.mark.skipif(select_backend is None or not torch.backends.mkldnn.is_available(), reason="no oneDNN here")
@pytest.mark.parametrize(
    "shape,kernel",
    [
        ((1, 16, 32, 32, 32), 3), ((1, 32, 16, 16, 16), 3), ((1, 64, 8, 8, 8), 3), ((1, 4, 64, 64, 64), 3),
        ((1, 8, 64, 64, 64), 3), ((1, 16, 48, 48, 48), 3), ((1, 8, 48, 48, 48), 3), ((1, 16, 32, 32, 32), 1),
        ((1, 16, 32, 32, 32), 5), ((2, 16, 32, 32, 32), 3), ((1, 16, 31, 32, 32), 3), ((1, 8, 32, 32), 3),
        ((1, 32, 64, 64), 3),
    ],
)
def test_splits_exactly_where_pytorch_picks_its_fallback_kernel(shape, kernel):
    """The rule is ATen's: checked against the kernel this PyTorch really picks, so a change in PyTorch shows here."""
    x = torch.empty(shape)
    weight = torch.empty(shape[1], shape[1], *[kernel] * (len(shape) - 2))
    fallback = _backend(x, weight).startswith("Slow")
    odd = shape[2] % 2 == 1
    pointwise = kernel == 1
    assert splits_batch(x, weight) == (fallback and not odd and not pointwise)
    if splits_batch(x, weight):  # and the batch of halves goes to oneDNN
        halves = torch.empty(2, shape[1], shape[2] // 2 + kernel - 1, *shape[3:])
        assert _backend(halves, weight).startswith("Mkldnn")


def test_no_split_where_pytorch_would_not_fall_back_or_onednn_is_off():
    weight = torch.empty(16, 16, 3, 3, 3)
    x = torch.empty(1, 16, 32, 32, 32)
    assert splits_batch(x, weight)
    assert not splits_batch(x.double(), weight.double())
    assert not splits_batch(x.to(torch.bfloat16), weight.to(torch.bfloat16))
    with torch.backends.mkldnn.flags(enabled=False):
        assert not splits_batch(x, weight)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # runs in bf16, which PyTorch sends to oneDNN anyway
        assert not splits_batch(x, weight)
    assert not falls_back((1, 16, 32), (16, 16, 3))  # 1D
    assert falls_back((1, 16, 4, 32, 32), (16, 16, 5, 3, 3)) and not falls_back((1, 16, 2, 32, 32), (16, 16, 5, 3, 3))


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("shape,kernel", [((1, 16, 32, 16, 16), 3), ((1, 6, 16, 21, 13), 3), ((1, 8, 32, 16), 3)])
def test_same_conv_equals_the_convolution_with_its_gradients(layout, shape, kernel):
    torch.manual_seed(0)
    x = torch.randn(shape)
    weight = torch.randn(12, shape[1], *[kernel] * (len(shape) - 2)) * 0.1
    bias = torch.randn(12)
    if layout == "channels_last":
        x = x.contiguous(memory_format=CHANNELS_LAST[x.dim()])
        weight = weight.contiguous(memory_format=CHANNELS_LAST[x.dim()])
    assert splits_batch(x, weight)
    conv = F.conv3d if x.dim() == 5 else F.conv2d
    grads = []
    for fn in (same_conv, lambda a, w, b: conv(a, w, b, padding=kernel // 2)):
        inputs = [t.detach().requires_grad_() for t in (x, weight, bias)]
        y = fn(*inputs)
        y.backward(torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y))
        grads.append((y.detach(), *(t.grad for t in inputs)))
        if fn is same_conv:  # in the input's layout, strided exactly as a tensor allocated in it
            memory_format = CHANNELS_LAST[y.dim()] if layout == "channels_last" else torch.contiguous_format
            assert y.stride() == torch.empty(y.shape, memory_format=memory_format).stride()
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4 * reference.abs().max().item())


def test_halved_convolution_gradcheck_float64(monkeypatch):
    """The split path in float64 (forced on: PyTorch's rule only concerns float32): gradients are exact."""
    monkeypatch.setattr("monai_iunet.layers.conv.splits_batch", lambda x, w: True)
    torch.manual_seed(0)
    for shape, kernel in [((1, 2, 4, 3, 3), (3, 3, 1)), ((1, 3, 6, 4), (5, 3)), ((1, 2, 4, 3, 3), (5, 1, 3))]:
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        weight = torch.randn(2, shape[1], *kernel, dtype=torch.float64, requires_grad=True)
        bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
        conv = F.conv3d if x.dim() == 5 else F.conv2d
        expected = conv(x, weight, bias, padding=[k // 2 for k in kernel])
        torch.testing.assert_close(same_conv(x, weight, bias), expected, rtol=1e-12, atol=1e-12)
        assert torch.autograd.gradcheck(same_conv, (x, weight, bias))


def test_same_conv_module_is_interchangeable_with_torch_conv():
    torch.manual_seed(0)
    reference = nn.Conv3d(4, 6, 3, padding=1)
    ours = SameConv(3, 4, 6, 3)
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [
        (k, v.shape) for k, v in reference.state_dict().items()
    ]
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(1, 4, 16, 8, 8)
    torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)
    scripted = torch.jit.script(ours)
    torch.testing.assert_close(scripted(x), reference(x), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ours(x).dtype == torch.bfloat16  # autocast applies as to nn.Conv3d
    # same initialisation distribution as torch's: bounds of kaiming_uniform(a=√5) and the bias
    bound = 1 / (4 * 27) ** 0.5
    assert ours.weight.abs().max() <= bound and SameConv(3, 4, 6, 3).bias.abs().max() <= bound
    with pytest.raises(ValueError, match="odd"):
        SameConv(3, 4, 6, 2)


def test_autograd_keeps_what_it_keeps_for_an_ordinary_convolution():
    x = torch.randn(1, 16, 32, 16, 16).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    weight = torch.randn(16, 16, 3, 3, 3).contiguous(memory_format=torch.channels_last_3d).requires_grad_()
    assert splits_batch(x, weight)
    saved = []
    for fn in (same_conv, lambda a, w, b: F.conv3d(a, w, b, padding=1)):
        with SavedTensorBytes() as counter:
            fn(x, weight, None)
        saved.append(counter.bytes)
    assert saved[0] == saved[1] == x.nbytes + weight.nbytes
