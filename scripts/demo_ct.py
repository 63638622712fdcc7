#!/usr/bin/env python
"""``make demo-ct``: the CT post-processing bundle on a fresh machine — foam phantoms and their undersampled, noisy
FBP reconstructions → a short training of the bundle's iUNet (identity-initialised) → evaluation on held-out
volumes against FBP → a PNG of slices (ground truth, FBP, the demo model, the bundle's shipped model).

    python -m scripts.demo_ct [--epochs 4] [--output runs/demo_ct]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_iunet.apps.ct.simulation import write_ct_dataset
from monai_iunet.bundle import run_bundle
from scripts import CT_BUNDLE
from scripts.ct_experiment import predict, slices_png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1] / "runs" / "demo_ct")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    out = args.output.resolve()
    data = out / "data"
    start = time.time()
    print("1/4 foam phantoms (32³) and their FBP reconstructions (32 angles, Poisson noise)", flush=True)
    write_ct_dataset(data, train=16, val=2, test=4, size=32, seed=1)
    common = dict(dataset_dir=data, bundle_root=out, ckpt_dir=out / "models", output_dir=out / "eval",
                  num_workers=0)
    print(f"2/4 training the bundle's iUNet for {args.epochs} epochs (CPU, memory-efficient)", flush=True)
    run_bundle(CT_BUNDLE, ["configs/train.json"], epochs=args.epochs, val_interval=max(1, args.epochs // 2), **common)
    print("3/4 evaluating on the held-out volumes", flush=True)
    run_bundle(CT_BUNDLE, ["configs/train.json", "configs/evaluate.json"], **common)
    with open(out / "eval" / "metrics.csv") as f:
        metrics = {row[0]: float(row[1]) for row in csv.reader(f) if len(row) == 2}
    print("4/4 slices", flush=True)
    case = json.loads((data / "datalist.json").read_text())["testing"][0]
    image = np.asarray(nib.load(data / case["image"]).dataobj, np.float32)
    truth = np.asarray(nib.load(data / case["label"]).dataobj, np.float32)
    network_def = str(CT_BUNDLE / "configs" / "train.json")  # its network_def, parsed as monai.bundle run parses it
    panels = [("FBP", image), (f"demo iUNet ({args.epochs} epochs)", predict(network_def, out / "models" / "model.pt",
                                                                           image))]
    if (CT_BUNDLE / "models" / "model.pt").is_file():
        panels.append(("shipped iUNet", predict(network_def, CT_BUNDLE / "models" / "model.pt", image)))
    png = out / "slices.png"
    slices_png(truth, panels, png)
    print(f"\nDone in {(time.time() - start) / 60:.1f} min. Test volumes (mean): "
          f"FBP PSNR {metrics['fbp_psnr']:.2f} dB, SSIM {metrics['fbp_ssim']:.3f}; "
          f"iUNet PSNR {metrics['val_psnr']:.2f} dB, SSIM {metrics['val_ssim']:.3f}")
    print(f"  slices: {png}\n  TensorBoard: tensorboard --logdir {out / 'eval'}")


if __name__ == "__main__":
    main()
