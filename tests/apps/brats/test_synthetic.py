from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage

from monai_iunet.apps.brats.data.datalist import main as datalist_main
from monai_iunet.apps.brats.data.datalist import make_datalist
from monai_iunet.apps.brats.data.synthetic import make_case, write_dataset
from monai_iunet.apps.brats.inference import describe_error
from monai_iunet.apps.brats.labels import MODALITIES
from monai_iunet.bundle import bundle_parser
from monai_iunet.dicom.geometry import volume_to_metatensor
from monai_iunet.dicom.series import index_dicom_files, read_series_volume

from ...bundle.conftest import BUNDLE


def test_cases_are_deterministic_and_varied():
    a, b = (make_case(np.random.default_rng(3), (32, 32, 32)) for _ in range(2))
    c = make_case(np.random.default_rng(4), (32, 32, 32))
    for m in MODALITIES:
        np.testing.assert_array_equal(a.images[m], b.images[m])
    assert not np.array_equal(a.label, c.label)


@pytest.mark.parametrize("et_label", [4, 3])
def test_tumour_regions_and_contrasts(et_label):
    case = make_case(np.random.default_rng(0), (48, 48, 48), et_label=et_label)
    assert set(np.unique(case.label)) == {0, 1, 2, et_label}
    edema, enhancing, brain = case.label == 2, case.label == et_label, case.images["t1"] > 0.7 * 1000
    brain &= case.label == 0  # white matter outside the tumour
    assert case.images["flair"][edema].mean() > 1.5 * case.images["flair"][brain].mean()  # edema bright on FLAIR
    assert case.images["t2"][edema].mean() > 1.5 * case.images["t2"][brain].mean()
    assert case.images["t1ce"][enhancing].mean() > 1.5 * case.images["t1"][enhancing].mean()  # enhancing rim


def test_2023_naming_and_datalist(tmp_path):
    write_dataset(tmp_path, cases=3, shape=(16, 16, 16), naming="2023")
    case_dir = tmp_path / "BraTS-GLI-00001-000"
    assert sorted(p.name for p in case_dir.iterdir()) == sorted(
        f"BraTS-GLI-00001-000-{s}.nii.gz" for s in ("t1n", "t1c", "t2w", "t2f", "seg")
    )
    assert 3 in np.unique(np.asarray(nib.load(case_dir / "BraTS-GLI-00001-000-seg.nii.gz").dataobj))
    datalist = make_datalist(tmp_path, val_fraction=0.34)
    assert len(datalist["training"]) == 2 and len(datalist["validation"]) == 1
    assert [p.rsplit("-", 1)[1] for p in datalist["training"][0]["image"]] == [
        "t1n.nii.gz", "t1c.nii.gz", "t2w.nii.gz", "t2f.nii.gz"]  # channel order T1, T1ce, T2, FLAIR
    assert datalist["label_convention"] == {"naming": "2023", "et_label": 3}


def test_training_takes_et_label_from_the_datalist_and_keeps_the_2023_enhancing_tumour(tmp_path):
    """train.json's et_label comes from the datalist's detected convention: 2023 labels (ET = 3) reach the ET
    channel; with the default 4 they would be refused by the label check."""
    write_dataset(tmp_path, cases=2, shape=(24, 24, 24), naming="2023")
    datalist_main(["--dataset-dir", str(tmp_path), "--output", str(tmp_path / "datalist.json")])
    parser = bundle_parser(str(BUNDLE / "configs" / "train.json"))
    parser.update({"bundle_root": str(BUNDLE), "dataset_dir": str(tmp_path), "device": "cpu"})
    assert parser.get_parsed_content("et_label") == 3
    item = parser.get_parsed_content("train_datalist")[0]
    label = LoadImage(image_only=True)(item["label"])
    preprocessing = parser.get_parsed_content("train#preprocessing")
    sample = preprocessing(item)
    sample = sample[0] if isinstance(sample, list) else sample
    assert sample["label"].shape[0] == 3 and sample["label"][2].sum() > 0  # the ET channel is not empty
    assert (label == 3).sum() > 0
    parser.update({"et_label": 4})
    with pytest.raises(RuntimeError) as failure:  # MONAI's Compose wraps the CaseError
        parser.get_parsed_content("train#preprocessing", lazy=False)(item)
    assert "CaseError" in describe_error(failure.value) and "set et_label 3" in describe_error(failure.value)


def test_a_datalist_of_mixed_conventions_is_refused_naming_the_cases(tmp_path):
    write_dataset(tmp_path / "old", cases=1, shape=(16, 16, 16))
    write_dataset(tmp_path / "new", cases=1, shape=(16, 16, 16), naming="2023")
    with pytest.raises(ValueError, match=r"mix the BraTS naming.*BraTS 2020 \(BraTS20_Training_001\).*"
                                         r"BraTS 2023 \(BraTS-GLI-00001-000\)"):
        make_datalist(tmp_path)


def test_datalist_command_and_unlabelled_cases(tmp_path):
    write_dataset(tmp_path, cases=3, shape=(16, 16, 16))
    (tmp_path / "BraTS20_Training_003" / "BraTS20_Training_003_seg.nii.gz").unlink()
    datalist_main(["--dataset-dir", str(tmp_path), "--output", str(tmp_path / "list.json")])
    datalist = json.loads((tmp_path / "list.json").read_text())
    assert len(datalist["testing"]) == 1 and "label" not in datalist["testing"][0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no BraTS cases"):
        make_datalist(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_datalist(tmp_path / "missing")


@pytest.mark.parametrize("reader", ["ITKReader", "PydicomReader"])
def test_dicom_series_matches_nifti(tmp_path, reader):
    write_dataset(tmp_path, cases=1, shape=(24, 20, 16), spacing=4.0, dicom_cases=1)
    case = tmp_path / "BraTS20_Training_001"
    nifti = LoadImage(image_only=True)(case / "BraTS20_Training_001_flair.nii.gz")
    dicom = LoadImage(reader=reader, image_only=True)(case / "dicom" / "flair")
    assert dicom.shape == nifti.shape
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-3)
    np.testing.assert_allclose(np.asarray(dicom), np.asarray(nifti), atol=float(nifti.max()) / 4000)
    (flair,) = index_dicom_files(case / "dicom" / "flair")
    (t1,) = index_dicom_files(case / "dicom" / "t1")
    assert flair.frame_of_reference == t1.frame_of_reference and flair.uid != t1.uid
    # highdicom's reading (the inference path) gives the NIfTI's voxels at the NIfTI's world positions.
    volume = volume_to_metatensor(read_series_volume(flair), "flair")
    world = volume.affine.numpy() @ np.array([3.0, 5.0, 7.0, 1.0])
    voxel = np.rint(np.linalg.inv(nifti.affine.numpy()) @ world).astype(int)[:3]
    np.testing.assert_allclose(float(volume[0, 3, 5, 7]), float(nifti[tuple(voxel)]), atol=float(nifti.max()) / 4000)
