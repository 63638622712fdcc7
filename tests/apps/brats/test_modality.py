"""The per-slot modality check: the shipped classifier passes a real case as given and flags it with the slots
named when two modalities are swapped, when one series fills two slots and when the T1 is given as the T1ce; the
check's own errors and switches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_iunet.apps.brats.data.location import real_data
from monai_iunet.apps.brats.labels import MODALITIES
from monai_iunet.apps.brats.modality import (
    ModalityCheckd,
    ModalityClassifier,
    check_modalities,
    load_modality_check,
    modality_features,
    save_modality_check,
)
from monai_iunet.apps.brats.qc import checked_input

from ...utils import BUNDLE, REAL_CASE

WEIGHTS = BUNDLE / "models" / "modality_check.pt"


@pytest.fixture(scope="module")
def real_channels() -> list[np.ndarray]:
    """A real case through the bundle's own pre-processing up to its QC (2 mm, RAS, brain box, normalised)."""
    if not REAL_CASE.is_dir():
        pytest.skip("../shared/data not present")
    data = checked_input(skull_strip="false")(
        {"image": [str(REAL_CASE / f"{REAL_CASE.name}_{m}.nii.gz") for m in MODALITIES], "case": REAL_CASE.name})
    return [np.asarray(c) for c in data["image"]]


def test_a_real_case_passes(real_channels):
    check = check_modalities(real_channels, load_modality_check(WEIGHTS))
    assert not check["flagged"] and check["findings"] == [] and check["best_order"] == list(MODALITIES)
    assert check["log_likelihood_ratio"] == 0 and check["duplicates"] == []


def test_swapped_modalities_are_flagged_with_the_slots_named(real_channels):
    t1, t1ce, t2, flair = real_channels
    check = check_modalities([t1, t1ce, flair, t2], load_modality_check(WEIGHTS))
    assert check["flagged"] and check["log_likelihood_ratio"] > check["threshold"]
    assert check["findings"] == ["the T2 slot looks like FLAIR", "the FLAIR slot looks like T2"]
    check = check_modalities([flair, t2, t1, t1ce], load_modality_check(WEIGHTS))  # the order of issue 27
    assert check["best_order"] == ["flair", "t2", "t1", "t1ce"]  # what each slot holds
    assert check["findings"][0] == "the T1 slot looks like FLAIR" and len(check["findings"]) == 4


def test_the_decision_rule_is_the_files(real_channels, tmp_path):
    """The likelihood-ratio threshold and the duplicate correlation travel with the classifier, not as code
    defaults: a file with a looser rule lets the swap through; a file without a rule is refused."""
    t1, t1ce, t2, flair = real_channels
    shipped = load_modality_check(WEIGHTS)
    assert (shipped.llr_threshold, shipped.duplicate_correlation) == (1.0, 0.99)
    swapped = check_modalities([t1, t1ce, flair, t2], shipped)
    loose = ModalityClassifier(shipped.modalities, shipped.state, llr_threshold=swapped["log_likelihood_ratio"] + 1,
                               duplicate_correlation=0.99)
    reloaded = load_modality_check(save_modality_check(tmp_path / "loose.pt", loose))
    check = check_modalities([t1, t1ce, flair, t2], reloaded)
    assert not check["flagged"] and check["threshold"] == swapped["log_likelihood_ratio"] + 1
    torch.save({"modalities": list(shipped.modalities), "state": shipped.state}, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="not a modality check file"):
        load_modality_check(tmp_path / "old.pt")


def test_one_series_in_two_slots_and_the_t1_as_t1ce_are_flagged(real_channels):
    t1, _, t2, flair = real_channels
    check = check_modalities([t1, t1, t2, flair], load_modality_check(WEIGHTS))
    assert check["flagged"] and check["duplicates"] == [["t1", "t1ce", 1.0]]
    assert "the T1 and T1ce (post-contrast T1) slots hold the same image (correlation 1.000)" in check["findings"]


def test_the_transform_records_the_check_and_can_be_switched_off(real_channels, caplog):
    image = torch.as_tensor(np.stack([real_channels[0], real_channels[0], *real_channels[2:]]))
    out = ModalityCheckd("image", WEIGHTS)({"image": image, "case": "c1"})
    assert out["modality_check"]["flagged"] and "c1" in caplog.text and "same image" in caplog.text
    assert ModalityCheckd("image", "none.pt", enabled=False)({"image": image})["modality_check"] == {"enabled": False}
    empty = ModalityCheckd("image", WEIGHTS)({"image": torch.zeros(4, 8, 8, 8)})["modality_check"]
    assert empty == {"flagged": True, "findings": ["the modalities could not be checked: a channel with 0 non-zero "
                                                   "voxels has no brain to describe."]}


def test_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="scan_qc: false"):
        ModalityCheckd("image", tmp_path / "none.pt")
    with pytest.raises(ValueError, match="no brain"):
        modality_features(np.zeros((8, 8, 8)))
    classifier = ModalityClassifier.fit(np.random.default_rng(0).normal(size=(40, 16)), np.arange(40) % 4, MODALITIES)
    with pytest.raises(ValueError, match="3 channels given"):
        check_modalities([np.ones((8, 8, 8))] * 3, classifier)
    with pytest.raises(ValueError, match="expected 3"):
        ModalityClassifier(("t1", "t2", "flair"), classifier.state)


def test_a_ct_in_every_slot_is_flagged():
    """A real CT (dcmqi's 3-slice liver CT) given as all four MR series: one series in every slot."""
    import pydicom

    folder = real_data() / "seg" / "dcmqi_liver_ct" / "ct_source"
    if not folder.is_dir():
        pytest.skip("../shared/data not present")
    slices = sorted((pydicom.dcmread(f) for f in folder.iterdir()), key=lambda ds: float(ds.ImagePositionPatient[2]))
    ct = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    check = check_modalities([ct] * 4, load_modality_check(WEIGHTS))
    assert check["flagged"] and len(check["duplicates"]) == 6
