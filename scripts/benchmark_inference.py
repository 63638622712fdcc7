#!/usr/bin/env python
"""Time and peak memory of the BraTS bundle's ``inference.json`` on one case, fp32 vs ``amp: true`` (bf16 autocast on
CPU), each in a fresh process, alternating, and how much the two outputs differ.

    python -m scripts.benchmark_inference CASE_DIR [--repeats 2] [--output runs/inference_benchmark]

CASE_DIR holds ``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair`` NIfTI files (e.g. a BraTS case). Without trained BraTS
weights (none can be had here) the network has seeded random weights: time and memory do not depend on the weights,
and the output comparison uses the sigmoid probabilities as well as the label maps.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_iunet.bundle import bundle_parser
from scripts import BUNDLE, ROOT
from scripts.benchmarking import run_inference_case


def seeded_weights(path: Path) -> None:
    import torch

    parser = bundle_parser(str(BUNDLE / "configs" / "inference.json"))
    torch.manual_seed(0)
    torch.save(parser.get_parsed_content("network_def").state_dict(), path)


def run_case(case_dir: Path, out: Path, model: Path, amp: bool) -> dict:
    return {"amp": amp, **run_inference_case(BUNDLE, case_dir, out, model, amp=amp)}


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
    labels = {amp: np.asarray(nib.load(next(r["label"] for r in rows if r["amp"] is amp)).dataobj)
              for amp in (False, True)}
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
