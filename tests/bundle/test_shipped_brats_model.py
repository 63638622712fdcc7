"""The shipped BraTS weights (``models/model.pt``): they load the way MONAI Deploy and MONAI Label load a bundle,
export to TorchScript equal to eager, and still segment a real held-out brain as well as the model card says."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser

from monai_iunet.apps.brats.data.studies import stack_modalities
from monai_iunet.apps.brats.labels import MODALITIES
from monai_iunet.apps.brats.metrics import score_case

from .conftest import BUNDLE, ROOT, check, run_bundle, verify_and_export, write_json
from .test_monai_label import monai_label_infer

SHIPPED = BUNDLE / "models" / "model.pt"
DATA = ROOT.parent / "shared" / "data"
METADATA = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
HELD_OUT = json.loads((ROOT / "configs" / "splits" / "brats_real_holdout.json").read_text())["testing"]
MARGIN = 0.01  # Dice: thresholds of a re-run on another machine or thread count may flip a few voxels
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")


def _network() -> torch.nn.Module:
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "inference.json"))
    return parser.get_parsed_content("network_def")


def test_shipped_weights_load_strictly_into_network_def():
    """MONAI Deploy's directory-bundle loading: ``network_def`` from inference.json + ``load_state_dict(strict)``."""
    assert SHIPPED.is_file() and SHIPPED.stat().st_size < 40 * 2**20
    network = _network()
    network.load_state_dict(torch.load(SHIPPED, map_location="cpu", weights_only=True), strict=True)


def test_verify_net_in_out_and_torchscript_export_of_the_shipped_weights(tmp_path):
    exported = verify_and_export(BUNDLE, SHIPPED, tmp_path / "m.ts")
    network = _network()
    network.load_state_dict(torch.load(SHIPPED, map_location="cpu", weights_only=True))
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), network.eval()(x))


def test_model_card_numbers_are_the_held_out_cases():
    performance = METADATA["performance"]["held_out"]
    assert sorted(performance["per_case"]) == sorted(HELD_OUT)
    for region in ("WT", "TC", "ET"):
        mean = np.mean([c[region]["dice"] for c in performance["per_case"].values()])
        assert performance["dice_mean"][region] == pytest.approx(mean, abs=1e-3)
        assert METADATA["eval_metrics"][f"held_out_{region.lower()}_dice"] == pytest.approx(mean, abs=1e-3)


@needs_data
def test_shipped_model_segments_a_real_held_out_brain(tmp_path):
    """Through ``inference.json`` (the bundle's runner) and the way MONAI Label runs it (one 4-channel file): label
    values 0/1/2/4 on the input's own grid, the same label map both ways, and at least the Dice the model card
    states for this case, less ``MARGIN``."""
    case = HELD_OUT[0]
    case_dir = next(DATA.glob(f"*/{case}"))
    images = [next(case_dir.glob(f"*_{m}.nii.gz")) for m in MODALITIES]
    truth = next(case_dir.glob("*_seg.nii.gz"))
    datalist = write_json(tmp_path / "list.json", {"testing": [{"case": case, "image": [str(p) for p in images]}]})
    check(run_bundle(["configs/inference.json"], dataset_dir=tmp_path, data_list_file_path=datalist,
                     output_dir=tmp_path / "out"))
    written = nib.load(tmp_path / "out" / f"{case}_seg.nii.gz")
    source = nib.load(images[0])
    assert written.shape == source.shape and np.allclose(written.affine, source.affine, atol=1e-4)
    label = np.asarray(written.dataobj)
    assert set(np.unique(label)) <= {0, 1, 2, 4} and {1, 2, 4} & set(np.unique(label))
    scores = score_case(tmp_path / "out" / f"{case}_seg.nii.gz", truth)
    card = METADATA["performance"]["held_out"]["per_case"][case]
    for region in ("WT", "TC", "ET"):
        assert scores[region]["dice"] >= card[region]["dice"] - MARGIN, (region, scores[region], card[region])

    stacked = stack_modalities(images, tmp_path / f"{case}.nii.gz")
    data = monai_label_infer(stacked, SHIPPED)
    np.testing.assert_array_equal(data["pred"][0].numpy(), label)
