"""The shipped BraTS ensemble (``models/model.pt``): it loads the way MONAI Deploy and MONAI Label load a bundle,
exports to TorchScript equal to eager, runs with the window its members were trained with, and segments a real brain
through ``inference.json`` at least as well as its model card says, with volumes, an uncertainty verdict and an
overview picture."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_iunet.apps.brats.data.location import real_data
from monai_iunet.apps.brats.data.studies import stack_modalities
from monai_iunet.apps.brats.labels import MODALITIES
from monai_iunet.apps.brats.metrics import score_case
from monai_iunet.bundle import bundle_parser
from monai_iunet.networks import MirrorEnsemble

from ..utils import monai_label_infer
from .conftest import BUNDLE, ROOT, check, run_bundle, verify_and_export, write_json

pytestmark = pytest.mark.slow  # loads and runs the shipped ensemble (make test-fast skips it)

SHIPPED = BUNDLE / "models" / "model.pt"
DATA = real_data()
METADATA = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
FOLDS = json.loads((ROOT / "configs" / "splits" / "brats_real_folds.json").read_text())["folds"]
MARGIN = 0.01  # Dice: thresholds of a re-run on another machine or thread count may flip a few voxels
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")


def _parser(config: str = "inference.json"):
    parser = bundle_parser(str(BUNDLE / "configs" / config))
    parser["bundle_root"] = str(BUNDLE)
    return parser


def test_shipped_weights_load_strictly_into_network_def():
    """MONAI Deploy's directory-bundle loading: ``network_def`` from inference.json + ``load_state_dict(strict)``:
    the five cross-validated members."""
    parser = _parser()
    network = parser.get_parsed_content("network_def")
    # one pass per member by default (plans#tta false); mirroring, a switch, adds the 7 flips
    assert isinstance(network, MirrorEnsemble) and len(network.members) == 5 and network.passes == [[]]
    parser["tta"] = True
    assert len(parser.get_parsed_content("network_def").passes) == 8
    network.load_state_dict(torch.load(SHIPPED, map_location="cpu", weights_only=True), strict=True)
    assert SHIPPED.stat().st_size < 90 * 2**20


def test_verify_net_in_out_and_torchscript_export_of_the_shipped_weights(tmp_path):
    exported = verify_and_export(BUNDLE, SHIPPED, tmp_path / "m.ts")
    network = _parser().get_parsed_content("network_def")
    network.load_state_dict(torch.load(SHIPPED, map_location="cpu", weights_only=True))
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), network.eval()(x))


def test_inference_window_is_the_training_crop_of_the_shipped_members():
    """One home for the model's facts: train.json, inference.json and the validation inside training read the
    plans; every shipped member was trained with the crop the plans name, and inference runs that window."""
    plans = METADATA["plans"]
    assert "window" not in plans  # the window is the crop: one fact
    inference, train = _parser(), _parser("train.json")
    assert list(inference.get_parsed_content("inferer").roi_size) == plans["patch_size"]
    assert inference.get_parsed_content("pixdim") == train.get_parsed_content("pixdim") == plans["pixdim"]
    assert train.get_parsed_content("roi_size") == plans["patch_size"]
    assert list(train.get_parsed_content("validate#inferer").roi_size) == plans["patch_size"]
    # the members' provenance lives beside the benchmarks, linked from the metadata, not loaded on every run
    assert "members" not in METADATA["performance"] and "brats_members.json" in METADATA["performance"]["provenance"]
    members = json.loads((ROOT / "docs" / "benchmarks" / "brats_members.json").read_text())["members"]
    assert [m["held_out"] for m in members] == FOLDS
    assert all(m["patch_size"] == plans["patch_size"] for m in members)


def test_metadata_carries_no_machine_path():
    text = json.dumps(METADATA)
    assert not re.search(r"/(work|root|home|tmp|Users)/", text), re.search(r".{40}/(work|root|home|tmp|Users)/.{40}",
                                                                          text)


def test_model_card_numbers_are_the_out_of_fold_scores():
    scores = json.loads((ROOT / "docs" / "benchmarks" / "brats_real.json").read_text())["final"]
    assert sorted(scores["cases"]) == sorted(c for fold in FOLDS for c in fold)
    card = METADATA["performance"]["out_of_fold"]["dice_mean"]
    for region in ("WT", "TC", "ET"):
        mean = np.mean([c[region]["dice"] for c in scores["cases"].values()])
        assert card[region] == pytest.approx(mean, abs=1e-3)
        assert METADATA["eval_metrics"][f"out_of_fold_{region.lower()}_dice"] == pytest.approx(mean, abs=1e-3)


@needs_data
def test_shipped_ensemble_segments_a_real_brain(tmp_path):
    """Through ``inference.json`` (the bundle's runner) and the way MONAI Label runs it (one 4-channel file): label
    values 0/1/2/4 on the input's own grid, the same label map both ways, at least the out-of-fold Dice the model
    card states for this case less ``MARGIN`` (4 of the 5 members trained on it, so the ensemble may do better);
    the report holds volumes equal to voxel counts times the voxel volume, an uncertainty verdict, and the
    overview PNG is written."""
    case = FOLDS[0][0]
    case_dir = next(DATA.glob(f"*/{case}"))
    images = [next(case_dir.glob(f"*_{m}.nii.gz")) for m in MODALITIES]
    truth = next(case_dir.glob("*_seg.nii.gz"))
    datalist = write_json(tmp_path / "list.json", {"testing": [{"case": case, "image": [str(p) for p in images]}]})
    # the shipped settings: 5 members, one pass each
    check(run_bundle(["configs/inference.json"], dataset_dir=tmp_path, data_list_file_path=datalist,
                     output_dir=tmp_path / "out", overview=True, write_dicom_seg=False, timeout=2400))
    written = nib.load(tmp_path / "out" / f"{case}_seg.nii.gz")
    source = nib.load(images[0])
    assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-4)
    label = np.asarray(written.dataobj)
    assert set(np.unique(label)) <= {0, 1, 2, 4} and {1, 2, 4} & set(np.unique(label))
    scores = score_case(tmp_path / "out" / f"{case}_seg.nii.gz", truth)
    card = json.loads((ROOT / "docs" / "benchmarks" / "brats_real.json").read_text())["final"]["cases"][case]
    for region in ("WT", "TC", "ET"):
        assert scores[region]["dice"] >= card[region]["dice"] - MARGIN, (region, scores[region], card[region])

    entry = json.loads((tmp_path / "out" / "inference_report.json").read_text())["cases"][case]
    voxel_ml = abs(np.linalg.det(written.affine[:3, :3])) / 1000
    expected = {"ET": (label == 4).sum(), "NCR": (label == 1).sum(), "ED": (label == 2).sum(),
                "TC": np.isin(label, (1, 4)).sum(), "WT": (label > 0).sum()}
    assert entry["volumes_ml"] == pytest.approx({k: v * voxel_ml for k, v in expected.items()}, abs=1e-3)
    uncertainty = entry["uncertainty"]
    assert uncertainty["passes"] == 1 and uncertainty["score"] > 0 and uncertainty["member_score"] > 0
    assert (uncertainty["kind"], uncertainty["region"]) == ("entropy", "WT") and "mirror_score" not in uncertainty
    assert uncertainty["threshold"] == METADATA["plans"]["uncertainty"]["threshold"]
    assert (tmp_path / "out" / f"{case}_overview.png").read_bytes()[:4] == b"\x89PNG"

    # MONAI Label's way (one 4-channel file, no runner) gives the runner's label map
    stacked = stack_modalities(images, tmp_path / f"{case}.nii.gz")
    data = monai_label_infer(stacked, SHIPPED)
    np.testing.assert_array_equal(data["pred"][0].numpy(), label)
