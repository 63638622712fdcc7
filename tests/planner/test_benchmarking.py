from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from scripts.benchmarking import FLOWS, NETWORKS, build_network, reference_available, run_case


def _forward_flops(net: torch.nn.Module, size: int) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        net(torch.randn(1, 4, size, size, size))
    return flops.get_total_flops()


@pytest.mark.parametrize("name", sorted(n for n in NETWORKS if n != "iunets-ref"))
def test_every_peer_network_maps_4_to_3_channels(name):
    net = build_network(name, width=8, levels=3, blocks=1)
    with torch.no_grad():
        assert net(torch.randn(1, 4, 16, 16, 16)).shape == (1, 3, 16, 16, 16)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_the_benchmarked_flows_give_a_latent_and_a_log_det(name):
    flow = build_network(name, width=0, levels=2, blocks=1)
    with torch.no_grad():
        z, log_det = flow(torch.randn(1, 4, 16, 16, 16))
    assert z.shape == (1, 32, 8, 8, 8) and log_det.shape == (1,)


def test_memory_efficient_and_plain_iunet_are_the_same_network():
    me, plain = build_network("iunet", 8, 3, 1), build_network("iunet-plain", 8, 3, 1)
    assert me.memory_efficient and not plain.memory_efficient
    assert [p.shape for p in me.parameters()] == [p.shape for p in plain.parameters()]


@pytest.mark.skipif(not reference_available(), reason="iunets==0.1 / memcnn==1.5.2 not installed")
@pytest.mark.parametrize("blocks", [1, 2])
def test_reference_matched_blocks_agree_with_iunets_in_flops_and_parameters(blocks):
    ours, reference = build_network("iunet-refblock", 16, 4, blocks), build_network("iunets-ref", 16, 4, blocks)
    assert abs(_forward_flops(ours, 16) / _forward_flops(reference, 16) - 1) <= 0.10
    count = [sum(p.numel() for p in net.parameters()) for net in (ours, reference)]
    assert abs(count[0] / count[1] - 1) <= 0.02


def test_a_failing_case_is_reported_not_raised():
    result = run_case(dict(network="iunet", width=6, levels=2, blocks=1, size=16))
    assert "split_fraction" in result["error"]


def test_unknown_network_names_the_choices():
    with pytest.raises(ValueError, match="unknown network 'vnet'.*iunet"):
        build_network("vnet", 8, 3, 1)
