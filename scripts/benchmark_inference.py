#!/usr/bin/env python
"""Time and peak memory of the BraTS bundle's ``inference.json`` on one case, fp32 vs ``amp: true`` (bf16 autocast on
CPU), each in a fresh process, alternating, and how much the two outputs differ.

    python scripts/benchmark_inference.py CASE_DIR [--repeats 2] [--output runs/inference_benchmark]

CASE_DIR holds ``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair`` NIfTI files (e.g. a BraTS case). Without trained BraTS
weights (none can be had here) the network has seeded random weights: time and memory do not depend on the weights,
and the output comparison uses the sigmoid probabilities as well as the label maps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "brats_iunet_segmentation"
PEAK_RSS_WRAPPER = (
    "import resource, runpy, sys; sys.argv = ['monai.bundle'] + sys.argv[1:]\n"
    "try:\n    runpy.run_module('monai.bundle', run_name='__main__')\nexcept SystemExit as e:\n"
    "    if e.code: raise\n"
    "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def seeded_weights(path: Path) -> None:
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)


def run_case(case_dir: Path, out: Path, model: Path, amp: bool) -> dict:
    images = [str(next(case_dir.glob(f"*_{m}.nii*"))) for m in ("t1", "t1ce", "t2", "flair")]
    datalist = out / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{"image": images, "case": case_dir.name}]}))
    # The child reports its own peak RSS: RUSAGE_CHILDREN would give the largest of all runs so far.
    command = [
        sys.executable, "-c", PEAK_RSS_WRAPPER, "run", "--config_file", str(BUNDLE / "configs" / "inference.json"),
        "--bundle_root", str(BUNDLE), "--data_list_file_path", str(datalist), "--dataset_dir", str(out),
        "--ckpt_path", str(model), "--output_dir", str(out), "--amp", str(amp), "--write_dicom_seg", "False",
    ]
    start = time.perf_counter()
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak_kib = int(result.stdout.strip().splitlines()[-1].split()[-1])
    return {"amp": amp, "seconds": seconds, "peak_rss_mib": peak_kib / 1024,
            "label": str(out / f"{case_dir.name}_seg.nii.gz")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case_dir", type=Path)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "runs" / "inference_benchmark")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    model = args.output / "seeded_model.pt"
    seeded_weights(model)
    rows = []
    for repeat in range(args.repeats):
        for amp in (False, True) if repeat % 2 == 0 else (True, False):
            out = args.output / f"{'bf16' if amp else 'fp32'}_{repeat}"
            out.mkdir(exist_ok=True)
            rows.append(run_case(args.case_dir.resolve(), out, model, amp))
            print(json.dumps(rows[-1]), flush=True)
    labels = {amp: np.asarray(nib.load(next(r["label"] for r in rows if r["amp"] is amp)).dataobj) for amp in (False, True)}
    summary = {
        amp_name: {
            "median_seconds": statistics.median(r["seconds"] for r in rows if r["amp"] is amp),
            "seconds": [round(r["seconds"], 1) for r in rows if r["amp"] is amp],
            "peak_rss_mib": max(r["peak_rss_mib"] for r in rows if r["amp"] is amp),
        }
        for amp_name, amp in (("fp32", False), ("bf16_autocast", True))
    }
    summary["label_agreement"] = float((labels[False] == labels[True]).mean())
    summary["voxels_labelled"] = {"fp32": int((labels[False] > 0).sum()), "bf16": int((labels[True] > 0).sum())}
    print(json.dumps(summary, indent=2))
    (args.output / "summary.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
