#!/usr/bin/env python
"""The main job on a fresh machine (``make demo``): synthetic BraTS data → train → evaluate → infer on NIfTI and DICOM
→ segment a PACS-like DICOM study with the one-command entry point → the shipped BraTS model at work.

Everything runs through the real bundle with ``python -m monai.bundle run`` on CPU, with the small preset
``configs/bundles/cpu_demo.json`` layered on the bundle's configs and the demo model's facts
(``configs/bundles/cpu_demo_plans.json``) merged over the bundle's metadata. Outputs go to ``runs/demo/``:
``models/`` (best ``model.pt`` and resumable ``resume/last.pt``), ``eval/`` (TensorBoard logs, metrics CSVs),
``pred_nifti/`` and ``pred_dicom/`` (label maps in the input space, a DICOM SEG), ``overlay.png``, and
``study/`` (a DICOM case as a PACS exports it: one flat folder, random file names, every modality on its own grid, a
localizer, diffusion and ADC series) with its outputs in ``pred_study/``; ``shipped/``: the shipped model's output on
a real BraTS case (when ``../shared/data`` is there: its volumes, uncertainty verdict and overview picture) or on
the synthetic study (which says nothing about accuracy: the phantoms are not brains).

    python -m scripts.demo [--epochs 40] [--cases 16] [--output runs/demo]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from monai_iunet.apps.brats.data.datalist import et_label_of, write_datalist  # noqa: E402
from monai_iunet.apps.brats.data.location import real_data
from monai_iunet.apps.brats.data.synthetic import write_dataset, write_pacs_study  # noqa: E402
from monai_iunet.apps.brats.labels import MODALITIES, region_labels  # noqa: E402
from monai_iunet.apps.brats.metrics import score_case  # noqa: E402
from monai_iunet.apps.brats.overview import CONTOURS, draw_planes, ras_volume  # noqa: E402
from monai_iunet.bundle import run_bundle  # noqa: E402
from scripts import BUNDLE, ROOT  # noqa: E402

PRESET = ROOT / "configs" / "bundles" / "cpu_demo.json"
PLANS = ROOT / "configs" / "bundles" / "cpu_demo_plans.json"
META = repr([str(BUNDLE / "configs" / "metadata.json"), str(PLANS)])  # the demo model's facts over the bundle's
REAL_DATA = real_data()
FOLDS = ROOT / "configs" / "splits" / "brats_real_folds.json"


def region_dice(eval_dir: Path) -> dict[str, float]:
    with open(eval_dir / "metrics.csv") as f:
        return {row[0]: float(row[1]) for row in csv.reader(f) if len(row) == 2}


def overlay(flair: Path, truth: Path, prediction: Path, output: Path, et_label: int) -> None:
    """FLAIR in three planes through the tumour centre, the ground truth's and the prediction's regions as
    contours (the overview's colours)."""
    image, spacing = ras_volume(flair)
    (gt, _), (pred, _) = ras_volume(truth), ras_volume(prediction)
    centre = np.argwhere(gt > 0).mean(0)
    fig, axes = plt.subplots(2, 3, figsize=(10, 7))
    for row, (title, label) in enumerate((("ground truth", gt), ("IUNet prediction", pred))):
        regions = {name: np.isin(label, values) for name, values in region_labels(et_label).items()}
        draw_planes(axes[row], image, [(regions[name], colour) for name, colour in CONTOURS], centre, spacing,
                    (0.0, float(np.percentile(image, 99.5))),
                    titles=tuple(f"{title}, {plane}" for plane in ("axial", "coronal", "sagittal")),
                    title_colour="black")
    fig.suptitle("FLAIR with the regions: whole tumour yellow, tumour core red, enhancing tumour cyan")
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


def segment_study(case_dir: Path, study: Path, output: Path, ckpt: Path) -> None:
    """Write the case as a PACS export and segment it with the clinician's command; print the Dice of the result
    against the case's ground truth, resampled (nearest) onto the T1ce grid the output is on."""
    from monai.transforms import LoadImage, ResampleToMatch, SaveImage

    from monai_iunet.apps.brats.metrics import score_case

    images = {m: nib.load(next(case_dir.glob(f"*_{m}.nii.gz"))) for m in MODALITIES}
    affine = images["t1"].affine
    write_pacs_study({m: np.asarray(img.dataobj, np.float32) for m, img in images.items()}, affine, study,
                     case_dir.name, seed=0)
    command = [sys.executable, "-m", "monai_iunet.apps.brats.segment", str(study), "--output", str(output),
               "--ckpt", str(ckpt), "--config", str(PRESET), "--plans", str(PLANS), "--case", case_dir.name]
    print("\n$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)
    load = LoadImage(image_only=True, ensure_channel_first=True)
    prediction = output / f"{case_dir.name}_seg.nii.gz"
    truth = ResampleToMatch(mode="nearest")(load(str(next(case_dir.glob("*_seg.nii.gz")))), load(str(prediction)))
    truth.meta["filename_or_obj"] = "truth.nii.gz"
    SaveImage(output_dir=str(output), output_postfix="on_t1ce_grid", separate_folder=False, print_log=False,
              output_dtype=np.uint8, resample=False)(truth)
    scores = score_case(prediction, output / "truth_on_t1ce_grid.nii.gz")
    print("Study Dice on the T1ce grid: " + ", ".join(f"{k} {v['dice']:.3f}" for k, v in scores.items()))


def shipped_model_at_work(study: Path, out: Path) -> None:
    """The shipped ensemble (``models/model.pt``) on a real BraTS case when the real data is here: its label map,
    tumour volumes, uncertainty verdict and overview picture, and its Dice against the expert label (the case was a
    training case of four of the five members: the out-of-fold numbers of the model card are the evidence of
    accuracy, printed first). Otherwise on the synthetic study, said plainly to be no evidence of accuracy."""
    from monai_iunet.apps.brats.segment import print_report

    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    performance = metadata["performance"]
    print(f"6/6 the shipped model ({BUNDLE / 'models' / 'model.pt'}): {performance['trained_on']}", flush=True)
    print("    out-of-fold Dice (each case scored by the member that never saw it): " + ", ".join(
        f"{r} {performance['out_of_fold']['dice_mean'][r]:.3f}" for r in ("WT", "TC", "ET")), flush=True)
    case = json.loads(FOLDS.read_text())["folds"][0][0]
    case_dir = next(iter(REAL_DATA.glob(f"*/{case}")), None)
    if case_dir is None:
        command = [sys.executable, "-m", "monai_iunet.apps.brats.segment", str(study), "--output", str(out),
                   "--case", "synthetic", "--skull-strip", "false"]  # a phantom: no anatomy for brain extraction
        print("\n$ " + " ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)
        print("    The synthetic phantom shows the pipeline end to end (DICOM in, NIfTI and DICOM SEG out); it says "
              "nothing about accuracy on real brains (../shared/data is not here).")
        return
    images = [str(next(case_dir.glob(f"*_{m}.nii.gz"))) for m in MODALITIES]
    datalist = out / "datalist.json"
    out.mkdir(parents=True, exist_ok=True)
    datalist.write_text(json.dumps({"testing": [{"case": case, "image": images}]}))
    run_bundle(BUNDLE, ["configs/inference.json"], dataset_dir=out, data_list_file_path=datalist, output_dir=out,
               overview=True)
    print_report(json.loads((out / "inference_report.json").read_text()))
    scores = score_case(out / f"{case}_seg.nii.gz", next(case_dir.glob("*_seg.nii.gz")))
    print(f"    real case {case} (a training case of 4 of the 5 members): " + ", ".join(
        f"{r} Dice {scores[r]['dice']:.3f}" for r in ("WT", "TC", "ET")) + f" -> {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ROOT / "runs" / "demo"))
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    out = Path(args.output).resolve()
    data = out / "data"
    start = time.time()

    print(f"1/6 writing {args.cases} synthetic BraTS-like cases (64³, case 1 also as DICOM) to {data}", flush=True)
    write_dataset(data, cases=args.cases, dicom_cases=1, seed=0)
    datalist = write_datalist(data, data / "datalist.json")
    # One NIfTI case and one DICOM case for the inference step.
    demo_list = {"testing": datalist["validation"][:1], "testing_dicom": datalist["testing_dicom"][:1]}
    (data / "demo_datalist.json").write_text(json.dumps(demo_list, indent=2))

    common = dict(dataset_dir=data, ckpt_dir=out / "models", output_dir=out / "eval", meta_file=META)
    train = ["configs/train.json", str(PRESET)]
    print("2/6 training (CPU: the bundle's train.json, plain autograd on CPU)", flush=True)
    run_bundle(BUNDLE, train, epochs=args.epochs, **common)
    print("3/6 evaluating the best checkpoint as users run it (inference.json + evaluate.json)", flush=True)
    run_bundle(BUNDLE, ["configs/inference.json", "configs/evaluate.json", str(PRESET)], dataset_dir=data,
               ckpt_path=out / "models" / "model.pt", output_dir=out / "eval", meta_file=META)
    dice = region_dice(out / "eval")

    print("4/6 inference on one NIfTI case and one DICOM case", flush=True)
    inference = ["configs/inference.json", str(PRESET)]
    for key, folder in (("testing", "pred_nifti"), ("testing_dicom", "pred_dicom")):
        run_bundle(BUNDLE, inference, dataset_dir=data, data_list_file_path=data / "demo_datalist.json",
                   data_list_key=key, ckpt_path=out / "models" / "model.pt", output_dir=out / folder, meta_file=META)

    case = demo_list["testing"][0]
    name = Path(case["label"]).parent.name
    png = out / "overlay.png"
    overlay(data / case["image"][3], data / case["label"], out / "pred_nifti" / f"{name}_seg.nii.gz", png,
            et_label_of(data / "datalist.json"))

    study_case = data / datalist["testing_dicom"][0]["image"][0]
    study_case = Path(str(study_case)).parents[1]  # <case>/dicom/t1 -> <case>
    print(f"5/6 segmenting a PACS-like study made from {study_case.name} with monai-iunet-segment", flush=True)
    segment_study(study_case, out / "study", out / "pred_study", out / "models" / "model.pt")
    shipped_model_at_work(out / "study", out / "shipped")

    print(f"\nDone in {(time.time() - start) / 60:.1f} min.")
    print("Synthetic validation Dice of the demo model (best checkpoint, phantoms only): " + ", ".join(
        f"{region} {dice[f'{region.lower()}_dice']:.3f}" for region in ("TC", "WT", "ET")
    ) + f"; mean {dice['mean_dice']:.3f}")
    for path in sorted((out / "pred_nifti").glob("*_seg.*")) + sorted((out / "pred_dicom").glob("*_seg.*")):
        print(f"  prediction: {path}")
    print(f"  PACS-like study: {out / 'study'} -> {out / 'pred_study'}")
    print(f"  shipped model:   {out / 'shipped'}")
    print(f"  overlay:    {png}\n  TensorBoard: tensorboard --logdir {out / 'eval'}")


if __name__ == "__main__":
    main()
