"""Choose the BraTS model's sliding window by measurement (issue 25, item 2), before any cross-validated training.

The shipped weights (trained on 64³ crops of the 18 cases of ``configs/splits/brats_real_holdout.json``) are run
through the bundle's own ``inference.json`` (its preprocessing, inferer and postprocessing, parsed by MONAI's
``ConfigParser`` with the bundle's metadata) on the real cases they never saw: the 6 held out then and the 6 cases
added to ``../shared/data`` later. Each case is pre-processed once; every window setting then runs the inferer and
the postprocessing (probabilities back on the 1 mm input grid, thresholded there) and is scored against the expert
label (BraTS conventions, ``metrics.score_label_maps``).

    python -m scripts.brats_window_study [--data ../shared/data] [--output docs/benchmarks/brats_window.json]

Settings: window 64³ / 96³ / 128³ (overlap 0.5, Gaussian blending) on the whole 2 mm volume and on the brain's
bounding box (``CropForegroundd`` before the window, inverted by ``Invertd``); at the training crop, overlap 0.25
vs 0.5 and constant vs Gaussian blending. The per-case seconds are network time on the threads given.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import LoadImage

from monai_iunet.apps.brats.data.datalist import find_cases
from monai_iunet.apps.brats.data.location import real_data
from monai_iunet.apps.brats.metrics import score_label_maps, summarise
from monai_iunet.bundle import bundle_parser, bundle_path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = bundle_path("brats_iunet_segmentation")
# the first shipped model's training cases: every other real case is unseen by its weights
SEEN = json.loads((ROOT / "configs" / "splits" / "brats_real_holdout.json").read_text())["training"]
SETTINGS = [  # name, window edge, overlap, blending, brain box first
    ("64 whole", 64, 0.5, "gaussian", False),
    ("96 whole", 96, 0.5, "gaussian", False),
    ("128 whole (shipped before)", 128, 0.5, "gaussian", False),
    ("64 brain box", 64, 0.5, "gaussian", True),
    ("96 brain box", 96, 0.5, "gaussian", True),
    ("128 brain box", 128, 0.5, "gaussian", True),
    ("64 whole, overlap 0.25", 64, 0.25, "gaussian", False),
    ("64 whole, constant blending", 64, 0.5, "constant", False),
]


def parser_for(weights: Path | None = None) -> ConfigParser:
    parser = bundle_parser(str(BUNDLE / "configs" / "inference.json"))
    parser["bundle_root"] = str(BUNDLE)
    parser["scan_qc"] = False  # QC does not change the segmentation
    if weights is not None:
        parser["ckpt_path"] = str(weights)
    return parser


def with_brain_box(parser: ConfigParser) -> ConfigParser:
    """The same preprocessing with the 2 mm image cropped to its non-zero box (before normalisation, which keeps
    background at 0)."""
    transforms = parser["preprocessing"]["transforms"]
    at = next(i for i, t in enumerate(transforms) if t["_target_"].endswith("Spacingd")) + 1
    transforms.insert(at, {"_target_": "CropForegroundd", "keys": "image", "source_key": "image",
                           "allow_smaller": True})
    parser["preprocessing"]["transforms"] = transforms
    return parser


def main() -> None:
    args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    args.add_argument("--data", default=str(real_data()))
    args.add_argument("--output", default=str(ROOT / "docs" / "benchmarks" / "brats_window.json"))
    args.add_argument("--cases", type=int, default=0, help="only the first N unseen cases (0: all)")
    args = args.parse_args()

    cases = [c for c in find_cases(args.data) if "label" in c and c["case"] not in SEEN]
    cases = cases[: args.cases or None]
    data = Path(args.data)
    base = parser_for()
    variants = {False: base, True: with_brain_box(parser_for())}
    parsed = {}
    for box, parser in variants.items():
        parser.parse()
        parsed[box] = {k: parser.get_parsed_content(k) for k in ("preprocessing", "postprocessing")}
    network = base.get_parsed_content("network")
    base.get_parsed_content("initialize")
    network.eval()
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    results = {name: {"cases": {}, "seconds": {}} for name, *_ in SETTINGS}
    for case in cases:
        item = {"case": case["case"], "image": [str(data / p) for p in case["image"]]}
        label = loader(str(data / case["label"]))
        prepared = {box: p["preprocessing"](dict(item)) for box, p in parsed.items()}
        for name, edge, overlap, blending, box in SETTINGS:
            from monai.inferers import SlidingWindowInferer

            inferer = SlidingWindowInferer(roi_size=[edge] * 3, sw_batch_size=1, overlap=overlap, mode=blending)
            sample = dict(prepared[box])
            start = time.perf_counter()
            with torch.no_grad():
                sample["pred"] = inferer(sample["image"].unsqueeze(0), network)[0]
            seconds = time.perf_counter() - start
            prediction = parsed[box]["postprocessing"](sample)["pred"]
            results[name]["cases"][case["case"]] = score_label_maps(prediction, label, 4)
            results[name]["seconds"][case["case"]] = seconds
            wt = results[name]["cases"][case["case"]]["WT"]["dice"]
            print(f"{case['case']:24s} {name:30s} WT {wt:.3f}  {seconds:5.1f} s", flush=True)
    table = {}
    for name, edge, overlap, blending, box in SETTINGS:
        summary = summarise(results[name]["cases"])
        table[name] = {"window": edge, "overlap": overlap, "blending": blending, "brain_box": box,
                       "dice_mean": {r: round(summary[r]["dice_mean"], 4) for r in summary},
                       "worst_wt": round(min(c["WT"]["dice"] for c in results[name]["cases"].values()), 4),
                       "seconds_median": round(float(np.median(list(results[name]["seconds"].values()))), 2),
                       **results[name]}
    out = {"weights": "bundles/brats_iunet_segmentation/models/model.pt (the first shipped model)",
           "cases": [c["case"] for c in cases], "threads": torch.get_num_threads(), "settings": table}
    Path(args.output).write_text(json.dumps(out, indent=1))
    print("\n| setting | WT | TC | ET | worst WT | network s/case |\n|---|---:|---:|---:|---:|---:|")
    for name, row in table.items():
        d = row["dice_mean"]
        print(f"| {name} | {d['WT']:.3f} | {d['TC']:.3f} | {d['ET']:.3f} | {row['worst_wt']:.3f} | "
              f"{row['seconds_median']:.1f} |")


if __name__ == "__main__":
    main()
