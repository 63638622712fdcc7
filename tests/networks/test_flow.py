"""IUNetFlow and log-determinants through the memory-efficient engine: every layer kind's log-det against the
brute-force Jacobian, float64 gradcheck of ``log_prob``, memory-efficient vs plain gradients, exact inverse and
sampling, activation memory flat in depth, and a flow that learns."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from monai_iunet.engine import SavedTensorBytes, run_memory_efficient, run_program
from monai_iunet.layers import (
    ActNorm,
    AffineCoupling,
    InvertibleChannelMixing,
    InvertibleIdentity,
    InvertibleSequential,
    OrthogonalDownsampling,
    OrthogonalUpsampling,
)
from monai_iunet.networks import InvertibleUNet, IUNetFlow
from monai_iunet.networks.blocks import coupling_block
from monai_iunet.networks.flow import standard_normal_log_prob

from ..conftest import perturb, relative_error

SHAPES = {1: (8,), 2: (4, 4), 3: (4, 4, 4)}


def brute_force_log_det(layer, x: torch.Tensor) -> float:
    """``log|det J|`` of one sample from the full Jacobian (float64)."""
    jacobian = torch.autograd.functional.jacobian(lambda t: layer(t).flatten(), x)
    return torch.linalg.slogdet(jacobian.reshape(x.numel(), x.numel()))[1].item()


def layer_kinds(spatial_dims: int) -> dict[str, nn.Module]:
    actnorm = ActNorm(spatial_dims, 4)
    actnorm.initialize(3.0 * torch.randn(5, 4, *SHAPES[spatial_dims]) + 1.0)
    return {
        "affine_coupling": coupling_block(spatial_dims, 4, "affine", zero_init=False),
        "additive_coupling": coupling_block(spatial_dims, 4, "additive", zero_init=False),
        "actnorm": actnorm,
        "downsampling": perturb(OrthogonalDownsampling(spatial_dims, 4, 2)),
        "upsampling": perturb(OrthogonalUpsampling(spatial_dims, 4 * 2**spatial_dims, 2)),
        "channel_mixing": perturb(InvertibleChannelMixing(spatial_dims, 4)),
        "identity": InvertibleIdentity(),
        "sequential": InvertibleSequential(actnorm, coupling_block(spatial_dims, 4, "affine", zero_init=False)),
        "core": perturb(InvertibleUNet(spatial_dims, 4, 2, 1, coupling="affine", actnorm=True, zero_init=False), 0.05),
    }


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
@pytest.mark.parametrize("kind", list(layer_kinds(1)))
def test_log_det_of_every_layer_kind_equals_the_brute_force_jacobian(kind, spatial_dims):
    layer = layer_kinds(spatial_dims)[kind].double()
    channels = 4 * 2**spatial_dims if kind == "upsampling" else 4
    x = torch.randn(1, channels, *SHAPES[spatial_dims], dtype=torch.float64)
    y, log_det = layer.forward_and_log_det(x)
    torch.testing.assert_close(y, layer(x))
    assert log_det.shape == (1,)
    assert log_det.item() == pytest.approx(brute_force_log_det(layer, x), abs=1e-8)


@pytest.mark.parametrize("spatial_dims", [1, 2, 3])
def test_flow_log_det_equals_the_brute_force_jacobian_and_inverse_is_exact(spatial_dims):
    flow = IUNetFlow(spatial_dims, 2, num_levels=2, blocks_per_level=1).double()
    shape = {1: (16,), 2: (8, 8), 3: (8, 8, 8)}[spatial_dims]
    x = torch.randn(3, 2, *shape, dtype=torch.float64)
    flow.initialize(x)
    perturb(flow, 0.05)
    z, log_det = flow(x)
    assert z.shape == (3, *flow.latent_shape(shape)) and log_det.shape == (3,)
    assert log_det[0].item() == pytest.approx(brute_force_log_det(lambda t: flow(t)[0], x[:1]), abs=1e-7)
    assert relative_error(flow.inverse(z), x) < 1e-12
    torch.testing.assert_close(flow.log_prob(x), standard_normal_log_prob(z) + log_det)


def test_standard_normal_log_prob():
    z = torch.randn(2, 3, 5, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    torch.testing.assert_close(standard_normal_log_prob(z), expected)


@pytest.mark.parametrize("spatial_dims", [1, 2])
def test_gradcheck_log_prob_through_the_memory_efficient_engine(spatial_dims):
    flow = IUNetFlow(spatial_dims, 1, num_levels=2, blocks_per_level=1).double()
    shape = {1: (8,), 2: (4, 4)}[spatial_dims]
    x = torch.randn(2, 1, *shape, dtype=torch.float64, requires_grad=True)
    flow.initialize(x.detach())
    perturb(flow, 0.1)
    assert flow.memory_efficient
    params = [p for p in flow.parameters() if p.requires_grad]

    def log_prob(x, *values):
        with torch.nn.utils.stateless._reparametrize_module(flow, dict(zip(names, values))):
            return flow.log_prob(x)

    named = dict(flow.named_parameters())
    last = len(flow.core.steps) - 1
    # parameters of every kind (orthogonal squeeze, actnorm, the couplings' convolutions in encoder and decoder);
    # a handful keeps gradcheck's finite differences cheap
    names = ["squeeze.matrix.theta", "core.steps.0.layers.0.bias", "core.steps.0.layers.0.log_scale",
             "core.steps.0.layers.1.f.0.weight", f"core.steps.{last}.layers.1.g.0.weight",
             f"core.steps.{last}.layers.0.log_scale"]
    chosen = [named[n] for n in names]
    assert all(p.requires_grad for p in params)
    assert torch.autograd.gradcheck(log_prob, (x, *chosen), eps=1e-6, atol=1e-5)


FLAGS = list(itertools.product([1, 2, 3], ["channels_last", "contiguous"], [True, False]))


@pytest.mark.parametrize("spatial_dims, memory_format, actnorm", FLAGS)
def test_memory_efficient_gradients_equal_plain_autograd(spatial_dims, memory_format, actnorm):
    shape = {1: (16,), 2: (8, 8), 3: (8, 8, 8)}[spatial_dims]
    flows = []
    for memory_efficient in (True, False):
        torch.manual_seed(0)
        flow = IUNetFlow(spatial_dims, 2, num_levels=2, blocks_per_level=2, actnorm=actnorm,
                         memory_efficient=memory_efficient, memory_format=memory_format)
        flows.append(perturb(flow, 0.05))
    x = torch.randn(2, 2, *shape)
    grads = []
    for flow in flows:
        inputs = x.clone().requires_grad_(True)
        loss = -flow.log_prob(inputs).mean() + flow(inputs)[0].square().mean()  # both outputs used
        loss.backward()
        grads.append([inputs.grad] + [p.grad for p in flow.parameters()])
    for efficient, plain in zip(*grads):
        assert relative_error(efficient, plain) < 1e-4


def test_only_the_log_det_used():
    """A loss on the log-determinant alone (no gradient flows into z) still gets exact gradients."""
    torch.manual_seed(0)
    efficient = perturb(IUNetFlow(2, 2, num_levels=2, blocks_per_level=1), 0.05)
    plain = perturb(IUNetFlow(2, 2, num_levels=2, blocks_per_level=1, memory_efficient=False), 0.05)
    plain.load_state_dict(efficient.state_dict())
    x = torch.randn(2, 2, 8, 8)
    for flow in (efficient, plain):
        flow(x)[1].sum().backward()
    for a, b in zip(efficient.parameters(), plain.parameters()):
        if b.grad is not None:
            assert relative_error(a.grad, b.grad) < 1e-4


def _saved_bytes(flow, x):
    with SavedTensorBytes() as saved:
        loss = -flow.log_prob(x).mean()
    loss.backward()
    return saved.bytes


def test_activation_memory_is_flat_in_depth_and_far_below_plain():
    x = torch.randn(1, 2, 16, 16, 16)
    shallow, deep = (IUNetFlow(3, 2, num_levels=2, blocks_per_level=b) for b in (1, 8))
    efficient_1, efficient_8 = _saved_bytes(shallow, x), _saved_bytes(deep, x)
    deep.memory_efficient = deep.core.memory_efficient = False
    plain_8 = _saved_bytes(deep, x)
    assert abs(efficient_8 - efficient_1) <= 0.1 * efficient_1, (efficient_1, efficient_8)
    assert plain_8 >= 10 * efficient_8, (plain_8, efficient_8)


def test_sampling_gives_data_shaped_samples_with_finite_likelihood():
    flow = perturb(IUNetFlow(3, 4, num_levels=2, blocks_per_level=1), 0.02)
    samples = flow.sample(2, (8, 8, 8), temperature=0.7)
    assert samples.shape == (2, 4, 8, 8, 8) and torch.isfinite(samples).all()
    with torch.no_grad():
        assert torch.isfinite(flow.log_prob(samples)).all()
        z = flow(samples)[0]
    assert 0.4 < z.std().item() < 1.0  # the samples come back to the tempered base


def test_a_flow_learns_a_correlated_gaussian():
    """Train briefly on a known density: the NLL approaches the true entropy (in nats per dimension)."""
    torch.manual_seed(0)
    flow = IUNetFlow(1, 2, num_levels=2, blocks_per_level=2)
    mixing = torch.tensor([[1.0, 0.0], [0.9, 0.3]])
    data = lambda n: torch.einsum("ij,bjl->bil", mixing, torch.randn(n, 2, 8))  # noqa: E731
    flow.initialize(data(64))
    optimizer = torch.optim.Adam(flow.parameters(), lr=3e-3)
    start = -flow.log_prob(data(256)).mean().item() / 16
    for _ in range(150):
        loss = -flow.log_prob(data(64)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        end = -flow.log_prob(data(1024)).mean().item() / 16
    entropy = 0.5 * math.log(2 * math.pi * math.e) + math.log(abs(torch.det(mixing).item())) / 2
    assert end < start - 0.2 and end < entropy + 0.1, (start, end, entropy)


def test_bad_inputs_are_refused():
    flow = IUNetFlow(3, 4, num_levels=2, blocks_per_level=1)
    with pytest.raises(ValueError, match="IUNetFlow expects in_channels=4 input channels, got 3"):
        flow(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="expects \\(batch, 4, 3 spatial dims\\)"):
        flow(torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match="not divisible by the stride \\[4, 4, 4\\]; crop or pad the data"):
        flow(torch.randn(1, 4, 8, 8, 6))
    with pytest.raises(ValueError, match="not divisible by the stride"):
        flow.latent_shape((8, 8, 6))
    channels, *spatial = flow.latent_shape((8, 8, 8))
    with pytest.raises(ValueError, match=f"IUNetFlow.inverse expects in_channels={channels} "):
        flow.inverse(torch.randn(1, channels - 1, *spatial))


def test_a_layer_without_log_det_is_refused_in_a_flow_and_dropout_in_the_engine():
    from monai_iunet.layers import InvertibleModule

    class Scale(InvertibleModule):  # invertible, but says nothing about its log-determinant
        def forward(self, x):
            return 2 * x

        def inverse(self, y):
            return y / 2

    with pytest.raises(NotImplementedError, match="Scale has no log-determinant"):
        run_program([Scale()], torch.randn(1, 2, 4), log_det=True)
    coupling = AffineCoupling(2, nn.Sequential(nn.Conv1d(1, 2, 1), nn.Dropout(0.5)), nn.Conv1d(1, 2, 1))
    with pytest.raises(ValueError, match="Dropout in training mode"):
        run_memory_efficient([coupling], torch.randn(1, 2, 4, requires_grad=True))
    coupling.eval()  # no dropout at evaluation: fine
    run_memory_efficient([coupling], torch.randn(1, 2, 4, requires_grad=True))
