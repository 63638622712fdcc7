"""One training step of a network, measured — peak memory, step time, parameters, forward FLOPs, bytes kept for
backward — each case in a fresh process: the ground truth the memory planner (``monai_iunet.planner``) is checked
against, and what the benchmarks in ``docs/benchmarks/`` are made of.

    python -m monai_iunet.measure '{"network_def": {"_target_": "IUNet", "spatial_dims": 3, "in_channels": 4,
                                    "out_channels": 3, "channels": 16}, "size": 64}'

A case is a JSON-able dict; :func:`run_case` measures it in new Python processes so that peaks never leak from one
case into the next:

* CPU: the peak anonymous resident memory of the training steps after the warm-up step (``VmHWM``, reset through
  ``/proc/self/clear_refs``, less the file-backed and shared pages, i.e. less the ~100 MiB of PyTorch's code that
  the first backward pages in) minus the anonymous memory before the network was built, with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc hands large buffers back to the system and peaks are reproducible
  (the step time comes from a second process with the default allocator, see :func:`run_case`);
* CUDA: ``torch.cuda.max_memory_allocated()`` (nothing is allocated before the network is built).

Both therefore count the network's parameters, the optimizer state, the batch and everything the step allocates.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import re
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

__all__ = ["build", "measure", "run_case"]


def build(case: dict) -> nn.Module:
    """The case's network: ``case["network_def"]`` (a MONAI bundle config of any network, parsed as
    ``monai.bundle run`` parses it) or ``case["builder"]``, a ``"module:function"`` called with the case (e.g. a
    benchmark's own catalogue of networks)."""
    if "network_def" in case:
        from .bundle import network_def

        return network_def(case["network_def"])
    if "builder" in case:
        module, _, function = case["builder"].partition(":")
        return getattr(importlib.import_module(module), function)(case)
    raise ValueError("a case names its network by 'network_def' (a bundle config) or 'builder' ('module:function').")


def _status_bytes(*fields: str) -> int:
    """Sum of ``/proc/self/status`` fields (kB) in bytes."""
    with open("/proc/self/status") as f:
        status = f.read()
    return sum(int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) for field in fields) * 1024


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _peak_anonymous_bytes() -> int:
    return _status_bytes("VmHWM") - _status_bytes("RssFile", "RssShmem")


def measure(case: dict) -> dict:
    """Measure ``case`` in this process (call it in a fresh one, see :func:`run_case`).

    ``case`` keys: the network (:func:`build`), ``size`` (int or per-axis list, 3D), ``batch`` (default 1),
    ``steps`` (default 4, the first is warm-up), ``device`` (default ``cpu``), ``in_channels``/``out_channels``
    (default 4/3), ``objective`` (``"mse"`` against a random target, default; ``"nll"``: a normalizing flow's
    negative log-likelihood). Returns the case with ``parameters``, ``forward_flops``, ``peak_bytes``,
    ``saved_bytes`` (kept for backward by autograd) and ``step_seconds`` (median over the steps after the first; the
    CPU peak is taken over them too).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from .engine import SavedTensorBytes

    device = torch.device(case.get("device", "cpu"))
    size = case["size"] if isinstance(case["size"], list) else [case["size"]] * 3
    batch, steps = case.get("batch", 1), case.get("steps", 4)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _status_bytes("RssAnon")
    net = build(case).to(device)
    optimizer = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.randn(batch, case.get("in_channels", 4), *size, device=device)
    target = torch.rand(batch, case.get("out_channels", 3), *size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        net(x)
    gc.collect()

    def objective() -> torch.Tensor:
        if case.get("objective", "mse") == "nll":
            from .networks.flow import standard_normal_log_prob

            z, log_det = net(x)
            return -(standard_normal_log_prob(z) + log_det).mean()
        return nn.functional.mse_loss(net(x), target)

    def step() -> int:
        optimizer.zero_grad(set_to_none=True)
        with SavedTensorBytes() as saved:
            loss = objective()
        loss.backward()
        optimizer.step()
        return saved.bytes

    times = []
    for i in range(steps):
        start = time.perf_counter()
        saved = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if i == 0 and device.type == "cpu" and steps > 1:
            _reset_peak_rss()  # after the warm-up step, which pages in the backward's code
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_anonymous_bytes()
    return {
        **case,
        "parameters": sum(p.numel() for p in net.parameters()),
        "forward_flops": flops.get_total_flops(),
        "peak_bytes": peak - baseline,
        "saved_bytes": saved,
        "step_seconds": statistics.median(times[1:] or times),
    }


def run_case(case: dict, timeout: float | None = None, timed: bool = True) -> dict:
    """:func:`measure` ``case`` in fresh Python processes; a failure (e.g. out of memory) is returned as
    ``{**case, "error": message}`` instead of raised, so that a sweep goes on.

    Memory and time come from two processes: the peak from one with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc then
    hands every freed tensor back to the OS, so that resident memory follows live memory; a warm-up and one
    measured step), the step time from one with the allocator as users run it (that setting makes every large
    allocation an ``mmap`` and costs a network with many temporaries up to ~1.5× its step time). ``timed=False``
    runs only the first (for memory; its ``step_seconds`` is then that process's)."""
    memory = _run_measure({**case, "steps": min(case.get("steps", 4), 2)}, {"MALLOC_MMAP_THRESHOLD_": "65536"},
                          timeout)
    if "error" in memory:
        return {**case, "error": memory["error"]}
    if not timed:
        return {**memory, **case}
    timing = _run_measure(case, {}, timeout)
    if "error" in timing:
        return {**case, "error": timing["error"]}
    return {**memory, **case, "step_seconds": timing["step_seconds"]}


def _run_measure(case: dict, env: dict, timeout: float | None) -> dict:
    try:
        out = subprocess.run([sys.executable, "-m", "monai_iunet.measure", json.dumps(case)],
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if out.returncode != 0:
        lines = (out.stderr.strip() or f"exit status {out.returncode}").splitlines()
        return {"error": lines[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
