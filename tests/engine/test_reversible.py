"""The memory-efficient engine against plain autograd: gradients, retained memory, and the memcnn failure modes."""

from __future__ import annotations

import gc
import itertools
import os
import weakref

import pytest
import torch
from torch.autograd import gradcheck
from torch.func import functional_call

from monai_iunet import InvertibleUNet, IUNet, SavedTensorBytes
from monai_iunet.engine import reversible
from monai_iunet.layers.base import InvertibleIdentity
from monai_iunet.networks.blocks import coupling_block

from ..conftest import perturb, relative_error


def _net(spatial_dims=3, dtype=torch.float32, **kwargs):
    kwargs = {"channels": 4, "num_levels": 3, "blocks_per_level": 1, **kwargs}
    return perturb(IUNet(spatial_dims, 2, 2, **kwargs), 0.1).to(dtype)


def _input(net, dtype=torch.float32, size=8):
    return torch.randn(2, net.in_channels, *([size] * net.spatial_dims), dtype=dtype)


def _gradients(net, x, memory_efficient, steps=1):
    net.memory_efficient = memory_efficient
    net.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    for _ in range(steps):
        net(x).square().mean().backward()
    return [x.grad] + [p.grad for p in net.parameters()]


def _assert_gradients_equal(expected, actual, tolerance):
    for i, (e, a) in enumerate(zip(expected, actual)):
        assert a is not None, f"gradient {i} missing"
        assert relative_error(a, e) <= tolerance, f"gradient {i}: relative error {relative_error(a, e):.2e}"


FLAGS = list(itertools.product(["additive", "affine"], ["exp", "cayley", "householder"], [True, False], [2, 3],
                               ["channels_last", "contiguous"]))


@pytest.mark.parametrize("coupling,method,mixing,spatial_dims,memory_format", FLAGS)
def test_gradients_equal_plain_autograd_fp32(coupling, method, mixing, spatial_dims, memory_format):
    """fp32 agreement is a rounding question: a near-cancelling gradient (e.g. 2 elements of ~2e-4) differs between
    any two fp32 summation orders, and thread counts change the order. So both fp32 paths are compared with the fp64
    truth of the same network, the memory-efficient one allowed 1e-5 of the gradient's norm plus a few times the
    error plain autograd makes itself, plus 1e-7 (about fp32's resolution) of the network's largest gradient norm
    for gradients that are small only because they cancel (the fp64 comparison below stays at 1e-10)."""
    net = _net(spatial_dims, coupling=coupling, resampling_method=method, mixing_method=method, channel_mixing=mixing,
               memory_format=memory_format)
    x = _input(net)
    _assert_fp32_gradients_close_to_truth(net, x)


def _assert_fp32_gradients_close_to_truth(net, x, steps=1):
    plain, efficient = _gradients(net, x, False, steps), _gradients(net, x, True, steps)
    truth = _gradients(net.double(), x.double(), False, steps)
    resolution = 1e-7 * max(t.norm() for t in truth)
    for i, (t, p, e) in enumerate(zip(truth, plain, efficient)):
        assert e is not None, f"gradient {i} missing"
        t, p, e = t.double(), p.double(), e.double()
        bound = 1e-5 * t.norm() + 4 * (p - t).norm() + resolution
        error = (e - t).norm()
        assert error <= bound, f"gradient {i}: error {error:.2e}, bound {bound:.2e} (|g| {t.norm():.2e})"


@pytest.mark.parametrize("coupling", ["additive", "affine"])
@pytest.mark.parametrize("method", ["exp", "cayley", "householder"])
def test_gradients_equal_plain_autograd_fp64(coupling, method):
    net = _net(3, torch.float64, coupling=coupling, resampling_method=method, mixing_method=method)
    x = _input(net, torch.float64)
    _assert_gradients_equal(_gradients(net, x, False), _gradients(net, x, True), 1e-10)


def test_gradcheck_memory_efficient_core():
    core = perturb(InvertibleUNet(2, 4, num_levels=2, blocks_per_level=1, subnet_convs=1), 0.2).double()
    # down, encoder, decoder
    names = ["steps.2.matrix.theta", "steps.0.layers.0.f.0.weight", "steps.6.layers.0.g.1.weight"]
    params = {n: p.detach().clone().requires_grad_(True) for n, p in core.named_parameters() if n in names}
    assert len(params) == len(names)
    x = torch.randn(1, 4, 4, 4, dtype=torch.float64, requires_grad=True)

    def run(x, *values):
        return functional_call(core, dict(zip(params, values)), (x,))

    assert core.memory_efficient
    assert gradcheck(run, (x, *params.values()))


def _saved_bytes(net, x):
    with SavedTensorBytes() as saved:
        loss = net(x).square().mean()
    loss.backward()
    return saved.bytes


def test_retained_bytes_independent_of_depth_and_10x_below_plain():
    x = torch.randn(1, 2, 16, 16, 16)
    shallow, deep = (_net(3, blocks_per_level=b, channels=8) for b in (1, 8))
    efficient_1, efficient_8 = _saved_bytes(shallow, x), _saved_bytes(deep, x)
    deep.memory_efficient = False
    plain_8 = _saved_bytes(deep, x)
    assert abs(efficient_8 - efficient_1) <= 0.1 * efficient_1, (efficient_1, efficient_8)
    assert plain_8 >= 10 * efficient_8, (plain_8, efficient_8)


def test_resampling_and_mixing_keep_nothing():
    """A core made only of resampling and mixing (no couplings) also retains just its output."""
    core = InvertibleUNet(3, 8, num_levels=3, blocks_per_level=0)
    x = torch.randn(1, 8, 16, 16, 16, requires_grad=True)
    with SavedTensorBytes() as saved:
        y = core(x)
    output_bytes = y.numel() * y.element_size()
    parameter_bytes = sum(p.numel() * p.element_size() for p in core.parameters())
    assert saved.bytes <= output_bytes + parameter_bytes


def test_no_grad_and_inference_mode_skip_the_engine(monkeypatch):
    net = _net()
    x = _input(net)
    expected = net(x).detach()

    def forbidden(*args):
        raise AssertionError("engine used without grad")

    monkeypatch.setattr(reversible._MemoryEfficientFunction, "apply", forbidden)
    with torch.no_grad():
        torch.testing.assert_close(net(x), expected)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), expected)


def test_input_reused_after_forward_and_backward():
    net = _net()
    x = _input(net).requires_grad_(True)
    before = x.detach().clone()
    y = net(x)
    torch.testing.assert_close(x.detach(), before)  # never freed or modified
    (y.sum() + x.sum()).backward()
    torch.testing.assert_close(x.detach(), before)
    # the core's own input too: the engine reconstructs activations into buffers of its own, never into it
    core_input = torch.randn(1, 4, 8, 8, 8, requires_grad=True)
    kept = core_input.detach().clone()
    net.core(core_input).square().sum().backward()
    torch.testing.assert_close(core_input.detach(), kept, rtol=0, atol=0)
    net.core.memory_efficient = False
    (plain,) = torch.autograd.grad(net.core(kept.requires_grad_(True)).square().sum(), kept)
    assert relative_error(core_input.grad, plain) < 1e-5


@pytest.mark.parametrize("last_layer", ["coupling", "identity"])
def test_output_and_its_gradient_are_never_overwritten(last_layer):
    """Layers may reuse the engine's own buffers, never the program's output (others saved it) or the incoming
    gradient (autograd owns it) — also when the last layer hands its input back unchanged (an identity)."""
    block = lambda: perturb(coupling_block(3, 4), 0.3)  # noqa: E731
    program = [block(), block(), block() if last_layer == "coupling" else InvertibleIdentity()]
    x = torch.randn(1, 4, 6, 6, 6, requires_grad=True)
    out = reversible.run_memory_efficient(program, x)
    out_before = out.detach().clone()
    grad_out = torch.randn_like(out)
    grad_before = grad_out.clone()
    (grad_x,) = torch.autograd.grad(out.square(), x, grad_out, retain_graph=True)
    torch.testing.assert_close(out.detach(), out_before, rtol=0, atol=0)
    torch.testing.assert_close(grad_out, grad_before, rtol=0, atol=0)
    (again,) = torch.autograd.grad(out.square(), x, grad_out)  # the retained graph still holds the right output
    torch.testing.assert_close(again, grad_x)
    expected = torch.autograd.grad(reversible.run_program(program, x).square(), x, grad_out)[0]
    assert relative_error(grad_x, expected) < 1e-5


def test_inplace_op_right_before_the_core():
    net = _net()
    x = _input(net)
    expected = _gradients_through_relu(net, x, memory_efficient=False)
    _assert_gradients_equal(expected, _gradients_through_relu(net, x, memory_efficient=True), 1e-5)


def _gradients_through_relu(net, x, memory_efficient):
    net.memory_efficient = memory_efficient
    net.zero_grad(set_to_none=True)
    h = torch.relu_(net.lift(x))  # in-place op on the core's input
    net.head(net.core(h)).square().mean().backward()
    return [p.grad for p in net.parameters()]


def test_autograd_grad_equals_backward():
    net = _net()
    x = _input(net).requires_grad_(True)
    params = list(net.parameters())
    grads = torch.autograd.grad(net(x).square().mean(), [x, *params])
    _assert_gradients_equal(_gradients(net, x.detach(), True), grads, 1e-6)


def test_gradient_accumulation_and_second_backward():
    net = _net()
    x = _input(net)
    _assert_fp32_gradients_close_to_truth(net, x, steps=3)
    net.float()
    y = net(x).square().mean()
    y.backward(retain_graph=True)
    y.backward()  # memcnn fails here


def test_forward_hooks_fire():
    net = _net()
    calls = []
    net.register_forward_hook(lambda module, inputs, output: calls.append("net"))
    net.core.register_forward_hook(lambda module, inputs, output: calls.append("core"))
    net(_input(net)).sum().backward()
    assert calls == ["core", "net"]


def test_batchnorm_statistics_updated_once():
    kwargs = dict(norm="batch")
    efficient, plain = _net(**kwargs), _net(**kwargs)
    plain.load_state_dict(efficient.state_dict())
    plain.memory_efficient = False
    x = _input(efficient)
    for net in (efficient, plain):
        net(x).sum().backward()
    for (name, a), (_, b) in zip(efficient.named_buffers(), plain.named_buffers()):
        torch.testing.assert_close(a, b, msg=name)


def _bf16_gradients(net, x, memory_efficient, autocast):
    net.memory_efficient = memory_efficient
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = net(x)
    y.float().square().mean().backward()
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def _first_non_finite(net, x) -> str:
    """Rerun the plain bf16 pass with hooks on every leaf module: where does the first non-finite value appear (the
    kernel to look at when a CPU's bf16 kernels fail)?"""
    found: list[str] = []

    def describe(name, module, where, tensors) -> None:
        if not found and any(isinstance(t, torch.Tensor) and not torch.isfinite(t).all() for t in tensors):
            shapes = [(tuple(t.shape), str(t.dtype)) for t in tensors if isinstance(t, torch.Tensor)]
            found.append(f"{where}: {name} ({type(module).__name__}) {shapes}")

    handles = []
    for name, module in net.named_modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: describe(name, m, "forward output", [out])))
            handles.append(module.register_full_backward_hook(
                lambda m, grad_in, grad_out, name=name: describe(name, m, "backward input gradient", grad_in)))
    try:
        _bf16_gradients(net, x, False, True)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else "no module's output or gradient was non-finite in a rerun (not reproducible)"


# scripts/check_cpu_bf16.py runs this test over many seeds on a new CPU
BF16_SEEDS = range(int(os.environ.get("MONAI_IUNET_BF16_SEEDS", "3")))


@pytest.mark.parametrize("onednn", [True, False], ids=["onednn", "native"])
@pytest.mark.parametrize("seed", BF16_SEEDS)
def test_cpu_bf16_autocast(seed, onednn):
    """bf16 rounding makes any two runs differ a little: the reconstructed path must be as close to the fp32 truth as
    plain autograd under the same autocast, and the fp32 invertible state must invert accurately. Seeded, with
    PyTorch's oneDNN kernels on and off (bf16 convolutions go to oneDNN only on CPUs with AVX512 or AMX)."""
    torch.manual_seed(seed)
    net = _net()
    x = _input(net)
    with torch.backends.mkldnn.flags(enabled=onednn):
        truth = _bf16_gradients(net, x, False, False)
        plain, efficient = _bf16_gradients(net, x, False, True), _bf16_gradients(net, x, True, True)
        assert torch.isfinite(plain).all() and torch.isfinite(efficient).all(), _first_non_finite(net, x)
        assert relative_error(efficient, truth) <= 2 * relative_error(plain, truth) + 1e-6
        assert relative_error(efficient, plain) <= 1e-2
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            h = net.lift(x)
            state = net.core(h)
            reconstructed = net.core.inverse(state)
    assert state.dtype == torch.float32
    # bf16 sub-networks see inputs that differ from the forward's by fp32 rounding: small, bounded drift.
    assert relative_error(reconstructed, h.float()) <= 5e-3


def test_bf16_sub_networks():
    """``subnet_dtype``: the sub-networks in bf16 without any autocast of the caller's, the state in fp32; the
    memory-efficient gradients as close to fp32 as plain autograd's."""
    torch.manual_seed(0)
    net = _net()
    x = _input(net)
    truth = _bf16_gradients(net, x, False, False)
    mixed = _net(subnet_dtype="bfloat16")
    mixed.load_state_dict(net.state_dict())
    plain, efficient = _bf16_gradients(mixed, x, False, False), _bf16_gradients(mixed, x, True, False)
    assert relative_error(efficient, truth) <= 2 * relative_error(plain, truth) + 1e-6
    assert 1e-4 < relative_error(plain, truth) < 2e-2  # bf16 did compute (fp32 alone differs by ~1e-7)
    assert relative_error(efficient, plain) <= 1e-2
    with torch.no_grad():
        state = mixed.core(mixed.lift(x))
        assert state.dtype == torch.float32
        assert relative_error(mixed.core.inverse(state), mixed.lift(x)) <= 5e-3


def test_forwards_without_backward_leave_nothing_behind():
    net = _net()
    x = _input(net)
    gc.disable()
    try:
        refs = []
        for _ in range(20):
            y = net(x)
            refs.append(weakref.ref(y))
            del y
        assert all(r() is None for r in refs), "outputs kept alive by a reference cycle"
    finally:
        gc.enable()


def test_program_must_balance_skips():
    with pytest.raises(ValueError, match="Concat"):
        reversible.run_program([reversible.Split(1)], torch.randn(1, 2, 4))


def test_compiled_training_keeps_the_memory_saving():
    """``torch.compile`` of the network: the engine is a graph break, so the compiled network keeps no activations
    of the core (the same saved bytes as eager, far below plain autograd) and has the same gradients."""
    net = _net(channels=8, blocks_per_level=2)
    x = _input(net)
    eager_bytes = _saved_bytes(net, x)
    eager = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="eager")
    compiled_bytes = _saved_bytes(compiled, x)
    for e, c in zip(eager, (p.grad for p in net.parameters())):
        torch.testing.assert_close(c, e)
    net.memory_efficient = False
    plain_bytes = _saved_bytes(net, x)
    assert compiled_bytes <= 1.05 * eager_bytes < 0.5 * plain_bytes, (compiled_bytes, eager_bytes, plain_bytes)


def test_compiled_sub_networks_keep_gradients_and_memory_saving():
    """Regional compilation (:func:`compile_subnets`): every sub-network becomes one graph, forward and backward (no
    graph break, the batch-split convolution included), the engine still runs eagerly around them: same gradients
    and saved bytes as eager, memory-efficient and plain."""
    from torch._dynamo.utils import counters

    from monai_iunet.networks import compile_subnets

    net = _net(channels=8, blocks_per_level=2)
    x = _input(net)

    def run(memory_efficient):
        net.memory_efficient = memory_efficient
        net.zero_grad(set_to_none=True)
        return _saved_bytes(net, x), [p.grad.clone() for p in net.parameters()]

    (eager_bytes, eager), (_, eager_plain) = run(True), run(False)
    torch._dynamo.reset()
    counters.clear()
    compile_subnets(net, backend="aot_eager")
    (compiled_bytes, compiled), (_, compiled_plain) = run(True), run(False)
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] >= 1
    assert compiled_bytes <= 1.05 * eager_bytes, (compiled_bytes, eager_bytes)
    for e, c in zip(eager + eager_plain, compiled + compiled_plain):
        torch.testing.assert_close(c, e)
