"""Which per-case uncertainty score needs the fewest network passes and still flags the failures (issue 36, item 1)?

Each of the 30 real cases is pre-processed by the bundle's ``inference.json`` and run through the member of the
shipped ensemble that did not train on it (its fold's), on the network's grid: the unmirrored pass, the pass
mirrored left-right, and all 8 mirrored passes. From those, candidate scores (each ``sum(map) / sum(mean
probability)`` over the TC/WT/ET channels, as ``postprocess.uncertainty_score``):

- ``entropy_1``: the entropy (bits) of the one unmirrored pass — 1 pass per member;
- ``entropy_wt_1``: the same over the WT channel only — 1 pass;
- ``mirror_lr_2``: the spread of the unmirrored and the left-right mirrored pass — 2 passes;
- ``entropy_lr_2``: the entropy of the mean of those two passes — 2 passes;
- ``mirror_8``: the spread of all 8 mirrored passes (the shipped score of bundle 0.11.0) — 8 passes.

Each is then judged as ``calibration.evaluate_uncertainty`` judges it (threshold from four folds applied to the
fifth, failures = WT Dice < 0.7 of the out-of-fold label maps that ``calibration`` scored through inference.json).

    python -m scripts.uncertainty_study --scores runs/calibration/calibration.json [--output ...]
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from monai_iunet.apps.brats.calibration import SPLIT, evaluate_uncertainty
from monai_iunet.apps.brats.data.datalist import split_datalist
from monai_iunet.apps.brats.data.location import real_data
from monai_iunet.apps.brats.postprocess import uncertainty_score
from monai_iunet.bundle import bundle_parser, bundle_path

FLIPS = [[], [2], [3], [4], [2, 3], [2, 4], [3, 4], [2, 3, 4]]  # tensor dims of the 8 mirrored passes; [2]: L-R


def entropy(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(1e-6, 1 - 1e-6)
    return -p * torch.log2(p) - (1 - p) * torch.log2(1 - p)


def fold_scores(fold: int) -> dict[str, dict[str, float]]:
    torch.set_num_threads(1)
    parser = bundle_parser(bundle_path() / "configs" / "inference.json")
    parser.update({"bundle_root": str(bundle_path()), "ckpt_member": fold, "tta": False, "skull_strip": "false",
                   "scan_qc": False})
    parser.get_parsed_content("initialize")
    network = parser.get_parsed_content("network").members[0].eval()
    preprocessing, inferer = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("inferer")
    inferer.progress = False
    cases = split_datalist(real_data(), SPLIT, fold)["testing"]
    out = {}
    for item in cases:
        image = preprocessing({"image": [str(real_data() / p) for p in item["image"]]})["image"][None]
        with torch.no_grad():
            passes = torch.stack([torch.sigmoid(torch.flip(inferer(torch.flip(image, f) if f else image, network), f)
                                                if f else inferer(image, network))[0] for f in FLIPS])
        one, two = passes[0], passes[:2].mean(0)
        out[item["case"]] = {
            "entropy_1": uncertainty_score(one, entropy(one)),
            "entropy_wt_1": uncertainty_score(one[1], entropy(one[1])),
            "mirror_lr_2": uncertainty_score(two, passes[:2].std(0, correction=0)),
            "entropy_lr_2": uncertainty_score(two, entropy(two)),
            "mirror_8": uncertainty_score(passes.mean(0), passes.std(0, correction=0)),
        }
        print(fold, item["case"], {k: round(v, 4) for k, v in out[item["case"]].items()}, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", type=Path, required=True, help="calibration.json of the out-of-fold runs")
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks/uncertainty_study"))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    n_folds = len(json.loads(SPLIT.read_text())["folds"])
    with ProcessPoolExecutor(args.jobs) as pool:
        scores = {c: s for part in pool.map(fold_scores, range(n_folds)) for c, s in part.items()}
    oof = next(iter(json.loads(args.scores.read_text()).values()))["cases"]
    wt = {c: oof[c]["scores"]["WT"]["dice"] for c in scores}
    fold_of = {c: oof[c]["fold"] for c in scores}
    passes = {"entropy_1": 1, "entropy_wt_1": 1, "mirror_lr_2": 2, "entropy_lr_2": 2, "mirror_8": 8}
    results = {name: {"passes_per_member": n, **evaluate_uncertainty({c: s[name] for c, s in scores.items()}, wt,
                                                                      fold_of)} for name, n in passes.items()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=1))
    lines = ["# Per-case uncertainty scores by network passes (out-of-fold, 30 real cases)", "",
             "Generated by `scripts/uncertainty_study.py`; failures: WT Dice < 0.7 through inference.json "
             f"({results['entropy_1']['n_failed']} of 30). Flags: threshold (90th percentile of the non-failures) "
             "from four folds applied to the fifth.", "",
             "| score | passes per member | Spearman rho with WT Dice | failures flagged | false alarms |",
             "|---|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| `{name}` | {r['passes_per_member']} | {r['spearman_wt_dice']['rho']:.2f} | "
                     f"{r['failures_flagged']} / {r['n_failed']} | {r['false_alarms']} / {r['n_not_failed']} |")
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
