#!/usr/bin/env python
"""Training throughput of the BraTS bundle's own recipe on CPU: steps per hour, per lever, side by side in one run.

Every case is the bundle's ``configs/train.json`` on real cases (one cross-validation fold of
``configs/splits/brats_real_folds.json``), built by MONAI's ``ConfigParser`` and run by its Ignite trainer with
every handler of the recipe, in a fresh process, with one lever changed through a config override. Timed from
Ignite's events after a warm-up: an iteration's wall time (data loading, forward, loss, backward, optimizer, handlers)
and the loader's share of it (``GET_BATCH_STARTED`` → ``GET_BATCH_COMPLETED``); steps per hour = 3600 / the median
iteration. How the cores are used is part of a case: one process on one thread, one on two threads, or two one-thread
processes at once (the way ``scripts/train_brats_cv.sh`` trains folds; their steps per hour add up).

    python -m scripts.benchmark_training                          # every case, docs/benchmarks/training_cpu.{md,json}
    python -m scripts.benchmark_training --cases before after      # some cases
    python -m scripts.benchmark_training --report-only            # rewrite the report from the JSON

The machine is shared: cases run one after another (or two at once, where that is the case), the report gives the
median and the interquartile range of the iteration times, and the rounds (``--rounds``) repeat the whole set so
that a lever is compared with the recipe measured minutes apart, not hours.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from monai_iunet.apps.brats.data.location import real_data
from scripts import BUNDLE, DOCS, ROOT

DATA = real_data()
SPLIT = ROOT / "configs" / "splits" / "brats_real_folds.json"

# What "before" undoes of today's train.json: the recipe as it trained the shipped models.
BEFORE = {"memory_efficient": True, "optimizer#fused": False}
# glibc's allocator keeps freed tensors for reuse instead of returning each to the system (and faulting it back in
# on the next step): PyTorch's CPU tuning guide's advice, without installing jemalloc/tcmalloc
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "33554432", "MALLOC_TRIM_THRESHOLD_": "4294967296"}

# name: (what it changes, config overrides, environment). Every lever but "after" is "before" plus one change.
LEVERS: dict[str, tuple[str, dict, dict]] = {
    "before": ("the recipe that trained the shipped models (memory-efficient engine, Adam, default allocator)",
               BEFORE, {}),
    "plain": ("plain autograd (activations kept: no reconstruction in backward)",
              {**BEFORE, "memory_efficient": False}, {}),
    "fused_adam": ("Adam's fused CPU kernel", {**BEFORE, "optimizer#fused": True}, {}),
    "malloc": ("glibc allocator keeps freed memory (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_)", BEFORE, MALLOC),
    "bf16": ("coupling sub-networks in bf16 (subnet_dtype; state fp32)",
             {**BEFORE, "_meta_#plans#network_def#subnet_dtype": "bfloat16"}, {}),
    "compile": ("coupling sub-networks compiled (torch.compile, regional)",
                {**BEFORE, "network": "$monai_iunet.networks.compile_subnets(@network_def.to(@device))"}, {}),
    "disk_cache": ("cases cached on disk too (PersistentDataset under the in-memory cache)",
                   {**BEFORE, "cache_dir": "{cache}"}, {}),
    "after": ("today's train.json (plain autograd, fused Adam) with the allocator setting of train_brats_cv.sh", {},
              MALLOC),
}
# name: (lever, threads per process, processes at once, every round or the first only)
CASES: dict[str, tuple[str, int, int, bool]] = {
    "before": ("before", 1, 1, True),
    "after": ("after", 1, 1, True),
    "plain": ("plain", 1, 1, True),
    "fused_adam": ("fused_adam", 1, 1, True),
    "malloc": ("malloc", 1, 1, True),
    "bf16": ("bf16", 1, 1, True),
    "compile": ("compile", 1, 1, False),
    "disk_cache_first": ("disk_cache", 1, 1, False),  # an empty cache folder: the run fills it
    "disk_cache_again": ("disk_cache", 1, 1, False),  # the folder the previous case filled
    "before_2x1": ("before", 1, 2, True),
    "after_2x1": ("after", 1, 2, True),
    "after_2threads": ("after", 2, 1, True),
}


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else values * 3
    return q[0], statistics.median(values), q[2]


def measure(overrides: dict, datalist: str, steps: int, warmup: int) -> dict:
    """Build the recipe's trainer with ``overrides`` and time ``steps`` iterations after ``warmup`` (in this
    process; :func:`run_case` runs it in a fresh one)."""
    from ignite.engine import Events
    from monai.bundle import ConfigParser

    os.chdir(BUNDLE)
    work = tempfile.mkdtemp(prefix="benchmark_training_")
    parser = ConfigParser()
    parser.read_meta("configs/metadata.json")
    parser.read_config("configs/train.json")
    parser.update({
        "dataset_dir": str(DATA), "data_list_file_path": datalist, "ckpt_dir": f"{work}/models",
        "output_dir": f"{work}/eval", "time_budget_s": None, "val_interval": 10**6, **overrides,
    })
    parser.get_parsed_content("initialize")  # determinism, folders
    started = time.perf_counter()
    trainer = parser.get_parsed_content("train#trainer")
    build_s = time.perf_counter() - started
    marks: dict[str, list[float]] = {"batch_start": [], "batch_end": [], "iteration_end": []}
    losses: list[float] = []
    trainer.add_event_handler(Events.GET_BATCH_STARTED, lambda e: marks["batch_start"].append(time.perf_counter()))
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, lambda e: marks["batch_end"].append(time.perf_counter()))

    def iteration_completed(engine) -> None:
        marks["iteration_end"].append(time.perf_counter())
        losses.append(float(engine.state.output[0]["loss"]))
        if engine.state.iteration >= warmup + steps:
            engine.terminate()

    trainer.add_event_handler(Events.ITERATION_COMPLETED, iteration_completed)
    started = time.perf_counter()
    trainer.run()
    ends = marks["iteration_end"]
    iteration_s = [b - a for a, b in zip(ends[warmup - 1 : -1], ends[warmup:])]
    loader_s = [b - a for a, b in zip(marks["batch_start"][warmup:], marks["batch_end"][warmup:])]
    return {
        "build_s": build_s, "first_iterations_s": ends[warmup - 1] - started, "iteration_s": iteration_s,
        "loader_s": loader_s, "losses": losses, "threads": torch.get_num_threads(),
    }


def run_case(name: str, datalist: str, steps: int, warmup: int, cache: Path) -> dict:
    """Measure a case in fresh processes (two at once where the case says so); ``cache``: the disk cache's folder."""
    lever, threads, processes, _ = CASES[name]
    if name.endswith("_first"):
        shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, **LEVERS[lever][2], "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    overrides = json.loads(json.dumps(LEVERS[lever][1]).replace("{cache}", str(cache)))
    payload = json.dumps({"overrides": overrides, "datalist": datalist, "steps": steps, "warmup": warmup})
    children = [
        subprocess.Popen([sys.executable, "-m", "scripts.benchmark_training", "--child", payload], cwd=ROOT, env=env,
                         stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    runs = []
    for child in children:
        out, _ = child.communicate()
        if child.returncode != 0:
            raise RuntimeError(f"case {name} failed (exit {child.returncode})")
        runs.append(json.loads(out.strip().splitlines()[-1]))
    q1, median, q3 = _quartiles([s for r in runs for s in r["iteration_s"]])
    return {
        "case": name, "lever": lever, "threads": threads, "processes": processes, "runs": runs,
        "iteration_s": {"q1": q1, "median": median, "q3": q3},
        "loader_s": statistics.median(s for r in runs for s in r["loader_s"]),
        # processes at once each do 3600 / median steps an hour
        "steps_per_hour": sum(3600 / statistics.median(r["iteration_s"]) for r in runs),
        "build_s": statistics.median(r["build_s"] for r in runs),
    }


def per_flop_cases() -> dict[str, dict]:
    """One training step of the recipe's network (its plans' ``network_def``, memory-efficient and plain) and of
    the model zoo's BraTS SegResNet, at the recipe's crop, for time per forward GFLOP (``scripts.benchmarking``)."""
    plans = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["plans"]
    size = list(plans["patch_size"])
    return {
        "IUNet (memory-efficient)": {"network_def": {**plans["network_def"], "memory_efficient": True}, "size": size},
        "IUNet (plain autograd)": {"network_def": {**plans["network_def"], "memory_efficient": False}, "size": size},
        "SegResNet (zoo BraTS)": {"network": "segresnet", "width": 16, "levels": 4, "blocks": 1, "size": size},
    }


def run_per_flop(rounds: int, steps: int) -> list[list[dict]]:
    from scripts.benchmarking import run_case as run_step_case

    env = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        return [[{"name": name, **run_step_case({**case, "steps": steps}, timeout=1800)}
                 for name, case in per_flop_cases().items()] for _ in range(rounds)]
    finally:
        if env is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = env


def fold_datalist(fold: int, output: Path) -> str:
    subprocess.run([sys.executable, "-m", "monai_iunet.apps.brats.data.datalist", "--dataset-dir", str(DATA),
                    "--split", str(SPLIT), "--fold", str(fold), "--output", str(output)], check=True, cwd=ROOT)
    return str(output)


def report(results: dict, output: Path) -> None:
    rounds = results["rounds"]
    names = list(dict.fromkeys(r["case"] for rnd in rounds for r in rnd))
    base = [r for rnd in rounds for r in rnd if r["lever"] == "before"]
    lines = [
        f"# Training throughput on CPU ({results['cpu']}, torch {results['torch']})", "",
        f"Reproduce: `{results['command']}`. Each case is the BraTS "
        "bundle's `configs/train.json` (64³ crops, batch 1, every handler) on real fold-"
        f"{results['fold']} cases, in a fresh process, {results['steps']} iterations timed after "
        f"{results['warmup']} of warm-up; a round runs every case once, the rounds repeat the set. *steps/h*: "
        "3600 / median iteration (two processes at once: the sum of both); *IQR*: the iterations' interquartile range; "
        "*loader*: median time per iteration spent waiting for the batch; *build*: building the trainer, i.e. "
        "loading and caching the fold's cases at 1 mm → 2 mm; *warm-up s*: the warm-up iterations (compilation "
        "included); *vs before*: steps/h over *before* on as many cores (one thread; two: two one-thread "
        "processes) in the same round; *loss Δ*: the largest difference of its training losses from that *before*'s, "
        "step by step (same seed, same crops: equal training shows as rounding).", "",
        "| round | case | what changes | threads × processes | iteration s (IQR) | loader s | steps/h | vs before "
        "| build s | warm-up s | loss Δ |",
        "|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for i, rnd in enumerate(rounds):
        for r in rnd:
            # compared with "before" on the same cores (two one-thread processes against two, …)
            cores = r["threads"] * r["processes"]
            ref = next((b for b in rnd if b["lever"] == "before" and b["threads"] * b["processes"] == cores), None)
            it = r["iteration_s"]
            ratio = f"{r['steps_per_hour'] / ref['steps_per_hour']:.2f}×" if ref else ""
            warmup = statistics.median(run["first_iterations_s"] for run in r["runs"])
            delta = ""
            if ref:
                a, b = r["runs"][0]["losses"], ref["runs"][0]["losses"]
                delta = f"{max(abs(x - y) for x, y in zip(a, b)):.1e}"
            lines.append(
                f"| {i + 1} | {r['case']} | {LEVERS[r['lever']][0]} | {r['threads']} × {r['processes']} | "
                f"{it['median']:.2f} ({it['q1']:.2f}–{it['q3']:.2f}) | {r['loader_s']:.3f} | "
                f"{r['steps_per_hour']:,.0f} | {ratio} | {r['build_s']:.0f} | {warmup:.0f} | {delta} |"
            )
    if base:
        lines += ["", "Median over rounds (steps/h):", ""]
        lines += ["| case | cores | steps/h | vs before on as many cores |", "|---|---:|---:|---:|"]
        for name in names:
            runs = [r for rnd in rounds for r in rnd if r["case"] == name]
            cores = runs[0]["threads"] * runs[0]["processes"]
            ref = [r["steps_per_hour"] for r in base if r["threads"] * r["processes"] == cores]
            value = statistics.median(r["steps_per_hour"] for r in runs)
            ratio = f"{value / statistics.median(ref):.2f}×" if ref else ""
            lines.append(f"| {name} | {cores} | {value:,.0f} | {ratio} |")
    if results.get("per_flop"):
        lines += ["", "## Time per forward FLOP (one training step, one thread)", "",
                  "`scripts.benchmarking.run_case` (fresh processes, MSE loss, Adam; median of the steps after the "
                  "first) at the recipe's crop: the recipe's network from the plans and the model zoo's BraTS "
                  "SegResNet, in the same round.", "",
                  "| round | network | forward GFLOP | step s | ms / forward GFLOP | vs SegResNet | peak MiB |",
                  "|---:|---|---:|---:|---:|---:|---:|"]
        for i, rnd in enumerate(results["per_flop"]):
            per = {r["name"]: 1000 * r["step_seconds"] / (r["forward_flops"] / 1e9) for r in rnd if "error" not in r}
            ref = next((v for k, v in per.items() if k.startswith("SegResNet")), None)
            for r in rnd:
                if "error" in r:
                    lines.append(f"| {i + 1} | {r['name']} | | | | | failed: {r['error']} |")
                    continue
                ratio = f"{per[r['name']] / ref:.2f}×" if ref else ""
                lines.append(f"| {i + 1} | {r['name']} | {r['forward_flops'] / 1e9:.1f} | {r['step_seconds']:.2f} | "
                             f"{per[r['name']]:.0f} | {ratio} | {r['peak_bytes'] / 2**20:,.0f} |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    # bf16 without native support runs ATen's reference kernels, ~20x slower: not worth an hour of a benchmark
    native_bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    parser.add_argument("--cases", nargs="*", choices=list(CASES),
                        default=[c for c in CASES if native_bf16 or CASES[c][0] != "bf16"])
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--output", type=Path, default=DOCS / "training_cpu")
    parser.add_argument("--per-flop-rounds", type=int, default=2, help="rounds of the per-FLOP comparison (0: none)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    if args.child:
        case = json.loads(args.child)
        print(json.dumps(measure(case["overrides"], case["datalist"], case["steps"], case["warmup"])), flush=True)
        return
    path = args.output.with_suffix(".json")
    if not args.report_only:
        with tempfile.TemporaryDirectory() as tmp:
            datalist = fold_datalist(args.fold, Path(tmp) / "datalist.json")
            rounds = []
            for i in range(args.rounds):
                rounds.append([])
                for name in (c for c in args.cases if i == 0 or CASES[c][3]):
                    print(f"round {i + 1}/{args.rounds}: {name}", flush=True)
                    rounds[-1].append(run_case(name, datalist, args.steps, args.warmup, Path(tmp) / "cache"))
                    print(f"  {rounds[-1][-1]['steps_per_hour']:,.0f} steps/h", flush=True)
        per_flop = run_per_flop(args.per_flop_rounds, 6) if args.per_flop_rounds else []
        results = {
            "per_flop": per_flop,
            "cpu": f"{platform.machine()}, {os.cpu_count()} cores, bf16 oneDNN "
                   f"{'yes' if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'no'}",
            "torch": torch.__version__, "fold": args.fold, "steps": args.steps, "warmup": args.warmup,
            "command": " ".join(["python -m scripts.benchmark_training", *sys.argv[1:]]), "rounds": rounds,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
    report(json.loads(path.read_text()), args.output)


if __name__ == "__main__":
    main()
