"""Brain extraction for raw heads (deepbet) and its ``auto`` rule, on the real data: the real T1 series of
``../shared/data/dicom`` are raw heads (one is a QA phantom), the real BraTS cases are already skull-stripped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import LoadImage
from scipy.ndimage import binary_closing, binary_fill_holes

from monai_iunet.apps.brats.brain_extraction import SkullStripd, looks_skull_stripped
from monai_iunet.apps.brats.cases import CaseError
from monai_iunet.dicom.geometry import volume_to_metatensor
from monai_iunet.dicom.series import index_dicom_files, read_series_volume

from ...utils import DATA, REAL, needs_data

HEADS = ("siemens_enhanced", "siemens_2d_gaps")  # real heads; "ge_oblique" is the QA phantom of dcm_qa_ge


def real_series(name: str):
    (series,) = [s for s in index_dicom_files(REAL[name]) if not s.excluded]
    return volume_to_metatensor(read_series_volume(series), name)


def brats_case(case_dir):
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    return torch.cat([loader(str(next(case_dir.glob(f"*_{m}.nii.gz")))) for m in ("t1", "t1ce", "t2", "flair")])


@needs_data
def test_auto_rule_tells_brats_files_from_raw_heads():
    cases = sorted(p for p in (DATA / "brats_real").iterdir() if p.is_dir())
    assert len(cases) >= 20
    for case_dir in cases:
        t1ce = LoadImage(image_only=True)(str(next(case_dir.glob("*_t1ce.nii.gz"))))
        assert looks_skull_stripped(t1ce, t1ce.affine)[0], case_dir.name
    for name in REAL:
        image = real_series(name)
        stripped, why = looks_skull_stripped(image[0], image.affine)
        assert not stripped, (name, why)


@needs_data
@pytest.mark.parametrize("name", HEADS)
def test_brain_mask_of_a_real_head_is_a_brain_inside_the_head_applied_to_every_channel(name):
    head = real_series(name)
    channels = torch.cat([head, 0.5 * head, head + 1.0, 2.0 * head])  # four distinct channels on the T1's grid
    out = SkullStripd("image", mode="auto", mask_key="brain_mask")({"image": channels, "case": name})
    record, mask = out["brain_extraction"], out["brain_mask"][0].numpy().astype(bool)
    assert record["applied"] and record["tool"] == "deepbet" and record["version"]
    assert record["seconds"] > 0 and mask.shape == tuple(head.shape[1:])
    voxel_ml = abs(np.linalg.det(head.affine.numpy()[:3, :3])) / 1000
    assert record["brain_ml"] == pytest.approx(mask.sum() * voxel_ml, rel=1e-3)
    assert 1100 < record["brain_ml"] < 1900  # an adult brain (intracranial volume 1.2-1.8 L)
    t1 = head[0].numpy()
    # the head: everything clearly above the air, with what it encloses (dark CSF, skull)
    head_mask = binary_fill_holes(binary_closing(t1 > 0.05 * np.percentile(t1, 99), iterations=2))
    assert head_mask[mask].mean() > 0.98  # the brain lies in the head, not in the air
    assert 0.15 < mask.sum() / head_mask.sum() < 0.6  # and is part of it: scalp, skull, neck are outside
    assert mask.sum() < np.count_nonzero(t1)
    assert t1[mask].mean() > 2 * t1[~mask].mean()
    image = out["image"].numpy()
    assert np.all(image[:, ~mask] == 0)  # every channel is cut by the one mask
    np.testing.assert_array_equal(image[:, mask], channels.numpy()[:, mask])  # and untouched inside
    np.testing.assert_allclose(out["image"].affine, head.affine)


@needs_data
def test_qa_phantom_is_refused_not_segmented():
    """deepbet returns a 1.6 L "brain" for the GE QA phantom; the darker-than-the-rest check refuses it."""
    phantom = real_series("ge_oblique")
    with pytest.raises(CaseError, match=r"case qa: brain extraction on t1ce .* not a whole-brain"):
        SkullStripd("image")({"image": phantom.repeat(4, 1, 1, 1), "case": "qa"})


@needs_data
def test_auto_leaves_an_already_stripped_brats_case_untouched():
    case_dir = DATA / "brats_real" / "Brats18_CBICA_AQR_1"
    image = brats_case(case_dir)
    out = SkullStripd("image", mode="auto", mask_key="brain_mask")({"image": image.clone()})
    assert out["brain_extraction"]["applied"] is False and "exactly zero" in out["brain_extraction"]["why"]
    assert "brain_mask" not in out
    assert torch.equal(out["image"], image)


def test_skull_strip_false_never_runs_the_tool(monkeypatch):
    import monai_iunet.apps.brats.brain_extraction as module

    monkeypatch.setattr(module, "extract_brain", lambda *a, **k: pytest.fail("brain extraction ran"))
    image = torch.rand(4, 8, 8, 8) + 1.0  # no zero background: auto would strip it
    out = SkullStripd("image", mode=False)({"image": image})
    assert out["brain_extraction"] == {"mode": "false", "modality": "t1ce", "applied": False,
                                       "why": "skull_strip: false"}
    assert torch.equal(out["image"], image)


def test_an_implausible_mask_volume_is_an_error_naming_the_case(monkeypatch):
    import monai_iunet.apps.brats.brain_extraction as module

    monkeypatch.setattr(module, "extract_brain", lambda image, *a, **k: np.ones(image.shape, bool))  # all = brain
    image = torch.rand(4, 20, 20, 20) + 1.0  # 1 mm voxels: 8 mL
    with pytest.raises(CaseError, match=r"case tiny: brain extraction on t1ce gave 8 mL, outside the plausible"):
        SkullStripd("image", mode="true")({"image": image, "case": "tiny"})


@pytest.mark.parametrize("kwargs, message", [({"mode": "maybe"}, "skull_strip must be"),
                                             ({"modality": "flair"}, "T1-weighted channel"),
                                             ({"modality": "t1", "modalities": ("t1ce", "t2")}, "is not one of")])
def test_bad_settings_are_refused_early(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SkullStripd("image", **kwargs)
