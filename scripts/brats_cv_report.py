#!/usr/bin/env python
"""Out-of-fold evaluation of the cross-validated BraTS models that ``scripts/train_brats_cv.sh`` trained, the choices
made on the folds, and the ship step; the measuring and calibrating is ``monai_iunet.apps.brats.calibration``'s (one
scoring path: inference.json + evaluate.json), this script adds the training history, the 2 mm ceiling, the report
and the figures.

    python -m scripts.brats_cv_report [--runs runs/brats_cv/iunet] [--data ../shared/data] [--reuse] [--ship]

1. each fold's final weights (``last.pt``'s ``model``: no checkpoint selection); a fold trained in stages
   (``RESUME=True``) counts all its steps and wall time;
2. ``calibration.out_of_fold`` with the fold's weights, mirroring off and on, small-ET rule off: every case scored
   only by the model that did not train on it (MONAI's Dice and HD95 on each input's 1 mm grid, BraTS conventions);
3. the shipped mirroring setting: on only if it adds at least ``TTA_MIN_GAIN`` mean Dice (it costs ~5x the seconds);
4. ``calibration.calibrate`` on that setting: the small-ET threshold and the uncertainty score's kind and threshold;
5. the ceiling of the 2 mm grid: each expert label taken to 2 mm and back the way predictions are, scored the same way;
6. ``docs/benchmarks/brats_real.json`` and ``brats_real.md`` (with the window study of commit 36b93a4's
   ``scripts/brats_window_study.py``, numbers in ``brats_window.json``), ``brats_real_curves.png``,
   ``brats_real_per_case.png``, ``brats_real_overview.png``;
7. with ``--ship``: the members become the bundle's ``models/model.pt`` (``calibration.write_ensemble``), the chosen
   values its plans (``calibration.write_plans``), the out-of-fold scores its ``performance``, each member's
   provenance ``docs/benchmarks/brats_members.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage

from monai_iunet.apps.brats.calibration import (
    FAILURE_WT_DICE,
    FALSE_ALARM_QUANTILE,
    calibrate,
    out_of_fold,
    write_ensemble,
    write_plans,
)
from monai_iunet.apps.brats.data.location import real_data
from monai_iunet.apps.brats.labels import REGIONS
from monai_iunet.apps.brats.metrics import score_case, score_label_maps, summarise
from monai_iunet.apps.brats.postprocess import SuppressSmallEnhancingd
from monai_iunet.bundle import run_bundle
from scripts import BUNDLE, DOCS, ROOT

TTA_MIN_GAIN = 0.005  # mean Dice mirroring must add to be on by default (issue 36: within 0.005 is equal)
TARGETS = {"WT": 0.85, "TC": 0.75, "ET": 0.70}
PAPER = {"WT": 0.900, "TC": 0.809, "ET": 0.767}  # iUNet-16, BraTS 2018, 260 cases, 1 mm, GPU
SETTINGS = {"tta_off": False, "tta_on": True}


def arguments(description: str, runs: str) -> argparse.ArgumentParser:
    """The options of a report over cross-validated runs (``runs``: their default folder under runs/brats_cv)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "brats_cv" / runs)
    parser.add_argument("--data", type=Path, default=real_data())
    parser.add_argument("--jobs", type=int, default=2, help="folds inferred at once (one thread each)")
    parser.add_argument("--reuse", action="store_true", help="score the out-of-fold outputs already written")
    return parser


def folds(runs: Path) -> list[Path]:
    found = sorted(runs.glob("fold*"), key=lambda p: int(p.name[4:]))
    if not found:
        raise FileNotFoundError(f"no fold runs under {runs}; train with scripts/train_brats_cv.sh first.")
    return found


def final_weights(run: Path) -> tuple[Path, dict]:
    """The fold's final checkpoint (its ``model`` loads into a one-member ensemble) and the trainer's state in it
    (``iteration``: optimizer steps taken, ``epoch_length``)."""
    last = run / "models" / "resume" / "last.pt"
    return last, dict(torch.load(last, map_location="cpu", weights_only=True)["trainer"])


def stages(run: Path) -> list[dict]:
    """How the fold was trained: the provenance record of its first run and of each resumed one (``provenance*.json``)
    with the trainer's wall time of the runs that started after it, from Ignite's "Engine run finished. Time taken"
    lines in ``train.log`` (runs that stopped at once count too)."""
    import datetime

    finished = []  # (when it ended, seconds it took)
    for line in (run / "train.log").read_text(errors="replace").splitlines():
        if "SupervisedTrainer - INFO - Engine run finished. Time taken:" in line:
            h, m, sec = line.rsplit(" ", 1)[1].split(":")
            end = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            finished.append((end, int(h) * 3600 + int(m) * 60 + float(sec)))
    records = sorted((json.loads(p.read_text()) for p in run.glob("provenance*.json")), key=lambda r: r["started"])
    if not finished or not records:
        raise RuntimeError(f"{run} has no provenance record or no finished training run in train.log.")
    for record, following in zip(records, records[1:] + [{"started": float("inf")}]):
        record["wall_time_s"] = round(sum(t for end, t in finished if record["started"] <= end < following["started"]))
    return records


def training_log(run: Path, epoch_length: int) -> dict:
    """Per-epoch training time and loss, and the validation Dice (monitoring only), from the run's TensorBoard files
    (a resumed run writes another; a step logged twice keeps its later value)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, dict] = {}
    for file in sorted((run / "eval").glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        events = EventAccumulator(str(file), size_guidance={"scalars": 0})
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update((e.step, e.value) for e in events.Scalars(tag))
    time_at, losses = scalars["training_time"], scalars["train_loss"]
    epoch_loss = []
    for epoch in sorted(time_at):
        values = [v for step, v in losses.items() if (epoch - 1) * epoch_length < step <= epoch * epoch_length]
        if values:
            epoch_loss.append((time_at[epoch], float(np.mean(values))))
    return {
        "epochs": max(time_at), "training_time_s": round(max(time_at.values())), "epoch_loss": epoch_loss,
        "validation_wt": [(time_at[e], v) for e, v in sorted(scalars.get("val_wt_dice", {}).items()) if e in time_at],
    }


def score(cases: dict[str, dict], et_min_volume_ml: float) -> dict:
    """Per-case scores (Dice and HD95) of the written label maps after the small-ET rule (the bundle's transform)."""
    rule = SuppressSmallEnhancingd("pred", et_label=4, min_volume_ml=et_min_volume_ml)
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    return {case: score_label_maps(rule({"pred": loader(e["prediction"])})["pred"], loader(e["label"]))
            for case, e in cases.items()}


def resolution_ceiling(datalist: list[dict], pixdim: float, work: Path) -> dict:
    """Scores of the expert labels themselves after the recipe's round trip: region channels resampled to
    ``pixdim`` mm (bilinear, as the images are) and back onto the input grid (bilinear, thresholded at 0.5, as the
    predictions are)."""
    from monai.data import MetaTensor
    from monai.transforms import (
        ConvertToMultiChannelBasedOnBratsClasses,
        LoadImage,
        ResampleToMatch,
        SaveImage,
        Spacing,
    )

    from monai_iunet.apps.brats.transforms import BratsLabelsFromRegionsd

    work.mkdir(parents=True, exist_ok=True)
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    per_case = {}
    for item in datalist:
        label = loader(item["label"])
        regions = MetaTensor(ConvertToMultiChannelBasedOnBratsClasses()(label[0]).float(), meta=label.meta)
        coarse = Spacing(pixdim=pixdim, mode="bilinear")(regions)
        back = ResampleToMatch(mode="bilinear")(coarse, label)
        path = work / f"{item['case']}_ceiling.nii.gz"
        SaveImage(output_dir=str(work), output_postfix="", separate_folder=False, print_log=False,
                  output_dtype=np.uint8)(BratsLabelsFromRegionsd("x")({"x": back})["x"], filename=str(path)[:-7])
        per_case[item["case"]] = score_case(path, item["label"])
    return {"cases": per_case, "summary": summarise(per_case)}


def plot_curves(logs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (loss_ax, dice_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, log in logs.items():
        t, loss = zip(*log["epoch_loss"])
        loss_ax.plot(np.array(t) / 60, loss, label=name)
        if log["validation_wt"]:
            t, dice = zip(*log["validation_wt"])
            dice_ax.plot(np.array(t) / 60, dice, marker=".", label=name)
    loss_ax.set(xlabel="training time (min)", ylabel="Dice + BCE loss (epoch mean)", title="training loss per fold")
    dice_ax.set(xlabel="training time (min)", ylabel="WT Dice (2 mm, brain box)", ylim=(0, 1),
                title="held-out fold WT Dice during training (monitoring only)")
    loss_ax.legend()
    dice_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_per_case(final: dict, unc: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = sorted(final, key=lambda c: final[c]["WT"]["dice"])
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [2.2, 1]})
    x = np.arange(len(cases))
    for i, region in enumerate(REGIONS):
        bars.bar(x + (i - 1) * 0.27, [final[c][region]["dice"] for c in cases], 0.27, label=region)
    bars.set_xticks(x, [c.replace("Brats18_", "") for c in cases], rotation=90, fontsize=7)
    bars.set(ylabel="out-of-fold Dice", ylim=(0, 1), title="every case, scored by the fold model that never saw it")
    bars.legend()
    scatter.scatter([unc["scores"][c] for c in cases], [final[c]["WT"]["dice"] for c in cases])
    scatter.axvline(unc["threshold"], color="red", lw=0.8, label="shipped threshold")
    scatter.axhline(FAILURE_WT_DICE, color="grey", lw=0.8, ls="--", label="failure")
    scatter.set(xlabel=f"uncertainty score ({unc['kind']})", ylabel="out-of-fold WT Dice",
                title=f"Spearman rho {unc['spearman_wt_dice']['rho']:.2f}")
    scatter.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(results: dict, window: dict | None, path: Path) -> None:
    final, summary = results["final"]["cases"], results["final"]["summary"]
    lines = [
        "# BraTS on real cases, on 2 CPU cores: the cross-validated IUNet-16 ensemble", "",
        "Generated by `scripts/brats_cv_report.py` from the runs of `scripts/train_brats_cv.sh` (every number in",
        "`brats_real.json`; the window study by `scripts/brats_window_study.py` of commit 36b93a4, numbers in",
        "`brats_window.json`).",
        "Data: the **30 real BraTS 2018 training cases** of `../shared/data`. **5-fold cross-validation**, folds fixed",
        "by a seed and committed before any training (`configs/splits/brats_real_folds.json`); the recipe (the",
        "bundle's `configs/train.json`) was fixed before any fold was scored. Every number below is **out-of-fold**:",
        "each case is segmented by the fold model that never saw it, through the bundle's own `inference.json`",
        "(a fresh `monai.bundle run` per fold: 1 mm files in, label map on the input grid out), and scored with",
        "MONAI's `DiceMetric` / `HausdorffDistanceMetric(percentile=95)`, BraTS conventions (both empty: Dice 1;",
        "one empty: Dice 0, HD95 373.13 mm). The training monitor's numbers are never used.", "",
        "## Out-of-fold result (30 cases, shipped inference settings)", "",
        "| | WT Dice | TC Dice | ET Dice | WT HD95 | TC HD95 | ET HD95 |", "|---|---:|---:|---:|---:|---:|---:|",
        "| IUNet-16, 5 folds, " + results["shipped_settings"] + " | "
        + " | ".join(f"{summary[r]['dice_mean']:.3f} ± {summary[r]['dice_std']:.3f}" for r in ("WT", "TC", "ET"))
        + " | "
        + " | ".join(f"{summary[r]['hd95_mean']:.1f} ({summary[r]['hd95_median']:.1f})" for r in ("WT", "TC", "ET"))
        + " |",
        "| the expert labels taken to 2 mm and back (the ceiling of a 2 mm model) | " + " | ".join(
            f"{results['resolution_ceiling']['summary'][r]['dice_mean']:.3f}" for r in ("WT", "TC", "ET"))
        + " | | | |",
        "| target | " + " | ".join(f"{TARGETS[r]:.2f}" for r in ("WT", "TC", "ET")) + " | | | |",
        "| paper's iUNet-16 (260 cases, 1 mm, GPU) | " + " | ".join(f"{PAPER[r]:.3f}" for r in ("WT", "TC", "ET"))
        + " | | | |", "",
        "HD95: mean (median) in mm. Per fold (mean Dice WT / TC / ET):", "",
        "| fold | cases | steps | training time (s) | WT | TC | ET |", "|---|---|---:|---:|---:|---:|---:|",
    ]
    for fold, row in results["folds"].items():
        s = summarise({c: final[c] for c in row["cases"]})
        lines.append(f"| {fold} | {', '.join(c.replace('Brats18_', '') for c in row['cases'])} | {row['steps']} | "
                     f"{row['training_time_s']} | " + " | ".join(f"{s[r]['dice_mean']:.3f}" for r in ("WT", "TC", "ET"))
                     + " |")
    tta = results["tta"]
    lines += [
        "", "## Choices made on the folds", "",
        "**Test-time mirroring** (all 8 flips of the three axes, probabilities averaged; one fold model per case):", "",
        "| | WT | TC | ET | mean | network + I/O seconds per case (median, 1 thread) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in tta.items():
        lines.append(f"| {name.replace('_', ' ')} | " + " | ".join(f"{row['dice'][r]:.3f}" for r in ("WT", "TC", "ET"))
                     + f" | {row['mean_dice']:.3f} | {row['seconds_median']:.1f} |")
    et = results["et_threshold"]
    lines += [
        "", f"Default: **{results['shipped_settings']}** ({results['tta_reason']}).", "",
        "**Small-ET rule** (nnU-Net's BraTS post-processing: all predicted ET becomes necrotic core when its total is",
        "below a volume; out-of-fold ET Dice per threshold, mirroring on):", "",
        "| threshold (mL) | " + " | ".join(f"{t:g}" for t in et["candidates"]) + " |",
        "|---|" + "---:|" * len(et["candidates"]),
        "| ET Dice | " + " | ".join(f"{et['et_dice'][str(t)]:.3f}" for t in et["candidates"]) + " |", "",
        f"Chosen: **{et['chosen_ml']:g} mL** (the best out-of-fold ET Dice; ties: the smallest). This choice and the",
        "uncertainty threshold are the only things chosen on the folds' held-out cases, so the numbers above that",
        "use them are slightly optimistic (the table shows how much the rule moves ET Dice).", "",
    ]
    unc = results["uncertainty"]
    what = {"entropy": "the entropy (bits) of each member's probabilities (one pass per member)",
            "mirror_spread": "the spread of each member's probabilities over its mirrored passes"}[unc["kind"]]
    lines += [
        "## Per-case uncertainty", "",
        f"Score (`{unc['kind']}`): {what}, summed over the voxels of "
        + (f"the {unc['region']} channel" if unc["region"] else "the three regions")
        + ", divided by the summed mean probability (`postprocess.uncertainty_score`); the ensemble reports the mean",
        "over its members (what was calibrated here, one member per case) and, beside it, the spread between members",
        "(`member_score`, not calibrated: out-of-fold there is only one member per case). Every score the setting",
        "measured, judged alike: " + "; ".join(
            f"`{k}` {u['failures_flagged']}/{u['n_failed']} failures flagged at {u['false_alarms']} false alarms"
            for k, u in results["calibration"]["uncertainty"].items()) + ".", "",
        f"- Rank correlation with out-of-fold WT Dice: Spearman rho **{unc['spearman_wt_dice']['rho']:.2f}** "
        f"(p {unc['spearman_wt_dice']['p']:.3f}; negative: higher uncertainty, lower Dice).",
        f"- Failures (fixed before scoring: {unc['failure']}): {unc['n_failed']} of {unc['n_cases']}. With the "
        f"threshold calibrated on four folds and applied to the fifth ({FALSE_ALARM_QUANTILE:.0%} quantile of the "
        f"non-failures' scores): **{unc['failures_flagged']} of {unc['n_failed']} failures flagged, "
        f"{unc['false_alarms']} false alarms in {unc['n_not_failed']}** cases that did not fail.",
        f"- Shipped threshold (all 30 cases): **{unc['threshold']:.4f}**.", "",
        "![per case](brats_real_per_case.png)", "",
        "## Per case (out-of-fold Dice, shipped settings)", "",
        "| case | fold | WT | TC | ET | uncertainty | flagged (out-of-fold) |", "|---|---:|---:|---:|---:|---:|---|",
    ]
    for case in sorted(final, key=lambda c: final[c]["WT"]["dice"]):
        lines.append(f"| {case} | {results['fold_of'][case]} | " + " | ".join(
            f"{final[case][r]['dice']:.3f}" for r in ("WT", "TC", "ET"))
            + f" | {unc['scores'][case]:.4f} | {'yes' if unc['flagged_out_of_fold'][case] else ''} |")
    if window:
        lines += ["", "## The sliding window (chosen before any training, on the first shipped weights)", "",
                  f"The first shipped model (trained on 64³ crops of 18 cases) on the {len(window['cases'])} real "
                  "cases it never saw, through `inference.json`'s preprocessing and postprocessing; network seconds "
                  f"per case at {window['threads']} threads:", "",
                  "| setting | WT | TC | ET | worst WT | network s/case |", "|---|---:|---:|---:|---:|---:|"]
        for name, row in window["settings"].items():
            d = row["dice_mean"]
            lines.append(f"| {name} | {d['WT']:.3f} | {d['TC']:.3f} | {d['ET']:.3f} | {row['worst_wt']:.3f} | "
                         f"{row['seconds_median']:.1f} |")
        lines += [
            "", "Chosen (before any cross-validated training): **the window equals the training crop (64³) and runs on "
            "the brain's bounding box** (`CropForegroundd` before the window, inverted by `Invertd`), overlap 0.5, "
            "Gaussian blending. The whole-volume 128³ window the first model shipped with is the worst setting: the "
            "couplings' `GroupNorm(1)` normalises over the whole window, and a window of zero padding around a brain "
            "is not what a 64³ training crop of brain looked like. Overlap 0.25 loses on the same weights; constant "
            "and Gaussian blending differ by less than the case-to-case noise (paired differences within two standard "
            "errors), so nnU-Net's Gaussian stays. A window-independent normalisation (running statistics) was not "
            "retrained: with the window equal to the crop, inference sees the statistics training saw, so what it "
            "could still buy is larger windows (fewer, faster) — not worth a cross-validation's CPU time here."]
    lines += ["", "## Training", "", "![training curves](brats_real_curves.png)", "",
              "![a case](brats_real_overview.png)", "",
              f"The overview `segment --overview` writes, for the out-of-fold case with the median WT Dice "
              f"({results['overview_case']}).", ""]
    path.write_text("\n".join(lines) + "\n")


def ship(runs: list[Path], results: dict) -> None:
    """The runs' final weights as the bundle's ensemble, the choices into its plans, the scores into its metadata,
    each member's provenance beside the benchmarks."""
    write_ensemble([run / "models" / "resume" / "last.pt" for run in runs], BUNDLE / "models" / "model.pt")
    meta_path = BUNDLE / "configs" / "metadata.json"
    plans = write_plans(meta_path, results["calibration"], tta=results["shipped"] == "tta_on")
    metadata = json.loads(meta_path.read_text())
    summary = results["final"]["summary"]
    members = [{"fold": run.name, "held_out": results["folds"][run.name]["cases"], "patch_size": plans["patch_size"],
                "steps": results["folds"][run.name]["steps"],
                "training_time_s": results["folds"][run.name]["training_time_s"],
                "wall_time_s": results["folds"][run.name]["wall_time_s"],
                "stages": [{"command": st["command"], "commit": st["commit"], "dirty_tree": st["dirty"],
                            "wall_time_s": st["wall_time_s"]} for st in results["folds"][run.name]["stages"]]}
               for run in runs]
    provenance = DOCS / "brats_members.json"
    record = json.loads(provenance.read_text()) if provenance.is_file() else {}
    provenance.write_text(json.dumps({**record, "members": members}, indent=1) + "\n")
    unc = results["uncertainty"]
    metadata["performance"] = {
        "trained_on": "30 real BraTS 2018 training cases (5-fold cross-validation, "
                      "configs/splits/brats_real_folds.json) at 2 mm, each fold on one CPU thread with the other "
                      "folds running beside it",
        "out_of_fold": {
            "evaluation": "each case segmented by the fold model that did not train on it, through inference.json + "
                          f"evaluate.json ({results['shipped_settings']}) on the original 1 mm files, label map on the "
                          "input grid, MONAI DiceMetric and HausdorffDistanceMetric(percentile 95), BraTS conventions",
            "dice_mean": {r: round(summary[r]["dice_mean"], 4) for r in REGIONS},
            "hd95_mean_mm": {r: round(summary[r]["hd95_mean"], 2) for r in REGIONS},
            "uncertainty": {"kind": unc["kind"], "region": unc["region"], "failure": unc["failure"],
                            "n_failed": unc["n_failed"], "spearman_wt_dice": unc["spearman_wt_dice"],
                            "cross_validated_flags": {k: unc[k] for k in
                                                      ("failures_flagged", "false_alarms", "n_not_failed")}},
        },
        "provenance": "docs/benchmarks/brats_members.json of the monai-iunet repository: each member's held-out "
                      "cases, steps, time, and the command and commit of every training stage",
    }
    metadata["eval_metrics"] = {f"out_of_fold_{r.lower()}_dice": round(summary[r]["dice_mean"], 4) for r in REGIONS}
    meta_path.write_text(json.dumps(metadata, indent=4) + "\n")


def main() -> None:
    parser = arguments(__doc__, "iunet")
    parser.add_argument("--ship", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    runs, data = folds(args.runs.resolve()), args.data.resolve()
    labels, fold_of, results = {}, {}, {"folds": {}}
    members = {}
    for run in runs:
        member, trainer = final_weights(run)
        members[int(run.name[4:])] = member
        cases = load_decathlon_datalist(str(run / "datalist.json"), data_list_key="testing", base_dir=str(data))
        labels.update({c["case"]: c["label"] for c in cases})
        fold_of.update({c["case"]: int(run.name[4:]) for c in cases})
        log = training_log(run, trainer["epoch_length"])
        history = stages(run)
        results["folds"][run.name] = {
            "cases": [c["case"] for c in cases], "steps": trainer["iteration"],
            "training_time_s": log["training_time_s"],
            "epochs": log["epochs"], "log": log, "stages": history,
            "wall_time_s": sum(stage["wall_time_s"] for stage in history)}
    oof = {setting: out_of_fold(data, args.runs / "oof" / setting, tta=tta, members=members, jobs=args.jobs,
                                reuse=args.reuse)
           for setting, tta in SETTINGS.items()}
    results["tta"] = {}
    for setting, cases in oof.items():
        s = summarise({c: e["scores"] for c, e in cases.items()})
        results["tta"][setting] = {
            "dice": {r: s[r]["dice_mean"] for r in REGIONS},
            "mean_dice": float(np.mean([s[r]["dice_mean"] for r in REGIONS])),
            "seconds_median": float(np.median([e["seconds"] for e in cases.values()]))}
    gain = results["tta"]["tta_on"]["mean_dice"] - results["tta"]["tta_off"]["mean_dice"]
    slowdown = results["tta"]["tta_on"]["seconds_median"] / results["tta"]["tta_off"]["seconds_median"]
    shipped = results["shipped"] = "tta_on" if gain >= TTA_MIN_GAIN else "tta_off"
    results["shipped_settings"] = "mirroring on (8 passes)" if shipped == "tta_on" else "mirroring off (1 pass)"
    results["tta_reason"] = (f"mirroring: mean Dice {gain:+.3f} for {slowdown:.1f}x the seconds per case; on by "
                             f"default only from +{TTA_MIN_GAIN}")
    calibration = results["calibration"] = calibrate(oof[shipped])
    results["et_threshold"] = calibration["et_threshold"]
    chosen = calibration["et_threshold"]["chosen_ml"]
    final = score(oof[shipped], chosen) if chosen else {c: e["scores"] for c, e in oof[shipped].items()}
    results["final"] = {"cases": final, "summary": summarise(final)}
    kind = calibration["chosen_uncertainty"]
    results["uncertainty"] = {**calibration["uncertainty"][kind["kind"]], "kind": kind["kind"],
                              "region": kind["region"]}
    results["fold_of"] = fold_of
    pixdim = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["plans"]["pixdim"][0]
    items = [{"case": c, "label": labels[c]} for c in sorted(labels)]
    results["resolution_ceiling"] = resolution_ceiling(items, pixdim, args.runs / "ceiling")
    overview_case = sorted(final, key=lambda c: final[c]["WT"]["dice"])[len(final) // 2]
    results["overview_case"] = overview_case
    DOCS.mkdir(parents=True, exist_ok=True)
    fold_run = runs[fold_of[overview_case]]
    one_case = fold_run / "overview" / "datalist.json"
    one_case.parent.mkdir(exist_ok=True)
    testing = json.loads((fold_run / "datalist.json").read_text())["testing"]
    one_case.write_text(json.dumps({"testing": [c for c in testing if c["case"] == overview_case]}, indent=1))
    run_bundle(BUNDLE, [BUNDLE / "configs" / "inference.json"], log=args.runs / "overview.log", bundle_root=BUNDLE,
               dataset_dir=data, data_list_file_path=one_case, data_list_key="testing",
               ckpt_path=members[fold_of[overview_case]], num_members=1, output_dir=one_case.parent,
               write_dicom_seg=False, overview=True, et_min_volume_ml=chosen, tta=shipped == "tta_on",
               uncertainty_kind=results["uncertainty"]["kind"], uncertainty_region=results["uncertainty"]["region"],
               uncertainty_threshold=results["uncertainty"]["threshold"])
    shutil.copy(one_case.parent / f"{overview_case}_overview.png", DOCS / "brats_real_overview.png")
    (DOCS / "brats_real.json").write_text(json.dumps(results, indent=1, default=float))
    window = DOCS / "brats_window.json"
    write_markdown(results, json.loads(window.read_text()) if window.is_file() else None, DOCS / "brats_real.md")
    plot_curves({run.name: results["folds"][run.name]["log"] for run in runs}, DOCS / "brats_real_curves.png")
    plot_per_case(final, results["uncertainty"], DOCS / "brats_real_per_case.png")
    print(json.dumps({r: round(results["final"]["summary"][r]["dice_mean"], 4) for r in REGIONS}))
    if args.ship:
        ship(runs, results)
        print(f"shipped the {len(members)}-member ensemble as {BUNDLE / 'models' / 'model.pt'}")


if __name__ == "__main__":
    main()
