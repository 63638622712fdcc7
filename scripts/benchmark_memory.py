#!/usr/bin/env python
"""Peak memory and step time of one IUNet training step, memory_efficient on vs off, over depth.

Every case runs in a fresh subprocess so that peaks do not leak between cases. On CPU the peak is the process's
peak RSS (``MALLOC_MMAP_THRESHOLD_=65536`` is set for the workers so that glibc returns large buffers and peaks are
reproducible) minus the RSS just before the first step; on CUDA it is ``torch.cuda.max_memory_allocated``. The
bytes autograd keeps for backward (``SavedTensorBytes``) are reported too.

    python scripts/benchmark_memory.py --size 64 --channels 16 --levels 4 --blocks 1 4 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(case: dict) -> dict:
    import torch

    from monai_iunet import IUNet, SavedTensorBytes

    torch.manual_seed(0)
    device = torch.device(case["device"])
    net = IUNet(3, 4, 3, channels=case["channels"], num_levels=case["levels"], blocks_per_level=case["blocks"],
                memory_efficient=case["memory_efficient"]).to(device)
    optimizer = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.randn(1, 4, *([case["size"]] * 3), device=device)
    target = torch.rand(1, 3, *([case["size"]] * 3), device=device)

    def step() -> int:
        optimizer.zero_grad(set_to_none=True)
        with SavedTensorBytes() as saved:
            loss = torch.nn.functional.mse_loss(net(x), target)
        loss.backward()
        optimizer.step()
        return saved.bytes

    baseline = _rss_bytes()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    times, saved = [], 0
    for _ in range(case["steps"]):
        start = time.perf_counter()
        saved = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - baseline
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    return {**case, "peak_bytes": peak, "saved_bytes": saved, "step_seconds": statistics.median(times[1:] or times),
            "parameters": sum(p.numel() for p in net.parameters())}


def run_case(case: dict) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(case)], env=env, check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=64, help="cubic input size (multiple of 2**(levels-1))")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--blocks", type=int, nargs="+", default=[1, 4, 8], help="blocks per level to sweep")
    parser.add_argument("--steps", type=int, default=4, help="training steps per case (the first is warm-up)")
    parser.add_argument("--device", default="cuda" if _cuda_available() else "cpu")
    parser.add_argument("--output", help="also write the Markdown table to this file")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    rows = []
    for blocks in args.blocks:
        for memory_efficient in (False, True):
            case = dict(size=args.size, channels=args.channels, levels=args.levels, blocks=blocks,
                        memory_efficient=memory_efficient, steps=args.steps, device=args.device)
            result = run_case(case)
            rows.append(result)
            print(f"blocks={blocks} memory_efficient={memory_efficient}: peak {result['peak_bytes'] / 2**20:.0f} MiB,"
                  f" step {result['step_seconds']:.2f} s", file=sys.stderr)
    table = _table(rows, args)
    print(table)
    if args.output:
        with open(args.output, "w") as f:
            f.write(table + "\n")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _table(rows: list[dict], args) -> str:
    import torch

    mib = 2**20
    lines = [
        f"IUNet training step (Adam), input 1×4×{args.size}³, width {args.channels}, {args.levels} levels, "
        f"device {args.device} ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}",
        "",
        "| blocks/level | params | memory_efficient | peak step memory (MiB) | saved for backward (MiB) | step (s) "
        "| peak vs plain | time vs plain |",
        "|---:|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r["blocks"], r["memory_efficient"]): r for r in rows}
    for r in rows:
        plain = by_key[(r["blocks"], False)]
        lines.append(
            f"| {r['blocks']} | {r['parameters']:,} | {'on' if r['memory_efficient'] else 'off'} "
            f"| {r['peak_bytes'] / mib:.0f} | {r['saved_bytes'] / mib:.1f} | {r['step_seconds']:.2f} "
            f"| {r['peak_bytes'] / plain['peak_bytes']:.2f}× | {r['step_seconds'] / plain['step_seconds']:.2f}× |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
