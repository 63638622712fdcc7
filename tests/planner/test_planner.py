from __future__ import annotations

import json

import pytest
import torch

from monai_iunet.measure import run_case
from monai_iunet.planner import MemoryPlanner, largest_width, main

TINY = dict(spatial_dims=3, in_channels=4, out_channels=3, channels=8, num_levels=3, blocks_per_level=1)
MIB = 2**20


@pytest.fixture(scope="module")
def planner():
    return MemoryPlanner(**TINY)


@pytest.mark.parametrize("memory_efficient", [True, False])
@pytest.mark.parametrize("shape,batch", [([16, 16, 16], 1), ([32, 24, 16], 1), ([16, 8, 8], 3)])
def test_extrapolated_timeline_equals_a_direct_simulation(memory_efficient, shape, batch):
    planner = MemoryPlanner(device_type="cuda", **{**TINY, "memory_efficient": memory_efficient})
    # batch b on (s0, s1, s2) holds the same bytes as batch 1 on (b·s0, s1, s2)
    direct, _ = planner._timeline([shape[0] * batch, *shape[1:]])
    assert planner.peak_bytes(shape, batch) == max(direct)


@pytest.mark.parametrize(
    "case",
    [
        dict(network="iunet", width=8, levels=3, blocks=1, size=32),
        dict(network="iunet-plain", width=8, levels=3, blocks=1, size=32),
        dict(network="iunet", width=8, levels=3, blocks=2, size=24),
    ],
)
def test_cpu_prediction_within_15_percent_of_measured_peak(case):
    network_def = {"_target_": "monai_iunet.networks.IUNet", "spatial_dims": 3, "in_channels": 4, "out_channels": 3,
                   "channels": case["width"], "num_levels": case["levels"], "blocks_per_level": case["blocks"],
                   "memory_efficient": case["network"] == "iunet"}
    measured = run_case({"network_def": network_def, "size": case["size"], "steps": 2}, timed=False)
    assert "error" not in measured, measured
    planner = MemoryPlanner(spatial_dims=3, in_channels=4, out_channels=3, channels=case["width"],
                            num_levels=case["levels"], blocks_per_level=case["blocks"],
                            memory_efficient=case["network"] == "iunet", device_type="cpu")
    predicted = planner.peak_bytes([case["size"]] * 3)
    assert abs(predicted / measured["peak_bytes"] - 1) <= 0.15, (predicted / MIB, measured["peak_bytes"] / MIB)


def test_memory_efficient_activations_do_not_grow_with_depth():
    shallow = MemoryPlanner(device_type="cuda", **{**TINY, "blocks_per_level": 1})
    deep = MemoryPlanner(device_type="cuda", **{**TINY, "blocks_per_level": 6})
    roi = [64, 64, 64]
    activations = [p.peak_bytes(roi) - p.parameter_bytes - p.optimizer_bytes for p in (shallow, deep)]
    assert activations[1] <= 1.02 * activations[0]
    plain = MemoryPlanner(device_type="cuda", **{**TINY, "blocks_per_level": 6, "memory_efficient": False})
    assert plain.peak_bytes(roi) > 3 * deep.peak_bytes(roi)


def test_largest_roi_fits_and_the_next_one_does_not(planner):
    budget = 60 * MIB
    roi = planner.largest_roi(budget, aspect=[2, 1, 1])
    assert all(s % t == 0 for s, t in zip(roi, planner.total_stride))
    assert roi[0] == 2 * roi[1] and roi[1] == roi[2]
    assert planner.peak_bytes(roi) <= budget
    step = roi[2] // planner.total_stride[2] + 1
    bigger = [2 * step * planner.total_stride[0], step * planner.total_stride[1], step * planner.total_stride[2]]
    assert planner.peak_bytes(bigger) > budget
    assert planner.largest_roi(2**16) is None


def test_largest_width_fits_and_the_next_valid_width_does_not():
    kwargs = {k: v for k, v in TINY.items() if k != "channels"}
    roi, budget = [32, 32, 32], 120 * MIB
    width = largest_width(budget, roi, device_type="cuda", **kwargs)
    assert width % 4 == 0  # 3D with split 1/4: widths are multiples of 4
    assert MemoryPlanner(device_type="cuda", channels=width, **kwargs).peak_bytes(roi) <= budget
    assert MemoryPlanner(device_type="cuda", channels=width + 4, **kwargs).peak_bytes(roi) > budget
    assert largest_width(1 * MIB, roi, device_type="cuda", **kwargs) is None


def test_half_precision_and_sgd_need_less(planner):
    roi = [32, 32, 32]
    half = MemoryPlanner(dtype=torch.bfloat16, **TINY)
    sgd = MemoryPlanner(optimizer="sgd", **TINY)
    assert half.peak_bytes(roi) < planner.peak_bytes(roi)
    assert sgd.optimizer_bytes < planner.optimizer_bytes


@pytest.mark.parametrize(
    "kwargs,call,match",
    [
        (dict(optimizer="lion"), None, "optimizer"),
        (dict(device_type="tpu"), None, "device_type"),
        (dict(channels=6), None, "split_fraction"),
        ({}, lambda p: p.peak_bytes([32, 32]), "roi_size"),
        ({}, lambda p: p.peak_bytes([32, 32, 32], batch_size=0), "batch_size"),
        ({}, lambda p: p.largest_roi(1e9, aspect=[1, 0, 1]), "aspect"),
    ],
)
def test_bad_arguments_raise(kwargs, call, match):
    with pytest.raises(ValueError, match=match):
        call(MemoryPlanner(**{**TINY, **kwargs}))


def test_cli_reads_a_preset_and_answers(tmp_path, capsys):
    preset = tmp_path / "net.json"
    preset.write_text(json.dumps({"network_def": {"_target_": "IUNet", **TINY}}))
    main(["--network", str(preset), "--set", "blocks_per_level=2", "--roi", "64", "64", "32", "--budget-gib", "0.5",
          "--device-type", "cpu"])
    out = capsys.readouterr().out
    assert "batch 1 × 64×64×32: peak" in out
    assert "largest ROI in 0.5 GiB" in out
    with pytest.raises(SystemExit):
        main(["--network", str(preset)])
