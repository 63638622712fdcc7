#!/usr/bin/env python
"""Train and evaluate the per-slot modality check (``monai_iunet.apps.brats.modality``) on the real BraTS cases.

    python -m scripts.train_modality_check [--data ../shared/data] [--ship]

1. every real case through the bundle's own pre-processing (``inference.json`` up to the intensity normalisation:
   what the check sees at inference), its four channels described by ``modality_features``;
2. 5-fold cross-validation over cases with the committed folds (``configs/splits/brats_real_folds.json``; recipe
   fixed before scoring: the features, an L2 weight of 0.01, the likelihood-ratio threshold 1.0 and the duplicate
   correlation 0.99): each case checked by the classifier that did not see it, as given and shifted: every wrong
   order of its four channels (23), the issue's order (FLAIR, T2, T1, T1ce), one channel duplicated into another
   slot (12: two slots with the same series; the T1 in the T1ce slot among them), the T1 in every slot; and in the
   right order with the acquisition shifts of ``flow_qc_report`` (noise, motion ghosting, bias field, thick slices,
   applied at 1 mm before the pre-processing, as there): what flags those is a false alarm of the modality check;
3. ``docs/benchmarks/modality_check.json`` and ``.md``; with ``--ship``, the classifier fitted on all cases becomes
   the bundle's ``models/modality_check.pt``.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
import torch

from monai_iunet.apps.brats.data.location import real_data
from monai_iunet.apps.brats.labels import MODALITIES
from monai_iunet.apps.brats.modality import (
    FEATURE_NAMES,
    ModalityClassifier,
    check_modalities,
    modality_features,
    save_modality_check,
)
from monai_iunet.apps.brats.qc import checked_input
from monai_iunet.apps.brats.transforms import LoadModalitiesd
from scripts import BUNDLE, DOCS, ROOT
from scripts.flow_qc_report import shifted

L2 = 1e-2
RULE = {"llr_threshold": 1.0, "duplicate_correlation": 0.99}  # the decision rule, fixed before scoring
ISSUE_ORDER = ("flair", "t2", "t1", "t1ce")  # what sits in the t1, t1ce, t2, flair slots
ACQUISITION_SHIFTS = ("noise", "motion ghosting", "bias field", "thick slices")  # the right order, degraded


def preprocessed_channels(data: Path) -> tuple[dict[str, list[np.ndarray]], dict[str, dict[str, list[np.ndarray]]]]:
    """Each case's four channels as the bundle's pre-processing leaves them before its QC, as given and with each
    acquisition shift (case → shift → channels)."""
    preprocess = checked_input()
    rest = type(preprocess)([t for t in preprocess.transforms if not isinstance(t, LoadModalitiesd)])
    loader = next(t for t in preprocess.transforms if isinstance(t, LoadModalitiesd))
    rng = np.random.default_rng(0)
    split = json.loads((ROOT / "configs" / "splits" / "brats_real_folds.json").read_text())["folds"]
    channels, degraded = {}, {}
    for case in sorted(c for fold in split for c in fold):
        folder = next(p for p in (data / "brats_real" / case, data / "brats" / case) if p.is_dir())
        loaded = loader({"image": [str(folder / f"{case}_{m}.nii.gz") for m in MODALITIES], "case": case})
        image = rest(dict(loaded))["image"]
        channels[case] = [np.asarray(c) for c in image]
        original = loaded["image"]
        degraded[case] = {}
        for shift in ACQUISITION_SHIFTS:
            x = type(original)(shifted(original.as_tensor(), shift, rng), meta=original.meta)
            degraded[case][shift] = [np.asarray(c) for c in rest({**loaded, "image": x})["image"]]
        print(f"{case}: {tuple(image.shape[1:])}", flush=True)
    return channels, degraded


def shifts(channels: list[np.ndarray]) -> dict[str, list[list[np.ndarray]]]:
    n = len(channels)
    orders = [o for o in itertools.permutations(range(n)) if o != tuple(range(n))]
    return {
        "every wrong order": [[channels[k] for k in order] for order in orders],
        "the issue's order (FLAIR, T2, T1, T1ce)": [[channels[MODALITIES.index(m)] for m in ISSUE_ORDER]],
        "one series in two slots": [[channels[i if k == j else k] for k in range(n)]
                                    for i in range(n) for j in range(n) if i != j],
        "T1 in the T1ce slot": [[channels[0], channels[0], *channels[2:]]],
        "T1 in every slot": [[channels[0]] * n],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=real_data())
    parser.add_argument("--ship", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    channels, degraded = preprocessed_channels(args.data.resolve())
    features = {case: np.stack([modality_features(c) for c in chans]) for case, chans in channels.items()}
    folds = json.loads((ROOT / "configs" / "splits" / "brats_real_folds.json").read_text())["folds"]
    labels = np.arange(len(MODALITIES))
    results = {"in_distribution": {}}
    confusion = np.zeros((len(MODALITIES),) * 2, int)
    flagged: dict[str, list[bool]] = {}
    for held_out in folds:
        train = [c for c in features if c not in held_out]
        classifier = ModalityClassifier.fit(np.concatenate([features[c] for c in train]),
                                            np.tile(labels, len(train)), MODALITIES, L2, **RULE)
        for case in held_out:
            check = check_modalities(channels[case], classifier)
            results["in_distribution"][case] = check
            for i, slot in enumerate(MODALITIES):
                confusion[i, MODALITIES.index(check["slots"][slot]["predicted"])] += 1
            for name, inputs in shifts(channels[case]).items():
                flagged.setdefault(name, []).extend(check_modalities(x, classifier)["flagged"] for x in inputs)
            for shift, x in degraded[case].items():
                flagged.setdefault(f"{shift} (right order)", []).append(check_modalities(x, classifier)["flagged"])
    results["confusion"] = confusion.tolist()
    results["shifts"] = {name: {"n": len(flags), "flagged": int(sum(flags))} for name, flags in flagged.items()}
    false_alarms = sorted(c for c, check in results["in_distribution"].items() if check["flagged"])
    results["false_alarms"] = false_alarms
    DOCS.mkdir(parents=True, exist_ok=True)
    (DOCS / "modality_check.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, DOCS / "modality_check.md")
    print(json.dumps({"false_alarms": len(false_alarms), **results["shifts"]}, indent=1))
    if args.ship:
        n = len(features)
        classifier = ModalityClassifier.fit(np.concatenate(list(features.values())), np.tile(labels, n), MODALITIES,
                                            L2, **RULE)
        path = save_modality_check(BUNDLE / "models" / "modality_check.pt", classifier, cases=n, l2=L2)
        print(f"shipped {path}")


def write_markdown(results: dict, path: Path) -> None:
    n = len(results["in_distribution"])
    lines = [
        "# Modality check per slot: out-of-fold on the real BraTS cases",
        "",
        "Generated by `scripts/train_modality_check.py` (numbers in `modality_check.json`). Each of the "
        f"{n} real cases goes through the bundle's own pre-processing (2 mm, RAS, brain box, normalised) and is "
        "checked by the classifier of the fold that did not see it (5 committed folds; features, L2 weight, "
        "likelihood-ratio threshold 1.0 and duplicate correlation 0.99 fixed before scoring). Features: "
        + ", ".join(f"`{f}`" for f in FEATURE_NAMES) + " of each channel's z-scored brain intensities.",
        "",
        f"- Real cases flagged (false alarms): **{len(results['false_alarms'])} of {n}**"
        + (f" ({', '.join(results['false_alarms'])})" if results["false_alarms"] else "") + ".",
        "",
        "Rows *(right order)*: the four series in their slots, degraded at 1 mm before the pre-processing as in "
        "`flow_qc.md` (noise, motion ghosting, bias field, thick slices): a flag there is a false alarm of the "
        "modality check (the scan QC's flow is the detector meant for degraded scans; `qc.md` has both).",
        "",
        "| input | checked | flagged |",
        "|---|---:|---:|",
    ]
    for name, s in results["shifts"].items():
        lines.append(f"| {name} | {s['n']} | {s['flagged']} ({100 * s['flagged'] / s['n']:.0f} %) |")
    lines += ["", "Channels of the real cases, classified one by one (rows: what the slot holds; columns: predicted; "
              "the case-level check compares whole orders, so a single uncertain channel is not a false alarm):",
              "", "| | " + " | ".join(MODALITIES) + " |", "|---|" + "---:|" * len(MODALITIES)]
    for modality, row in zip(MODALITIES, results["confusion"]):
        lines.append(f"| {modality} | " + " | ".join(str(v) for v in row) + " |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
