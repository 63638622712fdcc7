#!/usr/bin/env python
"""Side-by-side training-step benchmark: IUNet (memory-efficient on/off) vs MONAI UNet, CheckpointUNet, the model
zoo's BraTS SegResNet and the reference iunets+memcnn, over input size, depth, levels and width.

Every case runs in a fresh process (``benchmarking``: peak memory of a training step, median step
time, parameters, forward FLOPs). Results are appended to ``<output>/results_<device>.jsonl`` (a re-run skips cases
already measured, so an interrupted sweep resumes), then the report is written: ``<output>/<device>.md`` (tables,
targets) and PNG plots. The reference runs only when installed: ``pip install --no-deps iunets==0.1 memcnn==1.5.2``.

    python -m scripts.benchmark                       # all sweeps on CPU (about an hour on 2 cores)
    python -m scripts.benchmark --sweeps depth        # one sweep
    python -m scripts.benchmark --report-only         # rewrite tables and plots from the results file
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from monai_iunet.planner import MemoryPlanner
from scripts.benchmarking import FIXED_DEPTH, reference_available, run_case

BASE = dict(width=16, levels=4, blocks=2, size=64)
IUNETS = ["iunet", "iunet-plain", "iunet-cf", "iunet-plain-cf"]  # channels-last (default) and channels-first
ALL = [*IUNETS, "iunet-refblock", "iunets-ref", "unet", "checkpoint-unet", "segresnet"]
SWEEPS = {
    # name: (swept key, values, networks)
    "layout": ("size", [64], [*IUNETS, "unet", "segresnet"]),
    "depth": ("blocks", [1, 2, 4, 8], [*IUNETS, "iunet-refblock", "iunets-ref", "unet", "checkpoint-unet"]),
    "size": ("size", [32, 48, 64, 96], ALL),
    "width": ("width", [8, 16, 32], [*IUNETS, "iunets-ref", "unet", "segresnet"]),
    "levels": ("levels", [3, 4, 5, 6], [*IUNETS, "unet"]),
}
LABELS = {
    "iunet": "IUNet (memory-efficient, channels-last)",
    "iunet-plain": "IUNet (plain autograd, channels-last)",
    "iunet-cf": "IUNet (memory-efficient, channels-first)",
    "iunet-plain-cf": "IUNet (plain autograd, channels-first)",
    "iunet-refblock": "IUNet, reference blocks",
    "iunets-ref": "iunets 0.1 + memcnn 1.5.2",
    "unet": "MONAI UNet",
    "checkpoint-unet": "MONAI CheckpointUNet",
    "segresnet": "SegResNet (zoo BraTS)",
}
KEYS = ("network", "width", "levels", "blocks", "size", "batch", "device")
MIB = 2**20


def cases(sweeps: list[str], device: str, steps: int) -> list[dict]:
    out, seen = [], set()
    for sweep in sweeps:
        key, values, networks = SWEEPS[sweep]
        for value in values:
            for network in networks:
                if network == "iunets-ref" and not reference_available():
                    continue
                if network in FIXED_DEPTH and key in ("blocks", "levels") and value != BASE[key]:
                    continue
                case = {**BASE, key: value, "network": network, "batch": 1, "device": device, "steps": steps}
                ident = tuple(case[k] for k in KEYS)
                if ident not in seen:
                    seen.add(ident)
                    out.append(case)
    return out


def load(path: Path) -> dict[tuple, dict]:
    if not path.exists():
        return {}
    results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {tuple(r[k] for k in KEYS): r for r in results}


@functools.cache
def _planner(width: int, levels: int, blocks: int, memory_efficient: bool, memory_format: str,
             device: str) -> MemoryPlanner:
    return MemoryPlanner(spatial_dims=3, in_channels=4, out_channels=3, channels=width, num_levels=levels,
                         blocks_per_level=blocks, memory_efficient=memory_efficient, memory_format=memory_format,
                         device_type=device)


def predicted_mib(r: dict, device: str) -> float | None:
    """The memory planner's prediction for an IUNet case (None for the other networks)."""
    if r["network"] not in IUNETS:
        return None
    memory_format = "contiguous" if r["network"].endswith("-cf") else "channels_last"
    planner = _planner(r["width"], r["levels"], r["blocks"], "plain" not in r["network"], memory_format, device)
    return planner.peak_bytes([r["size"]] * 3, r["batch"]) / MIB


def sweep_table(results: dict, sweep: str, device: str) -> list[str]:
    key, values, networks = SWEEPS[sweep]
    lines = [
        f"### {sweep}: {key} ∈ {values} (other settings {', '.join(f'{k} {v}' for k, v in BASE.items() if k != key)})",
        "",
        "| network | " + key + " | params | forward GFLOP | peak MiB | planner MiB | saved for backward MiB | step s "
        "| ms / forward GFLOP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for network in networks:
        for value in values:
            r = results.get(tuple({**BASE, key: value, "network": network, "batch": 1, "device": device}[k]
                                  for k in KEYS))
            if r is None or (network in FIXED_DEPTH and key in ("blocks", "levels") and value != BASE[key]):
                continue
            if "error" in r:
                lines.append(f"| {LABELS[network]} | {value} | | | failed: {r['error'][:60]} | | | | |")
                continue
            gflop = r["forward_flops"] / 1e9
            planned = predicted_mib(r, device)
            planned_text = f"{planned:,.0f} ({planned / (r['peak_bytes'] / MIB) - 1:+.0%})" if planned else ""
            lines.append(
                f"| {LABELS[network]} | {value} | {r['parameters']:,} | {gflop:.1f} | {r['peak_bytes'] / MIB:,.0f} "
                f"| {planned_text} | {r['saved_bytes'] / MIB:,.0f} | {r['step_seconds']:.2f} "
                f"| {1e3 * r['step_seconds'] / gflop:.0f} |"
            )
    return lines + [""]


def targets(results: dict, device: str) -> list[str]:
    def get(network: str, **kw) -> dict | None:
        r = results.get(tuple({**BASE, **kw, "network": network, "batch": 1, "device": device}[k] for k in KEYS))
        return None if r is None or "error" in r else r

    def per_flop(r: dict) -> float:
        return r["step_seconds"] / r["forward_flops"]

    rows = []
    for suffix, layout in (("", "channels-last"), ("-cf", "channels-first")):
        me1, me8 = get("iunet" + suffix, blocks=1), get("iunet" + suffix, blocks=8)
        plain8 = get("iunet-plain" + suffix, blocks=8)
        if me1 and me8:
            growth = me8["peak_bytes"] / me1["peak_bytes"] - 1
            state = 4 * 4 * (me8["parameters"] - me1["parameters"])  # params + grads + 2 Adam moments, fp32
            rest = (me8["peak_bytes"] - state) / me1["peak_bytes"] - 1
            rows.append((f"memory-efficient peak, 1 → 8 blocks/level, {layout}", "≤ +10 %", f"{growth:+.0%}",
                         growth <= 0.10, f"without the added parameters, gradients and Adam moments "
                         f"({state / MIB:.0f} MiB): {rest:+.0%}"))
        if me8 and plain8:
            ratio = me8["peak_bytes"] / plain8["peak_bytes"]
            rows.append((f"peak at 8 blocks/level vs own plain autograd, {layout}", "≤ 0.5×", f"{ratio:.2f}×",
                         ratio <= 0.5, ""))
    ours, ref = get("iunet-refblock"), get("iunets-ref")
    if ours and ref:
        flops = ours["forward_flops"] / ref["forward_flops"] - 1
        mem = ours["peak_bytes"] / ref["peak_bytes"]
        speed = per_flop(ours) / per_flop(ref)
        rows.append(("peak vs iunets+memcnn, same architecture", "≤ 0.9×", f"{mem:.2f}×", mem <= 0.9,
                     f"forward FLOPs differ by {flops:+.1%}"))
        rows.append(("time per forward FLOP vs iunets+memcnn", "≤ 0.5×", f"{speed:.2f}×", speed <= 0.5, ""))
    segresnet = get("segresnet")
    for suffix, layout in (("", "channels-last"), ("-cf", "channels-first")):
        me = get("iunet" + suffix)
        if me and segresnet:
            ratio = per_flop(me) / per_flop(segresnet)
            rows.append((f"ms per forward GFLOP vs SegResNet, memory-efficient, {layout}", "≤ 1.5×", f"{ratio:.2f}×",
                         ratio <= 1.5, ""))
        for blocks in (1, 2, 4, 8):
            me, plain = get("iunet" + suffix, blocks=blocks), get("iunet-plain" + suffix, blocks=blocks)
            if me and plain:
                ratio = me["step_seconds"] / plain["step_seconds"]
                rows.append((f"step time vs own plain autograd, {blocks} blocks/level, {layout}", "≤ 1.4×",
                             f"{ratio:.2f}×", ratio <= 1.4, ""))
    lines = ["| target | goal | measured | met | note |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {goal} | {value} | {'yes' if ok else '**no**'} | {note} |"
              for name, goal, value, ok, note in rows]
    return lines + [""]


def headline(results: dict, device: str) -> list[str]:
    """One row per network at the base settings, with its peak at 8 blocks/level and at the largest size."""
    sizes = SWEEPS["size"][1]

    def get(network: str, **kw) -> dict | None:
        r = results.get(tuple({**BASE, **kw, "network": network, "batch": 1, "device": device}[k] for k in KEYS))
        return None if r is None or "error" in r else r

    lines = [
        f"| network (width {BASE['width']}, {BASE['levels']} levels, {BASE['blocks']} blocks/level, {BASE['size']}³) "
        f"| params | forward GFLOP | peak MiB | peak MiB, 8 blocks/level | peak MiB, {sizes[-1]}³ | step s "
        "| ms / forward GFLOP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for network in ALL:
        r = get(network)
        if r is None:
            continue
        deep, large = (get(network, blocks=8), get(network, size=sizes[-1]))
        deep_mib, large_mib = (f"{x['peak_bytes'] / MIB:,.0f}" if x else "—" for x in (deep, large))
        gflop = r["forward_flops"] / 1e9
        lines.append(
            f"| {LABELS[network]} | {r['parameters']:,} | {gflop:.1f} | {r['peak_bytes'] / MIB:,.0f} | {deep_mib} "
            f"| {large_mib} | {r['step_seconds']:.2f} | {1e3 * r['step_seconds'] / gflop:.0f} |"
        )
    return lines + [""]


def plots(results: dict, device: str, output: Path, sweeps: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for sweep, ylabel, field, name in (
        ("size", "peak training-step memory (MiB)", "peak_bytes", "memory_vs_size"),
        ("depth", "peak training-step memory (MiB)", "peak_bytes", "memory_vs_depth"),
        ("depth", "step time / IUNet plain-autograd step time", "time_ratio", "time_ratio_vs_depth"),
    ):
        if sweep not in sweeps:
            continue
        key, values, networks = SWEEPS[sweep]
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for network in networks:
            xs, ys = [], []
            for value in values:
                ident = {**BASE, key: value, "network": network, "batch": 1, "device": device}
                r = results.get(tuple(ident[k] for k in KEYS))
                # IUNets against their own layout's plain autograd; the others against channels-last plain autograd
                # where it was measured, else channels-first
                names = ["iunet-plain-cf"] if network.endswith("-cf") else ["iunet-plain", "iunet-plain-cf"]
                plain = next((p for p in (results.get(tuple({**ident, "network": n}[k] for k in KEYS))
                                          for n in names) if p is not None), None)
                if r is None or "error" in r or (field == "time_ratio" and (plain is None or "error" in plain)):
                    continue
                xs.append(value ** 3 / 1e3 if key == "size" else value)
                ys.append(r["step_seconds"] / plain["step_seconds"] if field == "time_ratio" else r[field] / MIB)
            if xs:
                ax.plot(xs, ys, marker="o", label=LABELS[network])
        ax.set_xlabel("input voxels (thousands; 32³ … 96³)" if key == "size" else "blocks per level")
        ax.set_ylabel(ylabel)
        if field == "peak_bytes":
            ax.set_yscale("log")  # plain autograd grows an order of magnitude past the others
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
        ax.set_title(f"one training step, {device}")
        fig.tight_layout()
        fig.savefig(output / f"{name}_{device}.png", dpi=110)
        plt.close(fig)
        written.append(f"{name}_{device}.png")
    return written


def report(results: dict, device: str, output: Path, sweeps: list[str]) -> None:
    machine = f"{platform.machine()}, {torch.get_num_threads()} threads" if device == "cpu" else (
        torch.cuda.get_device_name() if torch.cuda.is_available() else "cuda")
    lines = [
        f"# Training-step benchmark ({device}: {machine}; torch {torch.__version__})",
        "",
        "Reproduce: `python -m scripts.benchmark" + ("" if device == "cpu" else f" --device {device}") + "`. One "
        "training step = forward, MSE loss, backward, Adam step; batch 1, 4 → 3 channels. Each case in a fresh "
        "process, memory and time in two: the CPU peak is anonymous resident memory (after a warm-up step, with "
        "`MALLOC_MMAP_THRESHOLD_=65536` so that freed memory leaves the process), the step time from a process with "
        "the default allocator; "
        "the CUDA peak `torch.cuda.max_memory_allocated`; both count parameters, optimizer state, the batch and the "
        "step. Step time: median of the steps after the warm-up. *planner*: `monai_iunet.planner`'s prediction and "
        "its error. *IUNet, reference blocks*: coupling blocks as in iunets (one 3×3 conv → LeakyReLU → "
        "GroupNorm(1), Cayley resampling), blocks b = the reference's architecture entries 2b. The reference's "
        "exp/Cayley gradients are wrong (`gradcheck` fails): it is here for memory and speed only. On CPU, times "
        "depend on which kernel PyTorch picks per convolution: at batch 1 it sends a convolution with "
        "channels·depth·height ≤ 20480 to its im2col fallback, several times slower than oneDNN; the IUNets' "
        "convolutions (`SameConv`) run such inputs as a batch of two half-volumes, which oneDNN takes, the other "
        "networks' convolutions go where PyTorch sends them (which is why MONAI UNet or SegResNet can be slower at "
        "48³ than at 64³). IUNet layouts: channels-last is the default; rows measured with channels-first "
        "(`memory_format=\"contiguous\"`) are labelled so.",
        "",
        "## Headline",
        "",
        *headline(results, device),
        "## Targets",
        "",
        *targets(results, device),
        "## Sweeps",
        "",
    ]
    for sweep in sweeps:
        lines += sweep_table(results, sweep, device)
    lines += [f"![{name}]({name})" for name in plots(results, device, output, sweeps)]
    (output / f"{device}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {output / f'{device}.md'}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", nargs="+", default=list(SWEEPS), choices=list(SWEEPS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=4, help="training steps per case (the first is warm-up)")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks"))
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / f"results_{args.device}.jsonl"
    results = load(path)
    if not args.report_only:
        todo = [c for c in cases(args.sweeps, args.device, args.steps) if tuple(c[k] for k in KEYS) not in results]
        for case in tqdm(todo, desc="benchmark", unit="case"):
            result = run_case(case)
            results[tuple(case[k] for k in KEYS)] = result
            with path.open("a") as f:
                f.write(json.dumps(result) + "\n")
    report(results, args.device, args.output, args.sweeps)


if __name__ == "__main__":
    main()
