"""BraTS scoring: Dice and HD95 per region with MONAI's metrics, BraTS conventions for empty regions."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from monai_iunet.apps.brats.metrics import EMPTY_HD95, score_case, score_cases

AFFINE = np.diag([2.0, 1.0, 1.0, 1.0])  # 2 mm along x: HD95 must be in millimetres


def _write(path, label):
    nib.save(nib.Nifti1Image(label.astype(np.uint8), AFFINE), path)
    return path


def _case():
    truth = np.zeros((40, 40, 40), np.uint8)
    truth[10:30, 10:30, 10:30] = 2  # edema (WT only)
    truth[15:25, 15:25, 15:25] = 1  # necrotic core (TC)
    truth[18:22, 18:22, 18:22] = 4  # enhancing (ET)
    return truth


def test_dice_and_hd95_of_a_known_shift(tmp_path):
    truth = _case()
    pred = np.roll(truth, 3, axis=0)  # 3 voxels = 6 mm along x
    scores = score_case(_write(tmp_path / "p.nii.gz", pred), _write(tmp_path / "t.nii.gz", truth))
    for region, values in {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}.items():
        a, b = np.isin(pred, values), np.isin(truth, values)
        assert scores[region]["dice"] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()), abs=1e-6)
        assert scores[region]["hd95"] == pytest.approx(6.0, abs=1e-4)


def test_brats_conventions_for_empty_regions(tmp_path):
    truth = _case()
    truth[truth == 4] = 1  # no enhancing tumour in the truth
    pred_empty_et = truth.copy()
    scores = score_case(_write(tmp_path / "p.nii.gz", pred_empty_et), _write(tmp_path / "t.nii.gz", truth))
    assert scores["ET"] == {"dice": 1.0, "hd95": 0.0}  # empty in both
    pred_with_et = truth.copy()
    pred_with_et[20, 20, 20] = 4
    scores = score_case(_write(tmp_path / "p2.nii.gz", pred_with_et), _write(tmp_path / "t.nii.gz", truth))
    assert scores["ET"] == {"dice": 0.0, "hd95": EMPTY_HD95}  # false positive on an empty truth


def test_prediction_on_another_grid_is_refused(tmp_path):
    truth = _case()
    with pytest.raises(ValueError, match="not on the grid"):
        score_case(_write(tmp_path / "p.nii.gz", truth[:, :, :39]), _write(tmp_path / "t.nii.gz", truth))


def test_a_case_without_a_written_prediction_is_an_error(tmp_path):
    label = _write(tmp_path / "t.nii.gz", _case())
    report = {"cases": {"a": {"status": "failed", "error": "cannot read", "outputs": {}}}}
    with pytest.raises(ValueError, match="case a: no prediction"):
        score_cases([{"case": "a", "image": [], "label": str(label)}], report)
