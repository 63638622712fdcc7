"""What the BraTS ensemble's plans take from its cross-validation folds, measured out-of-fold, and the ship step.

Every case is segmented by the member that did not train on it (member ``k`` of ``models/model.pt`` is the model of
fold ``k`` of the split), through the bundle's own ``inference.json`` + ``evaluate.json`` (a fresh ``monai.bundle
run`` per fold and setting: the path users run, the label map on each case's grid, MONAI's Dice and HD95). From those
out-of-fold results:

- the small-ET threshold (``plans#et_min_volume_ml``): the volume below which predicted ET becomes necrotic core that
  maximises the out-of-fold ET Dice (ties: the smallest);
- the uncertainty score (``plans#uncertainty``): for each kind the inference measured (``CaseUncertaintyd``: the
  members' entropy, one pass; the mirrored passes' spread), its threshold — the ``FALSE_ALARM_QUANTILE`` quantile
  of the scores of the cases that did not fail (WT Dice >= ``FAILURE_WT_DICE``) — and how it flags out-of-fold
  (threshold from four folds, applied to the fifth). The kind that flags the most failures, then the fewest false
  alarms, is chosen among those the shipped inference setting measures.

    python -m monai_iunet.apps.brats.calibration --data DATA --output runs/calibration [--tta off on] [--write-plans]
    python -m monai_iunet.apps.brats.calibration --ensemble fold0/last.pt ... fold4/last.pt   # the ship step

``--write-plans`` puts the chosen values, the mirroring switch and the out-of-fold scores into the bundle's
``metadata.json``; ``--ensemble`` writes the members' final weights as the bundle's ``models/model.pt`` (one
``MirrorEnsemble`` state dict at half precision, member ``k`` from the ``k``-th file).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from monai.transforms import LoadImage

from ...bundle import bundle_path, run_bundle
from ...networks import ensemble_state_dict
from .data.datalist import write_datalist
from .data.location import real_data
from .labels import REGIONS
from .postprocess import CaseUncertaintyd, SuppressSmallEnhancingd

__all__ = ["FAILURE_WT_DICE", "FALSE_ALARM_QUANTILE", "ET_THRESHOLDS_ML", "out_of_fold", "et_dice",
           "choose_et_threshold", "uncertainty_threshold", "evaluate_uncertainty", "calibrate", "write_plans",
           "write_ensemble"]

ET_THRESHOLDS_ML = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0)  # nnU-Net: 750 voxels at 1 mm = 0.75 mL
FAILURE_WT_DICE = 0.7  # a case "misses most of the tumour" below this (fixed before any fold was scored)
FALSE_ALARM_QUANTILE = 0.9
SPLIT = Path(__file__).resolve().parents[3] / "configs" / "splits" / "brats_real_folds.json"


def out_of_fold(data: str | Path, output: str | Path, split: str | Path = SPLIT, tta: bool = False,
                bundle: str | Path | None = None, members: Mapping[int, str | Path] | None = None,
                folds: Sequence[int] | None = None, jobs: int = 2, reuse: bool = False, **overrides) -> dict[str, dict]:
    """Segment and score every case of the split's ``folds`` (default: all) with the member that did not train on it
    (``members[k]``: a checkpoint of fold ``k``'s model; default: member ``k`` of the bundle's ``models/model.pt``),
    small-ET rule off, mirroring ``tta``; ``overrides``: further config ids. One fresh ``monai.bundle run`` of
    ``inference.json`` +
    ``evaluate.json`` per fold (``jobs`` at once, one thread each), outputs under ``output/fold<k>`` (``reuse``: a
    fold already scored there is read, not run again).

    Returns ``{case: {"fold", "scores": {region: {"dice", "hd95"}}, "uncertainty", "seconds", "prediction",
    "label"}}``."""
    bundle = Path(bundle) if bundle else bundle_path()
    output = Path(output).resolve()
    folds = list(range(len(json.loads(Path(split).read_text())["folds"])) if folds is None else folds)

    def fold(k: int) -> dict[str, dict]:
        out = output / f"fold{k}"
        done = reuse and (out / "metrics.json").is_file()
        if out.exists() and not done:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        datalist = write_datalist(data, out / "datalist.json", split=split, fold=k)
        checkpoint = {"ckpt_path": members[k], "num_members": 1} if members else {"ckpt_member": k}
        if not done:
            run_bundle(bundle, ["configs/inference.json", "configs/evaluate.json"], log=out / "run.log",
                       env={"OMP_NUM_THREADS": "1"}, dataset_dir=Path(data).resolve(),
                       data_list_file_path=out / "datalist.json", data_list_key="testing", output_dir=out, tta=tta,
                       et_min_volume_ml=0, write_dicom_seg=False, write_dicom_sr=False, write_dicom_summary=False,
                       **checkpoint, **overrides)
        report = json.loads((out / "inference_report.json").read_text())
        metrics = json.loads((out / "metrics.json").read_text())["cases"]
        return {item["case"]: {"fold": k, "scores": metrics[item["case"]],
                               "uncertainty": report["cases"][item["case"]].get("uncertainty", {}),
                               "seconds": report["cases"][item["case"]].get("seconds"),
                               "prediction": report["cases"][item["case"]]["outputs"]["nifti"]["path"],
                               "label": str(Path(data).resolve() / item["label"])} for item in datalist["testing"]}

    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(fold, folds))
    return {case: entry for result in results for case, entry in result.items()}


def et_dice(maps: dict[str, tuple], et_min_volume_ml: float, et_label: int = 4) -> float:
    """Mean ET Dice of ``{case: (prediction, label)}`` label maps after the small-ET rule (both empty: 1)."""
    rule = SuppressSmallEnhancingd("pred", et_label=et_label, min_volume_ml=et_min_volume_ml)
    values = []
    for pred, truth in maps.values():
        a, b = rule({"pred": pred})["pred"] == et_label, truth == et_label
        total = int(a.sum()) + int(b.sum())
        values.append(1.0 if total == 0 else 2.0 * int((a & b).sum()) / total)
    return float(np.mean(values))


def choose_et_threshold(cases: dict[str, dict], candidates=ET_THRESHOLDS_ML) -> dict:
    """The small-ET threshold with the best out-of-fold ET Dice over ``candidates`` (ties: the smallest), from the
    written label maps of ``out_of_fold``."""
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    maps = {case: (loader(e["prediction"]), loader(e["label"])) for case, e in cases.items()}
    scan = {str(t): et_dice(maps, t) for t in candidates}
    chosen = max(candidates, key=lambda t: (round(scan[str(t)], 6), -t))
    return {"candidates": list(candidates), "et_dice": scan, "chosen_ml": chosen}


def uncertainty_threshold(scores: dict[str, float], failed: dict[str, bool]) -> float:
    """The ``FALSE_ALARM_QUANTILE`` quantile of the scores of the cases that did not fail."""
    fine = [s for c, s in scores.items() if not failed[c]]
    return float(np.quantile(fine, FALSE_ALARM_QUANTILE)) if fine else float("inf")  # nothing to calibrate on


def evaluate_uncertainty(scores: dict[str, float], wt_dice: dict[str, float], fold_of: dict[str, int]) -> dict:
    """How a per-case score flags failures out-of-fold: the threshold from the other folds applied to each fold;
    its rank correlation with WT Dice; the threshold from all cases (the shipped one)."""
    from scipy.stats import spearmanr

    failed = {c: wt_dice[c] < FAILURE_WT_DICE for c in scores}
    flagged = {}
    for k in sorted(set(fold_of[c] for c in scores)):
        others = {c: s for c, s in scores.items() if fold_of[c] != k}
        threshold = uncertainty_threshold(others, failed)
        flagged.update({c: scores[c] > threshold for c in scores if fold_of[c] == k})
    rho = spearmanr([scores[c] for c in scores], [wt_dice[c] for c in scores])
    n_failed = sum(failed.values())
    return {"failure": f"WT Dice < {FAILURE_WT_DICE}", "n_cases": len(scores), "n_failed": n_failed,
            "failures_flagged": sum(flagged[c] for c in scores if failed[c]),
            "false_alarms": sum(flagged[c] for c in scores if not failed[c]), "n_not_failed": len(scores) - n_failed,
            "spearman_wt_dice": {"rho": float(rho.statistic), "p": float(rho.pvalue)},
            "threshold": round(uncertainty_threshold(scores, failed), 5), "scores": scores, "failed": failed,
            "flagged_out_of_fold": flagged}


def calibrate(cases: dict[str, dict]) -> dict:
    """The plans' calibrated values from the out-of-fold results of one inference setting (``out_of_fold``)."""
    fold_of = {c: e["fold"] for c, e in cases.items()}
    wt = {c: e["scores"]["WT"]["dice"] for c, e in cases.items()}
    kinds = {}
    for kind in CaseUncertaintyd.KINDS:
        field = f"{kind.split('_')[0]}_score"
        scores = {c: e["uncertainty"].get(field) for c, e in cases.items()}
        if all(s is not None for s in scores.values()):
            kinds[kind] = evaluate_uncertainty(scores, wt, fold_of)
    if not kinds:
        raise ValueError("the out-of-fold runs measured no uncertainty score (inference.json's uncertainty off?).")
    chosen = max(kinds, key=lambda k: (kinds[k]["failures_flagged"], -kinds[k]["false_alarms"]))
    (region,) = {e["uncertainty"].get("region") for e in cases.values()}  # the region inference scored over
    return {"et_threshold": choose_et_threshold(cases), "uncertainty": kinds,
            "chosen_uncertainty": {"kind": chosen, "region": region, "threshold": kinds[chosen]["threshold"]}}


def write_plans(metadata_path: str | Path, calibration: dict, tta: bool) -> dict:
    """Put the calibrated values and the mirroring switch they were measured with into ``metadata.json``'s plans."""
    metadata_path = Path(metadata_path)
    metadata = json.loads(metadata_path.read_text())
    metadata["plans"]["et_min_volume_ml"] = calibration["et_threshold"]["chosen_ml"]
    metadata["plans"]["uncertainty"] = dict(calibration["chosen_uncertainty"])
    metadata["plans"]["tta"] = bool(tta)
    metadata_path.write_text(json.dumps(metadata, indent=4) + "\n")
    return metadata["plans"]


def write_ensemble(members: list[str | Path], output: str | Path) -> Path:
    """The members' final weights (member ``k`` from ``members[k]``: a network state dict or a training checkpoint)
    as one ``MirrorEnsemble`` state dict at half precision (half the size; loading casts back)."""
    torch.save(ensemble_state_dict(members, torch.float16), output)
    return Path(output)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m monai_iunet.apps.brats.calibration", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=real_data(), help="the real cases (default: %(default)s)")
    parser.add_argument("--split", type=Path, default=SPLIT)
    parser.add_argument("--bundle", type=Path, default=None, help="default: the shipped BraTS bundle")
    parser.add_argument("--output", type=Path, default=Path("runs") / "calibration")
    parser.add_argument("--tta", nargs="+", choices=("off", "on"), default=["off"],
                        help="mirroring settings to measure; the first is the one calibrated for shipping")
    parser.add_argument("--jobs", type=int, default=2, help="folds run at once (one thread each)")
    parser.add_argument("--reuse", action="store_true", help="read the folds already scored under --output")
    parser.add_argument("--write-plans", action="store_true", help="put the chosen values into metadata.json")
    parser.add_argument("--ensemble", nargs="+", type=Path, metavar="CHECKPOINT",
                        help="instead: write these fold checkpoints (fold order) as the bundle's models/model.pt")
    args = parser.parse_args(argv)
    bundle = args.bundle or bundle_path()
    if args.ensemble:
        print(f"wrote {write_ensemble(args.ensemble, bundle / 'models' / 'model.pt')}")
        return
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = {}
    for setting in args.tta:
        cases = out_of_fold(args.data, args.output / f"tta_{setting}", args.split, tta=setting == "on",
                            bundle=bundle, jobs=args.jobs, reuse=args.reuse)
        dice = {r: float(np.mean([e["scores"][r]["dice"] for e in cases.values()])) for r in REGIONS}
        results[f"tta_{setting}"] = {"cases": cases, "dice_mean": dice, **calibrate(cases),
                                     "seconds_median": float(np.median([e["seconds"] for e in cases.values()]))}
        print(f"tta {setting}: out-of-fold Dice " + ", ".join(f"{r} {v:.4f}" for r, v in dice.items()) + "; "
              + "; ".join(f"{kind}: {u['failures_flagged']}/{u['n_failed']} failures flagged, {u['false_alarms']} "
                          f"false alarms in {u['n_not_failed']}" for kind, u in results[f"tta_{setting}"]
                          ["uncertainty"].items()))
    (args.output / "calibration.json").write_text(json.dumps(results, indent=1, default=float))
    print(f"wrote {args.output / 'calibration.json'}")
    if args.write_plans:
        shipped = results[f"tta_{args.tta[0]}"]
        plans = write_plans(bundle / "configs" / "metadata.json", shipped, tta=args.tta[0] == "on")
        print("plans: " + json.dumps({k: plans[k] for k in ("tta", "et_min_volume_ml", "uncertainty")}))


if __name__ == "__main__":
    main()
