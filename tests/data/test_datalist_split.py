"""The committed held-out split of the real BraTS cases, and the datalist it gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_iunet.data.datalist import split_datalist

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
SPLIT = ROOT / "configs" / "splits" / "brats_real_holdout.json"


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")
def test_committed_split_covers_the_24_real_cases_once():
    datalist = split_datalist(DATA, SPLIT)
    train = {c["case"] for c in datalist["training"]}
    held_out = {c["case"] for c in datalist["testing"]}
    assert len(train) == 18 and len(held_out) == 6 and not train & held_out
    assert datalist["validation"] == datalist["testing"]
    assert datalist["label_convention"] == {"naming": "2020", "et_label": 4}  # BraTS 2018 file names
    for item in datalist["training"] + datalist["testing"]:
        assert len(item["image"]) == 4 and (DATA / item["label"]).is_file()
        assert [Path(p).name.rsplit("_", 1)[1] for p in item["image"]] == [
            "t1.nii.gz", "t1ce.nii.gz", "t2.nii.gz", "flair.nii.gz"]


def test_split_errors_name_the_cases(tmp_path):
    case = tmp_path / "data" / "A"
    case.mkdir(parents=True)
    for suffix in ("t1", "t1ce", "t2", "flair", "seg"):
        (case / f"A_{suffix}.nii.gz").write_bytes(b"")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"training": ["A"], "testing": ["A"]}))
    with pytest.raises(ValueError, match="both for training and testing.*'A'"):
        split_datalist(tmp_path / "data", split)
    split.write_text(json.dumps({"training": ["A"], "testing": ["B"]}))
    with pytest.raises(FileNotFoundError, match="'B'"):
        split_datalist(tmp_path / "data", split)
