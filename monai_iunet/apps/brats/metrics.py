"""Score BraTS segmentations as the BraTS challenge does: Dice and HD95 per region (TC, WT, ET) with MONAI's metrics,
on each case's own grid, against its expert label.

BraTS conventions: a region empty in both prediction and truth scores Dice 1 and HD95 0; empty in only one of them,
Dice 0 and HD95 373.13 mm (the diagonal of the 240×240×155 mm BraTS volume, as the BraTS toolkit reports it).

    python -m monai_iunet.apps.brats.metrics --datalist D.json --key testing --dataset-dir DATA \\
        --predictions OUT/inference_report.json --output scores.json

``--predictions`` is the ``inference_report.json`` that the bundle's ``inference.json`` wrote: the prediction of
each case is taken from the path the report says was written.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from monai.data import load_decathlon_datalist
from monai.metrics import DiceMetric, HausdorffDistanceMetric
from monai.transforms import ConvertToMultiChannelBasedOnBratsClasses, LoadImage

from .cases import case_name, check_brats_labels
from .labels import REGIONS

__all__ = ["EMPTY_HD95", "score_case", "score_label_maps", "score_cases", "summarise", "BratsEvaluation"]

EMPTY_HD95 = 373.12866


def _regions(label: torch.Tensor, et_label: int) -> torch.Tensor:
    """One label map (1, X, Y, Z) → a batch of one with the TC, WT, ET channels (1, 3, X, Y, Z)."""
    return ConvertToMultiChannelBasedOnBratsClasses(et_label=et_label)(label[0]).unsqueeze(0).float()


def score_case(prediction: str | Path, label: str | Path, et_label: int = 4) -> dict[str, dict[str, float]]:
    """``{region: {"dice": d, "hd95": mm}}`` of a predicted label map file against the expert label file (same
    grid)."""
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    pred_image, true_image = loader(str(prediction)), loader(str(label))
    for image, file in ((pred_image, prediction), (true_image, label)):
        check_brats_labels(image, et_label, Path(str(label)).parent.name, str(file))
    return score_label_maps(pred_image, true_image, et_label, names=(str(prediction), str(label)))


def score_label_maps(prediction, label, et_label: int = 4, names: tuple[str, str] = ("prediction", "label")
                     ) -> dict[str, dict[str, float]]:
    """``score_case`` of two label maps in memory (``MetaTensor`` (1, X, Y, Z) with their affines), e.g. a
    prediction before it is written. ``names`` name them in the error raised when their grids differ."""
    if prediction.shape != label.shape or not np.allclose(prediction.affine, label.affine, atol=1e-3):
        raise ValueError(f"{names[0]} {tuple(prediction.shape[1:])} is not on the grid of {names[1]} "
                         f"{tuple(label.shape[1:])}.")
    spacing = [float(s) for s in np.linalg.norm(np.asarray(label.affine)[:3, :3], axis=0)]
    pred, true = _regions(prediction.as_tensor(), et_label), _regions(label.as_tensor(), et_label)
    dice = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(pred, true)[0]
    hd95_metric = HausdorffDistanceMetric(include_background=True, percentile=95, reduction="none")
    hd95 = hd95_metric(pred, true, spacing=spacing)[0]
    scores = {}
    for i, region in enumerate(REGIONS):
        pred_empty, true_empty = not bool(pred[0, i].any()), not bool(true[0, i].any())
        distance = 0.0 if pred_empty and true_empty else EMPTY_HD95 if pred_empty or true_empty else float(hd95[i])
        scores[region] = {"dice": float(dice[i]), "hd95": distance}
    return scores


def summarise(per_case: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Mean, median and standard deviation of each region's Dice and HD95 over the cases."""
    summary: dict[str, dict[str, float]] = {}
    for region in REGIONS:
        for metric in ("dice", "hd95"):
            values = np.array([case[region][metric] for case in per_case.values()], dtype=float)
            summary.setdefault(region, {}).update({
                f"{metric}_mean": float(values.mean()), f"{metric}_median": float(np.median(values)),
                f"{metric}_std": float(values.std()),
            })
    return summary


def score_cases(datalist: list[dict], report: dict, et_label: int = 4) -> dict:
    """Score every labelled datalist item whose prediction ``report`` (an ``inference_report.json``) lists as
    written; a case without a written prediction is an error (a missing case must not raise the mean)."""
    per_case = {}
    for item in datalist:
        case = case_name(item)
        entry = report["cases"].get(case)
        nifti = (entry or {}).get("outputs", {}).get("nifti", {})
        if nifti.get("status") != "written":
            raise ValueError(
                f"case {case}: no prediction written in the inference report ({entry and entry.get('error')}).")
        per_case[case] = score_case(nifti["path"], item["label"], et_label)
    return {"cases": per_case, "summary": summarise(per_case), "n": len(per_case),
            "conventions": {"both_empty": "Dice 1, HD95 0", "one_empty": f"Dice 0, HD95 {EMPTY_HD95} mm"}}


class BratsEvaluation:
    """The bundle's ``evaluate.json``: run the inference exactly as users run it (``inference.json``'s runner:
    ensemble, window, mirroring switch, small-ET rule, the label map on each case's own grid) on labelled cases, then
    score the written label maps against the expert labels (``score_cases``: MONAI's Dice and HD95 per region,
    BraTS conventions). Writes ``metrics.json`` (per case and summary), ``metrics.csv`` (the means, one
    ``name,value`` per line) and ``metrics_per_case.csv`` into ``output_dir``; a case whose inference failed is
    listed with its error and makes the run fail after everything else is written.

    Args:
        runner: ``BatchSegmentation`` (inference.json's ``runner``).
        datalist: the labelled items the runner segments (each with ``"label"``).
        et_label: the label of enhancing tumour (4 or 3).
        output_dir: where the metrics go (the runner's output folder).
    """

    def __init__(self, runner, datalist: list[dict], et_label: int, output_dir: str | Path) -> None:
        unlabelled = [case_name(item) for item in datalist if "label" not in item]
        if unlabelled:
            raise ValueError(f"evaluation needs labelled cases; no 'label' for {unlabelled}: evaluate a datalist key "
                             "whose items have labels (data_list_key, e.g. validation).")
        self.runner, self.datalist, self.et_label, self.output_dir = runner, datalist, et_label, Path(output_dir)

    def run(self) -> dict:
        failure = None
        try:
            report = self.runner.run()
        except RuntimeError as error:  # some cases failed: score the others, then say so
            failure = error
            report = json.loads((self.output_dir / "inference_report.json").read_text())
        written = [item for item in self.datalist
                   if report["cases"].get(case_name(item), {}).get("outputs", {}).get("nifti", {}).get("status")
                   == "written"]
        scores = score_cases(written, report, self.et_label) if written else {"cases": {}, "summary": {}, "n": 0}
        scores["failed"] = {case: entry.get("error") for case, entry in report["cases"].items()
                            if case not in scores["cases"]}
        self.output_dir.mkdir(parents=True, exist_ok=True)
        (self.output_dir / "metrics.json").write_text(json.dumps(scores, indent=2))
        means = {"n_cases": scores["n"]}
        if scores["summary"]:
            means["mean_dice"] = float(np.mean([scores["summary"][r]["dice_mean"] for r in REGIONS]))
            for region in REGIONS:
                means[f"{region.lower()}_dice"] = scores["summary"][region]["dice_mean"]
                means[f"{region.lower()}_hd95"] = scores["summary"][region]["hd95_mean"]
        (self.output_dir / "metrics.csv").write_text("".join(f"{k},{v}\n" for k, v in means.items()))
        rows = ["case,region,dice,hd95"] + [f"{case},{region},{v['dice']},{v['hd95']}"
                                            for case, regions in scores["cases"].items()
                                            for region, v in regions.items()]
        (self.output_dir / "metrics_per_case.csv").write_text("\n".join(rows) + "\n")
        for region, values in scores["summary"].items():
            print(f"{region}: Dice {values['dice_mean']:.3f} ± {values['dice_std']:.3f}, HD95 "
                  f"{values['hd95_mean']:.1f} mm (median {values['hd95_median']:.1f}), n={scores['n']}")
        if failure is not None:
            raise RuntimeError(f"{failure}; the other cases are scored in {self.output_dir / 'metrics.json'}")
        return scores


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m monai_iunet.apps.brats.metrics", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", required=True)
    parser.add_argument("--key", default="testing")
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--predictions", required=True, help="inference_report.json of the run to score")
    parser.add_argument("--output", required=True)
    parser.add_argument("--et-label", type=int, default=4)
    args = parser.parse_args(argv)
    datalist = load_decathlon_datalist(args.datalist, data_list_key=args.key, base_dir=args.dataset_dir)
    scores = score_cases(datalist, json.loads(Path(args.predictions).read_text()), args.et_label)
    Path(args.output).write_text(json.dumps(scores, indent=2))
    for region, values in scores["summary"].items():
        print(f"{region}: Dice {values['dice_mean']:.3f} ± {values['dice_std']:.3f}, "
              f"HD95 {values['hd95_mean']:.1f} mm (median {values['hd95_median']:.1f}), n={scores['n']}")
    if any(math.isnan(v) for case in scores["cases"].values() for r in case.values() for v in r.values()):
        print("warning: NaN scores present")


if __name__ == "__main__":
    main()
