"""One pre-processing for training and inference: train.json's loading chain and inference.json's pre-processing
(both built on ``transforms.network_input``) give the network the same tensor for a case, on the same grid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from monai_iunet.apps.brats.data.synthetic import case_files, write_dataset
from monai_iunet.apps.brats.labels import MODALITIES
from monai_iunet.apps.brats.qc import checked_input
from monai_iunet.bundle import bundle_parser

from ..utils import BUNDLE, REAL_CASE


def _both(item: dict) -> tuple[dict, dict]:
    train = bundle_parser(BUNDLE / "configs" / "train.json")
    inference = bundle_parser(BUNDLE / "configs" / "inference.json")
    # the deterministic parts only: no brain extraction (BraTS files are stripped), no QC models
    inference.update({"skull_strip": "false", "scan_qc": False})
    trained_on = Compose(train.get_parsed_content("load_transforms"))(dict(item))
    inferred_on = inference.get_parsed_content("preprocessing")({"image": item["image"]})
    return trained_on, inferred_on


def _assert_same_input(trained_on: dict, inferred_on: dict) -> None:
    image = inferred_on["image"]
    assert torch.equal(trained_on["image"].as_tensor(), image.as_tensor())
    np.testing.assert_allclose(trained_on["image"].affine, image.affine, atol=1e-6)
    assert trained_on["label"].shape[1:] == image.shape[1:] and trained_on["label"].shape[0] == 3
    np.testing.assert_allclose(trained_on["label"].affine, image.affine, atol=1e-6)
    assert trained_on["label"].dtype == torch.float32 and set(trained_on["label"].unique().tolist()) <= {0.0, 1.0}


def test_training_and_inference_see_the_same_input(tmp_path):
    (case,) = write_dataset(tmp_path, cases=1, shape=(48, 40, 36), spacing=1.5)
    files = case_files(case, case.name)
    item = {"image": [str(files[m]) for m in MODALITIES], "label": str(files["seg"])}
    trained_on, inferred_on = _both(item)
    _assert_same_input(trained_on, inferred_on)
    # at the plans' 2 mm the 1.5 mm case shrinks by 3/4, then to the brain's box
    assert all(n <= round(s * 1.5 / 2) + 1 for n, s in zip(inferred_on["image"].shape[1:], (48, 40, 36)))
    # what the scan QC and the modality check are trained on is what they see at inference
    checked = checked_input(skull_strip="false")({"image": item["image"]})["image"]
    assert torch.equal(checked.as_tensor(), inferred_on["image"].as_tensor())
    # the network's input is a z-score over the brain of each channel
    brain = inferred_on["image"][0] != 0
    assert abs(float(inferred_on["image"][0][brain].mean())) < 1e-4


def test_on_a_real_case():
    if not REAL_CASE.is_dir():
        pytest.skip("../shared/data not present")
    name = REAL_CASE.name
    item = {"image": [str(REAL_CASE / f"{name}_{m}.nii.gz") for m in MODALITIES],
            "label": str(REAL_CASE / f"{name}_seg.nii.gz")}
    _assert_same_input(*_both(item))
