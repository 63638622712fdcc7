"""MirrorEnsemble: the mean probability over members and mirrored passes, its spreads, and its one state dict."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from monai_iunet.networks import IUNet, MirrorEnsemble, ensemble_state_dict, load_weights


def _conv(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Conv3d(2, 3, 3, padding=1)


def _members(n: int) -> list[nn.Module]:
    return [_conv(seed) for seed in range(n)]


def _ensemble(members: list[nn.Module], axes=(0, 1, 2), activation="sigmoid") -> MirrorEnsemble:
    ensemble = MirrorEnsemble(_conv(99), num_members=len(members), mirror_axes=axes, activation=activation)
    for target, member in zip(ensemble.members, members):
        target.load_state_dict(member.state_dict())
    return ensemble.eval()


def test_one_member_without_mirroring_is_the_member():
    member = _conv(0)
    x = torch.randn(1, 2, 8, 6, 4)
    ensemble = _ensemble([member], axes=())
    assert torch.equal(ensemble(x), member(x))


@pytest.mark.parametrize("activation", ["sigmoid", "softmax"])
def test_mean_over_members_and_flips_equals_a_hand_written_average(activation):
    members = _members(2)
    x = torch.randn(1, 2, 8, 6, 4)
    act = torch.sigmoid if activation == "sigmoid" else (lambda t: torch.softmax(t, 1))
    by_hand = []
    for member in members:
        for flips in itertools.chain.from_iterable(itertools.combinations((2, 3, 4), n) for n in range(4)):
            flips = list(flips)
            by_hand.append(act(torch.flip(member(torch.flip(x, flips)), flips)) if flips else act(member(x)))
    assert len(by_hand) == 16
    mean = torch.stack(by_hand).mean(0)
    out = _ensemble(members, activation=activation)(x)
    assert torch.allclose(act(out), mean, atol=1e-6)
    per_member = torch.stack(by_hand).view(2, 8, *mean.shape)
    result = _ensemble(members, activation=activation).predict_with_uncertainty(x)
    assert torch.allclose(result["mirror_spread"], per_member.std(1, correction=0).mean(0), atol=1e-6)
    assert torch.allclose(result["member_spread"], per_member.mean(1).std(0, correction=0), atol=1e-6)
    p = per_member.mean(1)  # each member's mirror-averaged probabilities; entropy in bits, averaged over members
    entropy = -p * torch.log2(p) - ((1 - p) * torch.log2(1 - p) if activation == "sigmoid" else 0)
    assert torch.allclose(result["entropy"], entropy.mean(0), atol=1e-5)
    if activation == "softmax":  # the classes' terms sum to the categorical entropy, at most log2(classes) bits
        assert float(result["entropy"].sum(1).max()) <= float(torch.log2(torch.tensor(3.0))) + 1e-6


def test_spreads_vanish_where_passes_agree():
    x = torch.randn(1, 2, 8, 6, 4)
    pointwise = nn.Conv3d(2, 3, 1)  # a 1x1x1 convolution commutes with flips
    ensemble = MirrorEnsemble(pointwise, num_members=3, mirror_axes=(0, 1, 2)).eval()  # three equal members
    result = ensemble.predict_with_uncertainty(x)
    assert result["mirror_spread"].abs().max() < 1e-6
    assert result["member_spread"].abs().max() < 1e-6
    assert result["entropy"].min() > 0  # a member's own unsureness does not vanish when its passes agree
    assert ensemble.passes[0] == [] and len(ensemble.passes) == 8
    assert _ensemble(_members(2), axes=(0,)).predict_with_uncertainty(x)["member_spread"].abs().max() > 1e-3


def test_state_dict_from_member_checkpoints(tmp_path):
    """The members' own checkpoints (a state dict, or a training checkpoint with "model") make one ensemble file
    that load_weights puts into an ensemble of the same architecture; an IUNet member runs in it."""
    nets = [IUNet(3, 2, 3, channels=4, num_levels=2, blocks_per_level=1) for _ in range(2)]
    for k, net in enumerate(nets):
        torch.manual_seed(k)
        for p in net.parameters():
            p.data.normal_()
    torch.save(nets[0].state_dict(), tmp_path / "fold0.pt")
    torch.save({"model": nets[1].state_dict(), "optimizer": {}}, tmp_path / "fold1.pt")
    torch.save(ensemble_state_dict([tmp_path / "fold0.pt", tmp_path / "fold1.pt"]), tmp_path / "model.pt")
    template = IUNet(3, 2, 3, channels=4, num_levels=2, blocks_per_level=1)
    ensemble = load_weights(MirrorEnsemble(template, num_members=2, mirror_axes=(0,)), str(tmp_path / "model.pt"))
    x = torch.randn(1, 2, 8, 8, 8)
    ensemble.eval(), [n.eval() for n in nets]
    with torch.no_grad():
        for member, net in zip(ensemble.members, nets):
            assert torch.equal(member(x), net(x))
        assert ensemble(x).shape == (1, 3, 8, 8, 8)
    with pytest.raises(ValueError, match="does not match"):
        load_weights(MirrorEnsemble(template, num_members=3), str(tmp_path / "model.pt"))
    # stored at half precision: loaded back into fp32 parameters, outputs within fp16 rounding
    torch.save(ensemble_state_dict([tmp_path / "fold0.pt", tmp_path / "fold1.pt"], torch.float16), tmp_path / "h.pt")
    half = load_weights(MirrorEnsemble(template, num_members=2, mirror_axes=(0,)), str(tmp_path / "h.pt")).eval()
    assert all(p.dtype == torch.float32 for p in half.parameters())
    with torch.no_grad():
        reference = ensemble(x)
        assert ((half(x) - reference).norm() / reference.norm()).item() < 1e-2
    # what training writes (one network's state dict) loads into a one-member ensemble, and only there
    single = load_weights(MirrorEnsemble(template, num_members=1), str(tmp_path / "fold1.pt")).eval()
    with torch.no_grad():
        assert torch.equal(single(x), nets[1](x))
    with pytest.raises(ValueError, match="set num_members to 1"):
        load_weights(MirrorEnsemble(template, num_members=2), str(tmp_path / "fold0.pt"))
    # one member of an ensemble file (a fold's model out of the shipped ensemble), into a network or an ensemble
    for target in (IUNet(3, 2, 3, channels=4, num_levels=2, blocks_per_level=1), MirrorEnsemble(template)):
        one = load_weights(target, str(tmp_path / "model.pt"), member=1).eval()
        with torch.no_grad():
            assert torch.equal(one(x), nets[1](x))
    with pytest.raises(ValueError, match=r"no member 2 \(members: \[0, 1\]\)"):
        load_weights(template, str(tmp_path / "model.pt"), member=2)
    with pytest.raises(ValueError, match="not an ensemble file"):
        load_weights(template, str(tmp_path / "fold0.pt"), member=0)


@pytest.mark.parametrize("kwargs", [{"num_members": 0}, {"activation": "relu"}, {"mirror_axes": (0, 0)}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        MirrorEnsemble(_conv(0), **kwargs)


def test_torchscript_equals_eager():
    """``ckpt_export`` scripts ``network_def``: the ensemble compiles and gives the eager result."""
    ensemble = _ensemble(_members(2))
    scripted = torch.jit.script(ensemble)
    x = torch.randn(1, 2, 8, 6, 4)
    torch.testing.assert_close(scripted(x), ensemble(x))
    torch.testing.assert_close(scripted.predict_with_uncertainty(x)["mirror_spread"],
                               ensemble.predict_with_uncertainty(x)["mirror_spread"])
