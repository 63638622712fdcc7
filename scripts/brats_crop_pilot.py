#!/usr/bin/env python
"""The whole brain in one window (issue 36, item 2): a member trained with crop = window = 96³ at 2 mm beside the
shipped member of the same fold, out-of-fold through the bundle's own ``inference.json``.

    FOLDS=0 scripts/train_brats_cv.sh ../shared/data runs/brats_cv/crop96 -- --epochs 20 --time_budget_s '$None' \\
        --roi_size '[96,96,96]' --val_roi_size '[96,96,96]'
    python -m scripts.brats_crop_pilot [--runs runs/brats_cv/crop96] [--window 96]

Each pilot fold's final weights are inferred on the fold's held-out cases with the shipped settings (mirroring on,
small-ET rule off) and a ``window``³ window, and scored like the shipped members' out-of-fold cases
(``scripts.brats_cv_report``); the shipped member's scores are its committed ones (``docs/benchmarks/brats_real.json``)
on the same cases. The CPU each got is estimated from wall time and how many trainings shared the 2 cores. Writes
``docs/benchmarks/brats_crop_pilot.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from monai_iunet.apps.brats.calibration import out_of_fold
from monai_iunet.apps.brats.data.location import real_data
from monai_iunet.apps.brats.labels import REGIONS
from monai_iunet.apps.brats.metrics import summarise
from scripts import DOCS, ROOT
from scripts.brats_baseline_report import ORDER, paired
from scripts.brats_cv_report import final_weights, folds, training_log

CORES = 2


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "brats_cv" / "crop96")
    parser.add_argument("--data", type=Path, default=real_data())
    parser.add_argument("--window", type=int, default=96)
    parser.add_argument("--concurrent", type=float, default=1.0,
                        help="trainings that shared the 2 cores with the pilot (for its CPU estimate)")
    parser.add_argument("--cpu-s", type=float, help="the pilot training's measured CPU seconds (ps), if known")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    shipped = json.loads((DOCS / "brats_real.json").read_text())
    rows = {}
    for run in folds(args.runs.resolve()):
        weights, trainer = final_weights(run)
        k = int(run.name[4:])
        oof = out_of_fold(args.data.resolve(), run / "oof" / "tta_on", tta=True, members={k: weights}, folds=[k],
                          jobs=1, roi_size=[args.window] * 3)
        pilot = {case: entry["scores"] for case, entry in oof.items()}
        member = {c: shipped["final"]["cases"][c] for c in pilot}
        log = training_log(run, trainer["epoch_length"])
        fold = shipped["folds"][run.name]
        rows[run.name] = {
            "pilot": {"steps": trainer["iteration"], "wall_s": log["training_time_s"],
                      "cpu_s_estimate": round(args.cpu_s or log["training_time_s"] * min(1.0, CORES / args.concurrent)),
                      "cpu_s_measured": args.cpu_s is not None,
                      "summary": summarise(pilot), "cases": pilot,
                      "seconds_median": float(np.median([e["seconds"] for e in oof.values()])),
                      "uncertainty": {c: e["uncertainty"].get("score") for c, e in oof.items()}},
            "shipped_member": {"steps": fold["steps"], "wall_s": fold["training_time_s"],
                               "cpu_s_estimate": round(fold["training_time_s"] * CORES / 5),  # five at once
                               "summary": summarise(member), "cases": member},
            "paired": {r: paired(pilot, member, r) for r in REGIONS},
        }
    results = {"window": args.window, "folds": rows}
    (DOCS / "brats_crop_pilot.json").write_text(json.dumps(results, indent=1, default=float))
    lines = [f"# Crop = window = {args.window}³ at 2 mm: pilot beside the shipped members",
             "", "Out-of-fold through `inference.json` (mirroring on, small-ET rule off); the shipped member's scores "
             "are its committed out-of-fold scores on the same cases. CPU: wall time × the share of the 2 cores the "
             "run had (the shipped members trained five at once).", "",
             "| fold | model | steps | CPU (core-h, est.) | WT | TC | ET | s/case |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, row in rows.items():
        for label, key in ((f"{args.window}³ pilot", "pilot"), ("shipped member (64³)", "shipped_member")):
            m = row[key]
            dice = " | ".join(f"{m['summary'][r]['dice_mean']:.3f}" for r in ORDER)
            lines.append(f"| {name} | {label} | {m['steps']} | {m['cpu_s_estimate'] / 3600:.2f} | {dice} | "
                         f"{m.get('seconds_median', float('nan')):.0f} |")
        lines.append(f"| {name} | pilot − member (paired, ± SE) | | | " + " | ".join(
            f"{row['paired'][r]['mean']:+.3f} ± {row['paired'][r]['sem']:.3f}" for r in ORDER) + " | |")
    (DOCS / "brats_crop_pilot.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
