"""Datalist JSON for a BraTS-style folder (real or synthetic): ``training``, ``validation`` and ``testing`` lists.

Each item is ``{"image": [t1, t1ce, t2, flair], "label": seg}`` with paths relative to the dataset folder (the
channel order the bundle expects). Both the BraTS 2018-2022 names (``*_t1.nii.gz``, ``*_t1ce``, ``*_t2``,
``*_flair``, ``*_seg``) and the 2023 names (``*-t1n``, ``*-t1c``, ``*-t2w``, ``*-t2f``, ``*-seg``) are found.
Cases without a segmentation go to ``testing``; a case folder with a ``dicom/`` sub-folder of 4 series is also
listed under ``testing_dicom``. The label convention detected from the file names is recorded as
``"label_convention": {"naming": "2023", "et_label": 3}``, and the bundle's ``train.json`` takes its ``et_label``
from there (``et_label_of``).

    python -m monai_iunet.apps.brats.data.datalist --dataset-dir data/brats_synthetic --output data/datalist.json

With ``--split`` a committed split file (``{"training": [case, ...], "testing": [case, ...]}``, e.g.
``configs/splits/brats_real_holdout.json``) fixes which cases train and which are held out: the held-out cases,
with their labels, are both ``validation`` (monitoring only) and ``testing`` (``evaluate.json``). A committed
cross-validation file (``{"folds": [[case, ...], ...]}``, e.g. ``configs/splits/brats_real_folds.json``) with
``--fold k`` holds out fold ``k`` and trains on the others.

    python -m monai_iunet.apps.brats.data.datalist --dataset-dir ../shared/data \
        --split configs/splits/brats_real_folds.json --fold 0 --output runs/fold0/datalist.json
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from ..labels import ET_LABEL, MODALITIES, NAMING

__all__ = [
    "find_cases", "make_datalist", "fold_split", "split_datalist", "write_datalist", "label_convention", "et_label_of",
]


def _find(case_dir: Path, suffix: str) -> Path | None:
    matches = sorted(p for p in case_dir.iterdir() if p.name.endswith((f"_{suffix}.nii.gz", f"-{suffix}.nii.gz",
                                                                        f"_{suffix}.nii", f"-{suffix}.nii")))
    return matches[0] if matches else None


def find_cases(dataset_dir: str | Path) -> list[dict]:
    """Every case folder under ``dataset_dir`` that holds all 4 modalities, as datalist items (sorted by name)."""
    dataset_dir = Path(dataset_dir)
    if not dataset_dir.is_dir():
        raise FileNotFoundError(f"dataset_dir {dataset_dir} does not exist or is not a folder.")
    cases = []
    for case_dir in sorted(p for p in dataset_dir.rglob("*") if p.is_dir()):
        for naming, names in NAMING.items():
            images = [_find(case_dir, names[m]) for m in MODALITIES]
            if all(images):
                item = {"case": case_dir.name, "naming": naming,
                        "image": [str(p.relative_to(dataset_dir)) for p in images]}
                label = _find(case_dir, names["seg"])
                if label is not None:
                    item["label"] = str(label.relative_to(dataset_dir))
                dicom = case_dir / "dicom"
                if all((dicom / m).is_dir() for m in MODALITIES):
                    item["dicom"] = [str((dicom / m).relative_to(dataset_dir)) for m in MODALITIES]
                cases.append(item)
                break
    return cases


def label_convention(cases: list[dict]) -> dict:
    """The label convention of the labelled cases, detected from their file names (``find_cases``' ``naming``):
    ``{"naming": "2023", "et_label": 3}``. Cases of both conventions in one datalist are an error: one ``et_label``
    serves the whole run."""
    namings = {}
    for case in cases:
        if "label" in case:
            namings.setdefault(case["naming"], []).append(case["case"])
    if len(namings) > 1:
        listed = "; ".join(
            f"{len(names)} named as BraTS {n} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})"
            for n, names in sorted(namings.items()))
        raise ValueError(f"the labelled cases mix the BraTS naming conventions, whose enhancing-tumour labels differ "
                         f"(2020: 4, 2023: 3): {listed}. Make one datalist per convention.")
    naming = next(iter(namings), "2020")
    return {"naming": naming, "et_label": ET_LABEL[naming]}


def et_label_of(data_list_file_path: str | Path, default: int = 4) -> int:
    """The enhancing-tumour label a datalist recorded (``label_convention``), for ``train.json``/``evaluate.json``;
    ``default`` for a datalist written by another tool (the label check on load still catches a mismatch)."""
    path = Path(data_list_file_path)
    if not path.is_file():  # the datalist loader reports the missing file
        return default
    return int(json.loads(path.read_text()).get("label_convention", {}).get("et_label", default))


def make_datalist(dataset_dir: str | Path, val_fraction: float = 0.2, seed: int = 0) -> dict[str, list[dict]]:
    """Split the labelled cases into training/validation (seeded shuffle); unlabelled cases become ``testing``."""
    cases = find_cases(dataset_dir)
    if not cases:
        raise FileNotFoundError(
            f"no BraTS cases (4 modalities per case folder, BraTS 2018-2023 file names) under {dataset_dir}."
        )
    convention = label_convention(cases)
    labelled = [c for c in cases if "label" in c]
    random.Random(seed).shuffle(labelled)
    n_val = max(1, round(val_fraction * len(labelled))) if len(labelled) > 1 else 0
    strip = lambda c: {k: v for k, v in c.items() if k in ("image", "label")}  # noqa: E731
    datalist = {
        "training": [strip(c) for c in labelled[n_val:]],
        "validation": [strip(c) for c in labelled[:n_val]],
        "testing": [{"image": c["image"]} for c in cases if "label" not in c]
        or [{"image": c["image"]} for c in labelled[:n_val]],
        "testing_dicom": [{"image": c["dicom"]} for c in cases if "dicom" in c],
        "label_convention": convention,
    }
    return datalist


def fold_split(split: dict, fold: int) -> dict[str, list[str]]:
    """``{"training": ..., "testing": ...}`` of fold ``fold`` of a cross-validation split (``{"folds": [[case, ...],
    ...]}``): the fold's cases are held out, the other folds' cases train."""
    folds = split["folds"]
    if not 0 <= fold < len(folds):
        raise ValueError(f"fold {fold} does not exist: the split has {len(folds)} folds (0-{len(folds) - 1}).")
    return {"training": sorted(c for k, cases in enumerate(folds) if k != fold for c in cases),
            "testing": list(folds[fold])}


def split_datalist(dataset_dir: str | Path, split: str | Path, fold: int | None = None) -> dict[str, list[dict]]:
    """The datalist of a committed split: its ``training`` cases train, its ``testing`` cases (labelled) are held
    out; for a cross-validation split (``folds``), fold ``fold`` is held out. Every case the split names must be
    found under ``dataset_dir`` with its label."""
    split = json.loads(Path(split).read_text())
    if "folds" in split:
        if fold is None:
            raise ValueError("the split is a cross-validation split ('folds'): say which fold to hold out (--fold).")
        split = fold_split(split, fold)
    elif fold is not None:
        raise ValueError("--fold needs a cross-validation split (a file with 'folds').")
    found = {c["case"]: c for c in find_cases(dataset_dir) if "label" in c}
    wanted = {part: list(split[part]) for part in ("training", "testing")}
    overlap = set(wanted["training"]) & set(wanted["testing"])
    if overlap:
        raise ValueError(f"split names cases both for training and testing: {sorted(overlap)}.")
    missing = [c for part in wanted.values() for c in part if c not in found]
    if missing:
        raise FileNotFoundError(f"cases of the split not found (with a label) under {dataset_dir}: {missing}.")
    item = lambda c: {"case": c, "image": found[c]["image"], "label": found[c]["label"]}  # noqa: E731
    held_out = [item(c) for c in wanted["testing"]]
    return {"training": [item(c) for c in wanted["training"]], "validation": held_out, "testing": held_out,
            "label_convention": label_convention([found[c] for part in wanted.values() for c in part])}


def write_datalist(dataset_dir: str | Path, output: str | Path, val_fraction: float = 0.2, seed: int = 0,
                   split: str | Path | None = None, fold: int | None = None) -> dict:
    datalist = split_datalist(dataset_dir, split, fold) if split else make_datalist(dataset_dir, val_fraction, seed)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(datalist, indent=2))
    return datalist


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", help="a committed split file (training/testing case names, or cross-validation "
                                        "folds) instead of a seeded split")
    parser.add_argument("--fold", type=int, help="with a cross-validation split: the fold to hold out")
    args = parser.parse_args(argv)
    datalist = write_datalist(args.dataset_dir, args.output, args.val_fraction, args.seed, args.split, args.fold)
    convention = datalist["label_convention"]
    print(", ".join(f"{k}: {len(v)}" for k, v in datalist.items() if isinstance(v, list)),
          f"(BraTS {convention['naming']} names: et_label {convention['et_label']}) -> {args.output}")


if __name__ == "__main__":
    main()
