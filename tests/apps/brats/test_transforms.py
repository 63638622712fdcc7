from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import ConvertToMultiChannelBasedOnBratsClassesd, LoadImaged

from monai_iunet.apps.brats.cases import CaseError
from monai_iunet.apps.brats.transforms import (
    BratsLabelsFromRegions,
    BratsLabelsFromRegionsd,
    CheckBratsLabelsd,
    LoadModalitiesd,
)


@pytest.mark.parametrize("et_label", [4, 3])
def test_labels_from_regions_inverts_brats_conversion(et_label):
    label = torch.from_numpy(np.random.default_rng(0).choice([0, 1, 2, et_label], size=(1, 6, 6, 6)))
    regions = ConvertToMultiChannelBasedOnBratsClassesd("label", et_label=et_label)({"label": label})["label"]
    back = BratsLabelsFromRegionsd("label", et_label=et_label)({"label": regions.float()})["label"]
    torch.testing.assert_close(back, label.to(torch.uint8))
    # the array transform and the pure function give the same map (probabilities thresholded at 0.5)
    torch.testing.assert_close(BratsLabelsFromRegions(et_label)(0.9 * regions.float()), back)
    with pytest.raises(ValueError, match="et_label"):
        BratsLabelsFromRegionsd("label", et_label=2)
    with pytest.raises(ValueError, match="3 channels"):
        BratsLabelsFromRegions(et_label)(regions[:2])


def _write(path, data, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    return str(path)


def test_load_modalities_stacks_and_checks(tmp_path):
    volume = np.random.default_rng(0).random((8, 8, 8))
    paths = [_write(tmp_path / f"c_{m}.nii.gz", volume * (i + 1)) for i, m in enumerate(("t1", "t1ce", "t2", "flair"))]
    image = LoadModalitiesd("image")({"image": paths})["image"]
    assert image.shape == (4, 8, 8, 8)
    np.testing.assert_allclose(image[3].numpy(), volume * 4, rtol=1e-6)

    two_channels = _write(tmp_path / "c_two.nii.gz", np.stack([volume, volume], -1))
    with pytest.raises(CaseError, match="c_two.nii.gz has 2 channels"):
        LoadModalitiesd("image")({"image": paths[:3] + [two_channels]})
    far = np.eye(4)
    far[:3, 3] = 6.0  # same voxels, 6 mm away: overlaps the reference (T1ce) grid in only 2³ of 8³ voxels
    shifted = _write(tmp_path / "c_shifted.nii.gz", volume, far)
    with pytest.raises(CaseError, match=r"case case7: t2 .*c_shifted.nii.gz covers only 2% of the reference grid"):
        LoadModalitiesd("image")({"image": paths[:2] + [shifted, paths[3]], "case": "case7"})
    with pytest.raises(CaseError, match="case case7: expected 4 modalities"):
        LoadModalitiesd("image")({"image": paths[:2], "case": "case7"})


def test_modalities_on_other_grids_are_resampled_in_world_coordinates(tmp_path):
    """A coarser, shifted T2 lands on the reference (T1ce) grid: a linear ramp in world x survives resampling."""
    fine = np.diag([1.0, 1.0, 1.0, 1.0])
    ramp = np.broadcast_to(np.arange(16, dtype=np.float32)[:, None, None], (16, 16, 16))  # value = world x (mm)
    coarse = np.diag([2.0, 2.0, 2.0, 1.0])
    coarse[:3, 3] = [1.0, 0.0, 0.0]  # centre of voxel 0 at x = 1 mm
    coarse_ramp = np.broadcast_to((1.0 + 2.0 * np.arange(8, dtype=np.float32))[:, None, None], (8, 8, 8))
    paths = [_write(tmp_path / f"{m}.nii.gz", ramp, fine) for m in ("t1", "t1ce", "flair")]
    t2 = _write(tmp_path / "t2.nii.gz", coarse_ramp, coarse)
    loader = LoadModalitiesd("image", sources_key="sources")
    data = loader({"image": paths[:2] + [t2] + paths[2:]})
    image, sources = data["image"], data["sources"]
    assert image.shape == (4, 16, 16, 16)
    np.testing.assert_allclose(image.affine.numpy(), fine)
    # inside the coarse grid's extent (x from 1 to 15 mm) the ramp is exact under linear interpolation
    np.testing.assert_allclose(image[2, 1:16, 2:12, 2:12].numpy(), ramp[1:16, 2:12, 2:12], atol=1e-4)
    assert sources["reference"] == "t1ce" and sources["modalities"]["t2"]["resampled"] is True
    assert sources["modalities"]["t1"]["resampled"] is False


@pytest.mark.parametrize("reference", ["t1ce", "flair"])
def test_a_list_of_files_lands_on_the_reference_modality_grid(tmp_path, reference):
    """One rule for every form of input: the reference_modality's grid, not the first file's."""
    grids = {m: np.diag([s, s, s, 1.0]) for m, s in zip(("t1", "t1ce", "t2", "flair"), (2.0, 1.0, 1.5, 1.25))}
    paths = [_write(tmp_path / f"{m}.nii.gz", np.ones([int(16 / g[0, 0])] * 3, np.float32), g)
             for m, g in grids.items()]
    data = LoadModalitiesd("image", reference_modality=reference, sources_key="sources")({"image": paths})
    np.testing.assert_allclose(data["image"].affine.numpy(), grids[reference])
    assert data["image"].shape[1:] == (int(16 / grids[reference][0, 0]),) * 3
    assert data["sources"]["reference"] == reference


@pytest.mark.parametrize("layout", ["xyzc", "xyz1c"])
def test_one_multichannel_file_loads_like_four_files(tmp_path, layout):
    """MONAI Label sends one image per case: a 4D NIfTI X×Y×Z×4, or X×Y×Z×1×4 as NIfTI writers put vector data."""
    rng = np.random.default_rng(0)
    volumes = [rng.random((6, 7, 8)) for _ in range(4)]
    affine = np.diag([-1.5, 2.0, 2.5, 1.0])
    paths = [_write(tmp_path / f"c_{m}.nii.gz", v, affine) for m, v in zip(("t1", "t1ce", "t2", "flair"), volumes)]
    stacked = np.stack(volumes, -1)
    one = _write(tmp_path / "case3.nii.gz", stacked if layout == "xyzc" else stacked[:, :, :, None], affine)
    separate = LoadModalitiesd("image")({"image": paths})["image"]
    for value in (one, [one]):
        image = LoadModalitiesd("image")({"image": value})["image"]
        torch.testing.assert_close(image.as_tensor(), separate.as_tensor())
        np.testing.assert_allclose(image.affine.numpy(), affine)


def test_one_file_with_the_wrong_channel_count_is_named(tmp_path):
    volume = np.random.default_rng(0).random((6, 6, 6))
    three = _write(tmp_path / "case9.nii.gz", np.stack([volume] * 3, -1))
    with pytest.raises(CaseError, match=r"case case9: 'image' is one file, .*case9.nii.gz, with 3 channel\(s\); "
                                        r"expected either 4 channels \(t1, t1ce, t2, flair"):
        LoadModalitiesd("image")({"image": three})
    with pytest.raises(CaseError, match="expected 4 modalities .* got 2"):
        LoadModalitiesd("image")({"image": [three, three]})


def test_brats_2023_labels_with_the_2018_et_label_are_refused_with_the_fix(tmp_path):
    label = np.zeros((8, 8, 8), np.uint8)
    label[2:6, 2:6, 2:6], label[3:5, 3:5, 3:5], label[4, 4, 4] = 2, 1, 3  # BraTS 2023: enhancing tumour = 3
    path = _write(tmp_path / "BraTS-GLI-00001-000-seg.nii.gz", label)
    load = LoadImaged("label", image_only=True, ensure_channel_first=True)
    item = load({"case": "BraTS-GLI-00001-000", "label": path})
    with pytest.raises(CaseError, match=r"case BraTS-GLI-00001-000: label .*seg.nii.gz has values \[0, 1, 2, 3\].*"
                                        r"set et_label 3 \(BraTS 2023\+\)"):
        CheckBratsLabelsd("label", et_label=4)(item)
    CheckBratsLabelsd("label", et_label=3)(item)  # the right convention passes
    label[0, 0, 0] = 7
    with pytest.raises(CaseError, match="not a BraTS label map"):
        CheckBratsLabelsd("label", et_label=3)(load({"label": _write(tmp_path / "x_seg.nii.gz", label)}))
