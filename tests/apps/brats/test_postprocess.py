"""Tumour volumes, nnU-Net's small-ET rule, the case uncertainty score and the overview picture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_iunet.apps.brats.findings import case_findings
from monai_iunet.apps.brats.overview import write_overview
from monai_iunet.apps.brats.postprocess import (
    CaseUncertaintyd,
    SuppressSmallEnhancingd,
    TumourVolumesd,
    tumour_volumes,
    uncertainty_score,
)


def _label(et_label=4, spacing=(1.0, 1.5, 2.0)):
    """A label map with known counts: 8 NCR, 27 ED, 64 ET voxels on an anisotropic grid."""
    label = torch.zeros(1, 12, 12, 12, dtype=torch.uint8)
    label[0, :3, :3, :3] = 2  # 27
    label[0, 4:6, 4:6, 4:6] = 1  # 8
    label[0, 7:11, 7:11, 7:11] = et_label  # 64
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = (-10, 20, 5)
    return MetaTensor(label, affine=torch.as_tensor(affine))


@pytest.mark.parametrize("et_label", [4, 3])
def test_volumes_are_voxel_counts_times_voxel_volume(et_label):
    voxel_ml = 1.0 * 1.5 * 2.0 / 1000
    volumes = tumour_volumes(_label(et_label), et_label)
    assert volumes == pytest.approx({"ET": 64 * voxel_ml, "NCR": 8 * voxel_ml, "ED": 27 * voxel_ml,
                                     "TC": 72 * voxel_ml, "WT": 99 * voxel_ml}, abs=1e-3)
    assert TumourVolumesd("pred", et_label)({"pred": _label(et_label)})["volumes_ml"] == volumes


def test_small_enhancing_tumour_becomes_necrotic_core():
    label = _label()  # 64 ET voxels of 3 µL: 0.192 mL
    kept = SuppressSmallEnhancingd("pred", 4, min_volume_ml=0.19)({"pred": label})["pred"]
    assert torch.equal(kept, label)
    relabelled = SuppressSmallEnhancingd("pred", 4, min_volume_ml=0.2)({"pred": label})["pred"]
    assert int((relabelled == 4).sum()) == 0 and int((relabelled == 1).sum()) == 72
    assert torch.equal(relabelled.affine, label.affine)
    assert int((label == 4).sum()) == 64  # the input is not changed in place
    assert torch.equal(SuppressSmallEnhancingd("pred", 4, 0.0)({"pred": label})["pred"], label)
    with pytest.raises(ValueError):
        SuppressSmallEnhancingd("pred", 4, min_volume_ml=-1)


def test_uncertainty_score_and_flag():
    probabilities = torch.zeros(3, 8, 8, 8)
    probabilities[:, 2:6, 2:6, 2:6] = 1.0  # 3 x 64 voxels of tumour
    spread = torch.zeros_like(probabilities)
    spread[1, 2:6, 2:6, 2] = 0.5  # 16 voxels disagree by 0.5
    assert uncertainty_score(probabilities, spread) == pytest.approx(8 / 192)
    assert uncertainty_score(torch.zeros(3, 4, 4, 4), torch.full((3, 4, 4, 4), 0.1)) == pytest.approx(19.2)
    entropy = torch.zeros_like(probabilities)
    entropy[0, 2:6, 2:6, 5] = 0.75  # 16 voxels at 0.75 bits
    data = {"pred": probabilities, "mirror_spread": spread, "member_spread": 2 * spread, "entropy": entropy}
    out = CaseUncertaintyd("pred", threshold=0.04, passes=8, kind="mirror_spread")(data)
    assert not {"mirror_spread", "member_spread", "entropy"} & set(out)
    assert out["uncertainty"]["flagged"] and out["uncertainty"]["score"] == pytest.approx(8 / 192, abs=1e-5)
    assert out["uncertainty"]["member_score"] == pytest.approx(16 / 192, abs=1e-5)
    assert out["uncertainty"]["entropy_score"] == pytest.approx(12 / 192, abs=1e-5)
    assert not CaseUncertaintyd("pred", threshold=0.05, passes=8, kind="mirror_spread")(data)["uncertainty"]["flagged"]
    # the entropy score needs no mirroring: one pass per member measures it, and its threshold decides
    one_pass = CaseUncertaintyd("pred", threshold=0.06, passes=1)(data)["uncertainty"]
    assert one_pass["kind"] == "entropy" and one_pass["score"] == pytest.approx(12 / 192, abs=1e-5)
    assert one_pass["flagged"] and "mirror_score" not in one_pass  # one pass: no mirror spread to speak of
    assert not CaseUncertaintyd("pred", threshold=0.07, passes=1)(data)["uncertainty"]["flagged"]
    single = CaseUncertaintyd("pred", threshold=0.04, passes=1, kind="mirror_spread")(data)["uncertainty"]
    assert single["score"] is None and not single["flagged"] and "mirroring" in single["why"]
    assert "not measured" in str(case_findings({"uncertainty": single})[0])
    missing = CaseUncertaintyd("pred", threshold=0.04, passes=8)({"pred": probabilities})["uncertainty"]
    assert missing["score"] is None and not missing["flagged"] and "no uncertainty maps" in missing["why"]
    with pytest.raises(ValueError, match="kind"):
        CaseUncertaintyd("pred", threshold=0.04, passes=8, kind="variance")
    # over one region's channel: the WT channel (index 1) holds the mirror spread, channel 0 the entropy
    wt = CaseUncertaintyd("pred", threshold=0.1, passes=8, region="WT")(data)["uncertainty"]
    assert wt["region"] == "WT" and wt["score"] == 0 and wt["mirror_score"] == pytest.approx(8 / 64, abs=1e-5)
    tc = CaseUncertaintyd("pred", threshold=0.1, passes=8, region="TC")(data)["uncertainty"]
    assert tc["score"] == pytest.approx(12 / 64, abs=1e-5) and tc["flagged"]
    with pytest.raises(ValueError, match="region"):
        CaseUncertaintyd("pred", threshold=0.04, passes=8, region="NCR")


def test_overview_png(tmp_path):
    label = _label()
    image = MetaTensor(torch.rand(4, 12, 12, 12), affine=label.affine.clone())
    entry = {"volumes_ml": tumour_volumes(label), "uncertainty": {"score": 0.2, "threshold": 0.1, "flagged": True},
             "qc": {"score": 3.0, "flagged": False}}
    path = write_overview(image, label, tmp_path / "case_overview.png", 4, entry)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    qc, uncertainty = case_findings(entry)[1:]
    assert "HIGH" in uncertainty.text and uncertainty.flagged
    assert "looks like the training cases" in qc.text and not qc.flagged


def test_findings_in_words_with_the_flagged_ones_marked():
    entry = {"volumes_ml": {"WT": 12.0, "TC": 5.0, "ET": 3.0, "NCR": 2.0, "ED": 7.0},
             "rano": {"lesions": [{"longest_mm": 21.0, "perpendicular_mm": 12.0}], "measurable": 1,
                      "sum_of_products_mm2": 252.0},
             "qc": {"score": 5.1, "threshold": 4.35, "lower_threshold": 1.68, "flagged": True, "why": "unusual"},
             "modality_check": {"flagged": True, "findings": ["the T2 slot looks like FLAIR"],
                                "log_likelihood_ratio": 3.2, "threshold": 1.0},
             "uncertainty": {"score": 0.05, "threshold": 0.13, "flagged": False},
             "review": {"needed": True, "because": ["scan QC", "modality check"]}}
    findings = {f.name: f for f in case_findings(entry)}
    assert list(findings) == ["tumour volumes", "RANO", "scan QC", "modality check", "uncertainty", "review"]
    assert findings["tumour volumes"].text.startswith("WT 12.0 mL, TC 5.0 mL, ET 3.0 mL")
    assert "1 measurable enhancing lesion(s) of 1, sum of products 252 mm2; largest 21 x 12 mm" in str(findings["RANO"])
    assert [name for name, f in findings.items() if f.flagged] == ["scan QC", "modality check", "review"]
    assert "the T2 slot looks like FLAIR" in findings["modality check"].text
    assert str(findings["review"]) == "review: NEEDED (scan QC, modality check flagged the case)"
    assert case_findings({}) == []
