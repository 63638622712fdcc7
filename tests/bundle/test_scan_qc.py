"""Scan QC (issue 20): the flow's view of a case, its units, the transform and the report entry."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_iunet.apps.brats.labels import MODALITIES
from monai_iunet.apps.brats.qc import (
    INTENSITY_RANGE,
    LEVELS,
    QC_SHAPE,
    QC_SPACING,
    ScanQC,
    ScanQCd,
    bits_per_dim,
    dequantise,
    load_qc_flow,
    qc_levels,
    qc_volume,
    quantise,
    robust_threshold,
    save_qc_flow,
)
from monai_iunet.bundle import bundle_parser
from monai_iunet.networks import IUNetFlow
from monai_iunet.networks.flow import standard_normal_log_prob

from ..utils import DATA, REAL, bundle_runner, needs_data
from .conftest import BUNDLE

TINY_FLOW = {"spatial_dims": 3, "in_channels": 4, "num_levels": 2, "blocks_per_level": 1}


def save_flow(path, threshold: float, seed: int = 0):
    torch.manual_seed(seed)
    flow = IUNetFlow(**TINY_FLOW)
    return save_qc_flow(path, TINY_FLOW, flow.state_dict(), threshold=threshold)


def test_qc_volume_averages_to_4_mm_and_centres_the_brain():
    image = torch.zeros(4, 120, 100, 90)
    image[:, 30:70, 20:60, 10:50] = 3.0  # a 40³ box at 2 mm = 80 mm, off-centre
    out = qc_volume(image, (2.0, 2.0, 2.0))
    assert out.shape == (4, *QC_SHAPE)
    inside = torch.nonzero(out[0])
    assert torch.allclose(out[0][out[0] > 0], torch.tensor(3.0))  # a mean over 2×2×2 cells of a constant
    assert len(inside) == 20**3
    centre = (inside.min(0).values + inside.max(0).values + 1) / 2
    assert torch.all((centre - torch.tensor(QC_SHAPE) / 2).abs() <= 1)
    big = qc_volume(torch.ones(4, 200, 200, 200), (2.0, 2.0, 2.0))  # larger than the box: cropped, all inside
    assert big.shape == (4, *QC_SHAPE) and bool((big == 1).all())


def test_levels_round_trip_and_units():
    levels = torch.randint(0, LEVELS, (2, 4, 8, 8, 8)).float()
    assert torch.equal(quantise(dequantise(levels, noise=False)), levels)
    assert torch.equal(quantise(dequantise(levels, noise=True)), levels)
    assert quantise(torch.tensor([-100.0, 100.0])).tolist() == [0, LEVELS - 1]
    flow = IUNetFlow(3, 4, num_levels=2, blocks_per_level=1).double()  # the identity at init: z = orthogonal(x)
    x = dequantise(levels.double(), noise=False)
    step = (INTENSITY_RANGE[1] - INTENSITY_RANGE[0]) / LEVELS
    dims = levels[0].numel()
    expected = -(standard_normal_log_prob(x) + dims * math.log(step)) / (dims * math.log(2))
    torch.testing.assert_close(bits_per_dim(flow, levels.double()), expected)


def test_qc_flow_file_round_trip_and_a_training_flow_is_not_a_shipped_one(tmp_path):
    config = {"spatial_dims": 3, "in_channels": 4, "num_levels": 1, "blocks_per_level": 1}
    torch.manual_seed(0)
    flow = IUNetFlow(**config)
    save_qc_flow(tmp_path / "run.pt", config, flow.state_dict(), cases=["a"])
    with pytest.raises(ValueError, match="without a threshold"):
        ScanQC.load(tmp_path / "run.pt")
    save_qc_flow(tmp_path / "shipped.pt", config, flow.state_dict(), threshold=4.5, calibration="{}")
    loaded, fields = load_qc_flow(tmp_path / "shipped.pt")
    geometry = {"spacing_mm": QC_SPACING, "shape": list(QC_SHAPE)}
    assert fields == {"config": config, "geometry": geometry, "threshold": 4.5, "calibration": "{}"}
    assert not loaded.training
    assert all(torch.equal(a, b) for a, b in zip(flow.state_dict().values(), loaded.state_dict().values()))
    assert ScanQC.load(tmp_path / "shipped.pt").threshold == 4.5
    # the view the flow was trained on travels with it: a flow of another geometry scores at its own
    save_qc_flow(tmp_path / "coarse.pt", config, flow.state_dict(), qc_spacing=8.0, shape=(12, 12, 10), threshold=4.5)
    coarse = ScanQC.load(tmp_path / "coarse.pt")
    image = MetaTensor(torch.randn(4, 40, 40, 40), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    expected = bits_per_dim(flow.eval(), qc_levels(image, 8.0, (12, 12, 10))[None].float())
    assert coarse.shape == (12, 12, 10) and coarse.score(image) == pytest.approx(float(expected[0]), rel=1e-5)
    saved = torch.load(tmp_path / "shipped.pt", weights_only=True)
    del saved["geometry"]
    torch.save(saved, tmp_path / "old.pt")
    with pytest.raises(ValueError, match="without its geometry"):
        ScanQC.load(tmp_path / "old.pt")


def test_robust_threshold():
    assert robust_threshold([1.0, 2.0, 3.0, 4.0, 100.0]) == pytest.approx(3.0 + 4 * 1.4826 * 1.0)


def test_scan_qc_transform_scores_flags_and_can_be_switched_off(tmp_path):
    image = MetaTensor(torch.randn(4, 96, 96, 80), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    low, high = save_flow(tmp_path / "low.pt", -1.0), save_flow(tmp_path / "high.pt", 1e9)
    flagged = ScanQCd("image", low)({"image": image, "case": "c"})["qc"]
    passed = ScanQCd("image", high)({"image": image})["qc"]
    assert flagged["flagged"] and not passed["flagged"] and flagged["units"] == "bits/dim"
    assert flagged["score"] == passed["score"] and 0 < flagged["score"] < 20
    assert ScanQCd("image", tmp_path / "none.pt", enabled=False)({"image": image})["qc"] == {"enabled": False}
    with pytest.raises(FileNotFoundError, match="set scan_qc: false"):
        ScanQCd("image", tmp_path / "none.pt")


def test_typicality_both_ways(tmp_path, caplog):
    """A score below the lower threshold (more likely than every training case: an image simpler than a brain) is
    flagged too, and the report says which way."""
    image = MetaTensor(torch.randn(4, 96, 96, 80), affine=torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0])))
    weights = tmp_path / "two_sided.pt"
    flow = IUNetFlow(**TINY_FLOW)
    save_qc_flow(weights, TINY_FLOW, flow.state_dict(), threshold=1e9, lower_threshold=1e8)
    qc = ScanQCd("image", weights)({"image": image, "case": "slab"})["qc"]
    assert qc["flagged"] and qc["why"].startswith("simpler than any BraTS training case")
    assert qc["lower_threshold"] == 1e8 and "slab looks simpler" in caplog.text
    qc = ScanQCd("image", save_flow(tmp_path / "one_sided.pt", 1e9))({"image": image})["qc"]
    assert not qc["flagged"] and "why" not in qc and qc["lower_threshold"] == -float("inf")


@pytest.mark.slow
def test_qc_lands_in_the_inference_report_and_the_case_is_still_segmented(sphere_study, tmp_path):  # noqa: F811
    weights = save_flow(tmp_path / "qc.pt", threshold=-1.0)  # everything is flagged
    report = bundle_runner(sphere_study, "sphere", tmp_path / "out", scan_qc=True, qc_weights=str(weights)).run()
    case = report["cases"]["sphere"]
    assert case["status"] == "ok" and case["outputs"]["nifti"]["status"] == "written"
    assert Path(case["outputs"]["nifti"]["path"]).name == "sphere_seg.nii.gz"
    assert case["qc"]["flagged"] is True and case["qc"]["threshold"] == -1.0
    assert case["review"]["needed"] is True and case["review"]["because"][0] == "scan QC"  # the signals in one place
    saved = json.loads((tmp_path / "out" / "inference_report.json").read_text())
    assert saved["cases"]["sphere"]["qc"] == case["qc"]
    assert np.isfinite(case["qc"]["score"])


SHIPPED = BUNDLE / "models" / "qc_flow.pt"


def test_the_shipped_qc_flow_and_its_calibration():
    saved = torch.load(SHIPPED, weights_only=True)
    calibration = json.loads(saved["calibration"])
    flow = IUNetFlow(**saved["config"])
    flow.load_state_dict(saved["state_dict"])  # strict
    oof = list(calibration["out_of_fold_bits_per_dim"].values())
    assert len(oof) == 24 and saved["threshold"] == pytest.approx(robust_threshold(oof), abs=1e-3)
    assert saved["lower_threshold"] == pytest.approx(robust_threshold(oof, -4.0), abs=1e-3)
    assert saved["lower_threshold"] < min(oof)
    assert calibration["lower_rule"] == "median - 4 * 1.4826 * MAD of OOF"
    assert calibration["flagged_out_of_fold"] == sorted(c for c, s in calibration["out_of_fold_bits_per_dim"].items()
                                                        if s > saved["threshold"])
    assert len(calibration["commit"]) == 40 and calibration["training_s"] > 0
    parser = bundle_parser(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE)})
    assert parser.get_parsed_content("scan_qc") is True
    assert Path(parser.get_parsed_content("qc_weights")) == SHIPPED


@needs_data
def test_the_shipped_qc_passes_a_real_brats_case_and_flags_a_raw_unstripped_head():
    """Through the bundle's own pre-processing: a real BraTS case scores inside the cross-validated range; a real
    raw head (the Siemens XA30 T1 as all four modalities, brain extraction off) is flagged."""
    parser = bundle_parser(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "device": "$torch.device('cpu')", "skull_strip": False})
    preprocessing = parser.get_parsed_content("preprocessing")
    case = DATA / "brats_real" / "Brats18_CBICA_AQR_1"
    brats = preprocessing({"image": [str(next(case.glob(f"*_{m}.nii.gz"))) for m in MODALITIES]})["qc"]
    calibration = json.loads(torch.load(SHIPPED, weights_only=True)["calibration"])
    assert not brats["flagged"] and brats["score"] < max(calibration["out_of_fold_bits_per_dim"].values())
    head = preprocessing({"image": [str(REAL["siemens_enhanced"])] * 4, "case": "raw"})["qc"]
    assert head["flagged"] and head["score"] > brats["score"] + 2
