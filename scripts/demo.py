#!/usr/bin/env python
"""The main job on a fresh machine (``make demo``): synthetic BraTS data → train → evaluate → infer on NIfTI and DICOM.

Everything runs through the real bundle with ``python -m monai.bundle run`` on CPU, with the small preset
``configs/bundles/cpu_demo.json`` layered on the bundle's configs. Outputs go to ``runs/demo/``:
``models/`` (best ``model.pt`` and resumable ``resume/last.pt``), ``eval/`` (TensorBoard logs, metrics CSVs),
``pred_nifti/`` and ``pred_dicom/`` (label maps in the input space, a DICOM SEG), and ``overlay.png``.

    python scripts/demo.py [--epochs 40] [--cases 16] [--output runs/demo]
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

from monai_iunet.data.datalist import write_datalist  # noqa: E402
from monai_iunet.data.synthetic import write_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "brats_iunet_segmentation"
PRESET = ROOT / "configs" / "bundles" / "cpu_demo.json"


def bundle_run(configs: list[str], **overrides) -> None:
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr(configs)]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    print("\n$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=BUNDLE, check=True)


def region_dice(eval_dir: Path) -> dict[str, float]:
    with open(eval_dir / "metrics.csv") as f:
        return {row[0]: float(row[1]) for row in csv.reader(f) if len(row) == 2}


def overlay(flair: Path, truth: Path, prediction: Path, output: Path) -> None:
    """FLAIR slices through the tumour centre, ground truth and prediction as coloured overlays."""
    image, gt, pred = (np.asarray(nib.load(p).dataobj) for p in (flair, truth, prediction))
    centre = [int(round(c)) for c in np.argwhere(gt > 0).mean(0)]
    colours = np.array([[0, 0, 0, 0], [1, 0.2, 0.2, 0.6], [0.2, 1, 0.2, 0.45], [1, 1, 0, 0.6], [1, 1, 0, 0.6]])
    fig, axes = plt.subplots(2, 3, figsize=(10, 7))
    for row, (title, label) in enumerate((("ground truth", gt), ("IUNet prediction", pred))):
        for col, axis in enumerate((2, 1, 0)):
            index = [slice(None)] * 3
            index[axis] = centre[axis]
            ax = axes[row, col]
            ax.imshow(np.rot90(image[tuple(index)]), cmap="gray")
            ax.imshow(np.rot90(colours[np.clip(label[tuple(index)], 0, 4)]))
            ax.set_title(f"{title}, {('axial', 'coronal', 'sagittal')[col]}")
            ax.axis("off")
    fig.suptitle("FLAIR with labels: red necrotic core, green edema, yellow enhancing tumour")
    fig.tight_layout()
    fig.savefig(output, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(ROOT / "runs" / "demo"))
    parser.add_argument("--cases", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=40)
    args = parser.parse_args()
    out = Path(args.output).resolve()
    data = out / "data"
    start = time.time()

    print(f"1/4 writing {args.cases} synthetic BraTS-like cases (64³, case 1 also as DICOM) to {data}", flush=True)
    write_dataset(data, cases=args.cases, dicom_cases=1, seed=0)
    datalist = write_datalist(data, data / "datalist.json")
    # One NIfTI case and one DICOM case for the inference step.
    demo_list = {"testing": datalist["validation"][:1], "testing_dicom": datalist["testing_dicom"][:1]}
    (data / "demo_datalist.json").write_text(json.dumps(demo_list, indent=2))

    common = dict(dataset_dir=data, ckpt_dir=out / "models", output_dir=out / "eval")
    train = ["configs/train.json", str(PRESET)]
    print("2/4 training (CPU, memory-efficient IUNet)", flush=True)
    bundle_run(train, epochs=args.epochs, **common)
    print("3/4 evaluating the best checkpoint", flush=True)
    bundle_run(["configs/train.json", "configs/evaluate.json", str(PRESET)], **common)
    dice = region_dice(out / "eval")

    print("4/4 inference on one NIfTI case and one DICOM case", flush=True)
    inference = ["configs/inference.json", str(PRESET)]
    for key, folder in (("testing", "pred_nifti"), ("testing_dicom", "pred_dicom")):
        bundle_run(inference, dataset_dir=data, data_list_file_path=data / "demo_datalist.json",
                   data_list_key=key, ckpt_path=out / "models" / "model.pt", output_dir=out / folder,
                   roi_size="[64,64,64]")

    case = demo_list["testing"][0]
    name = Path(case["label"]).parent.name
    png = out / "overlay.png"
    overlay(data / case["image"][3], data / case["label"], out / "pred_nifti" / f"{name}_seg.nii.gz", png)

    print(f"\nDone in {(time.time() - start) / 60:.1f} min.")
    print("Validation Dice (best checkpoint): " + ", ".join(
        f"{region} {dice[f'val_{region.lower()}_dice']:.3f}" for region in ("TC", "WT", "ET")
    ) + f"; mean {dice['val_mean_dice']:.3f}")
    for path in sorted((out / "pred_nifti").glob("*_seg.*")) + sorted((out / "pred_dicom").glob("*_seg.*")):
        print(f"  prediction: {path}")
    print(f"  overlay:    {png}\n  TensorBoard: tensorboard --logdir {out / 'eval'}")


if __name__ == "__main__":
    main()
