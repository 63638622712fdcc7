"""The report of scripts/benchmark.py: tables, targets (met or not) and plots from a results file."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "benchmark.py"


@pytest.fixture(scope="module")
def benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(benchmark, network, peak_mib, seconds, params=1000, gflop=1.0, **kw):
    case = {**benchmark.BASE, **kw, "network": network, "batch": 1, "device": "cpu", "steps": 2}
    return {**case, "parameters": params, "forward_flops": gflop * 1e9, "peak_bytes": peak_mib * 2**20,
            "saved_bytes": 2**20, "step_seconds": seconds}


def test_report_states_targets_met_and_missed(benchmark, tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark, "predicted_mib", lambda r, device: None)  # the planner has its own tests
    rows = [
        _result(benchmark, "iunet", 100, 1.3, blocks=1),
        _result(benchmark, "iunet-plain", 200, 1.0, blocks=1),
        _result(benchmark, "iunet", 130, 13.0, params=8000, blocks=8),  # +30 %: missed
        _result(benchmark, "iunet-plain", 1000, 10.0, params=8000, blocks=8),
        _result(benchmark, "iunet-refblock", 80, 1.0),
        _result(benchmark, "iunets-ref", 100, 4.0),
        _result(benchmark, "iunet-cf", 100, 2.6, gflop=2.0),
        _result(benchmark, "segresnet", 300, 1.0, gflop=10.0),
        {**_result(benchmark, "unet", 0, 0), "error": "RuntimeError: out of memory"},
    ]
    path = tmp_path / "results_cpu.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = benchmark.load(path)
    benchmark.report(results, "cpu", tmp_path, ["depth", "size"])
    text = (tmp_path / "cpu.md").read_text()
    assert "| memory-efficient peak, 1 → 8 blocks/level, channels-last | ≤ +10 % | +30% | **no** |" in text
    assert "| peak at 8 blocks/level vs own plain autograd, channels-last | ≤ 0.5× | 0.13× | yes |" in text
    assert "| peak vs iunets+memcnn, same architecture | ≤ 0.9× | 0.80× | yes |" in text
    assert "| time per forward FLOP vs iunets+memcnn | ≤ 0.5× | 0.25× | yes |" in text
    assert "| step time vs own plain autograd, 1 blocks/level, channels-last | ≤ 1.4× | 1.30× | yes |" in text
    # 1.3 s per GFLOP vs SegResNet's 0.1: missed; channels-first rows are reported on their own
    assert "| ms per forward GFLOP vs SegResNet, memory-efficient, channels-first | ≤ 1.5× | 13.00× | **no** |" in text
    assert "failed: RuntimeError: out of memory" in text
    for name in ("memory_vs_size_cpu.png", "memory_vs_depth_cpu.png", "time_ratio_vs_depth_cpu.png"):
        assert (tmp_path / name).stat().st_size > 0 and f"]({name})" in text
    only_depth = tmp_path / "only_depth"
    only_depth.mkdir()
    benchmark.report(results, "cpu", only_depth, ["depth"])
    assert not (only_depth / "memory_vs_size_cpu.png").exists()  # plots only for the sweeps run


def test_cases_skip_fixed_depth_networks_and_duplicates(benchmark):
    cases = benchmark.cases(list(benchmark.SWEEPS), "cpu", 2)
    keys = [tuple(c[k] for k in benchmark.KEYS) for c in cases]
    assert len(keys) == len(set(keys))
    assert all(c["blocks"] == benchmark.BASE["blocks"] and c["levels"] == benchmark.BASE["levels"]
               for c in cases if c["network"] == "segresnet")
