"""The committed held-out split of the real BraTS cases, and the datalist it gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monai_iunet.apps.brats.data.datalist import split_datalist
from monai_iunet.apps.brats.data.location import real_data

ROOT = Path(__file__).resolve().parents[3]
DATA = real_data()
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


@pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")
def test_a_real_case_in_brats_2023_form_records_et_label_3_and_the_wrong_et_label_is_refused(tmp_path):
    """A real BraTS 2018 case renamed and relabelled the way BraTS 2023 ships it (ET = 3, ``-t1c`` names)."""
    import nibabel as nib
    import numpy as np

    from monai_iunet.apps.brats.cases import CaseError, check_brats_labels
    from monai_iunet.apps.brats.data.datalist import make_datalist
    from monai_iunet.apps.brats.labels import NAMING
    from monai_iunet.apps.brats.metrics import score_case

    source = DATA / "brats_real" / "Brats18_CBICA_AQR_1"
    case = tmp_path / "data" / "BraTS-GLI-00042-000"
    case.mkdir(parents=True)
    for modality, suffix in NAMING["2023"].items():
        if modality != "seg":
            (case / f"{case.name}-{suffix}.nii.gz").symlink_to(next(source.glob(f"*_{modality}.nii.gz")))
    seg = nib.load(next(source.glob("*_seg.nii.gz")))
    labels = np.asarray(seg.dataobj).astype(np.uint8)
    assert 4 in labels
    labels[labels == 4] = 3
    seg_2023 = case / f"{case.name}-seg.nii.gz"
    nib.save(nib.Nifti1Image(labels, seg.affine), seg_2023)
    datalist = make_datalist(tmp_path / "data")
    assert datalist["label_convention"] == {"naming": "2023", "et_label": 3}
    with pytest.raises(CaseError, match=r"values \[0, 1, 2, 3\].*set et_label 3 \(BraTS 2023\+\)"):
        check_brats_labels(labels, 4, case.name, str(seg_2023))
    scores = score_case(seg_2023, seg_2023, et_label=datalist["label_convention"]["et_label"])
    assert {r: s["dice"] for r, s in scores.items()} == {"TC": 1.0, "WT": 1.0, "ET": 1.0}
