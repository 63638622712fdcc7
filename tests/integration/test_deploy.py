"""The MONAI Deploy application (``deploy/brats_iunet_app``), run as the SDK runs apps (``python <app folder> -i -o
-m``) in its own environment (``make deploy-env``): a real case as a DICOM study gives a valid SEG equal to what
``monai-iunet-segment`` writes for the same study; a study without a FLAIR fails with the error in the output folder
and nothing else written; a model path that is no bundle is refused with what to pass."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from monai_iunet.apps.brats.data.synthetic import make_case, write_pacs_study

from ..utils import BUNDLE, ROOT, assert_dicom_valid, check, write_real_study

pytestmark = pytest.mark.slow  # each case runs the app in a subprocess

APP = ROOT / "deploy" / "brats_iunet_app"
DEPLOY_PYTHON = ROOT / ".venv-deploy" / "bin" / "python"  # the SDK's environment (make deploy-env, part of install)
if not DEPLOY_PYTHON.is_file() and not os.environ.get("CI"):
    pytest.skip("the MONAI Deploy environment is not installed (make deploy-env)", allow_module_level=True)
SEGMENT = [sys.executable, "-m", "monai_iunet.apps.brats.segment"]


def run_app(study: Path, output: Path, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(DEPLOY_PYTHON), str(APP), "-i", str(study), "-o", str(output), *options],
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def one_member_bundle(tmp_path_factory) -> Path:
    """The shipped bundle with its first member only and no mirroring: what a site deploys when it needs a study
    in seconds (its own bundle folder, given to the app with ``-m``)."""
    bundle = tmp_path_factory.mktemp("bundle") / "brats_one_member"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    for qc in ("qc_flow.pt", "modality_check.pt"):
        shutil.copy(BUNDLE / "models" / qc, bundle / "models")
    state = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    torch.save({k: v for k, v in state.items() if k.startswith("members.0.")}, bundle / "models" / "model.pt")
    inference = json.loads((bundle / "configs" / "inference.json").read_text())
    inference.update(num_members=1, tta=False)
    (bundle / "configs" / "inference.json").write_text(json.dumps(inference, indent=4))
    return bundle


@pytest.fixture(scope="module")
def real_study(tmp_path_factory) -> Path:
    """A real BraTS case written as a PACS export, in a folder as the Informatics Gateway hands it."""
    return write_real_study(tmp_path_factory.mktemp("ig") / "study")


def test_app_on_a_real_study_writes_the_seg_segment_writes(one_member_bundle, real_study, tmp_path):
    out = tmp_path / "app"  # -m: a folder holding one bundle, as a MAP's /opt/holoscan/models does
    log = check(run_app(real_study, out, "-m", str(one_member_bundle.parent), "-w", str(tmp_path / "work")))
    case = real_study.name
    for line in ("t1ce: series #3 'AX T1 POST GAD'", "flair: series #5 'COR T2 FLAIR'", f"case {case}: tumour volumes"):
        assert line in log, log[-3000:]
    report = json.loads((out / "inference_report.json").read_text())
    entry = report["cases"][case]
    assert report["summary"]["ok"] == [case] and entry["outputs"]["dicom_seg"]["path"] == str(out / f"{case}_seg.dcm")
    assert sorted(p.name for p in out.iterdir()) == sorted(["inference_report.json", f"{case}_seg.dcm",
                                                            f"{case}_seg.nii.gz", f"{case}_sr.dcm",
                                                            f"{case}_summary.dcm"])
    for modality, source in entry["inputs"].items():  # the selector's reasons, not how the bundle was told
        assert "pinned" not in source["why"] and "acquisition" in source["why"], (modality, source["why"])
    assert "modality check:" in log and "scan QC:" in log and "review:" in log  # every finding is logged
    assert entry["volumes_ml"]["WT"] > 10  # the real tumour is found
    assert_dicom_valid(out / f"{case}_seg.dcm")
    # the clinician's command on the same study with the same bundle: the same segmentation
    check(subprocess.run([*SEGMENT, str(real_study), "--output", str(tmp_path / "segment"), "--bundle",
                          str(one_member_bundle), "--device", "cpu"], capture_output=True, text=True, timeout=900))
    ours, theirs = (hd.seg.segread(folder / f"{case}_seg.dcm") for folder in (out, tmp_path / "segment"))
    assert ours.get_segment_numbers() == theirs.get_segment_numbers() and len(ours.get_segment_numbers()) == 3
    assert ours.ReferencedSeriesSequence[0].SeriesInstanceUID == theirs.ReferencedSeriesSequence[0].SeriesInstanceUID
    np.testing.assert_array_equal(ours.get_volume(combine_segments=True).array,
                                  theirs.get_volume(combine_segments=True).array)
    np.testing.assert_array_equal(nib.load(out / f"{case}_seg.nii.gz").get_fdata(),
                                  nib.load(tmp_path / "segment" / f"{case}_seg.nii.gz").get_fdata())


def test_app_on_a_study_without_flair_writes_only_the_error(tmp_path):
    case = make_case(np.random.default_rng(4), shape=(24, 24, 24), spacing=8.0)
    study = tmp_path / "study"
    write_pacs_study(case.images, case.affine, study, "A", seed=2)
    for file in list(study.iterdir()):
        if "FLAIR" in str(pydicom.dcmread(file, stop_before_pixels=True).SeriesDescription):
            file.unlink()
    result = run_app(study, tmp_path / "out")
    log = result.stdout + result.stderr
    assert result.returncode == 1, log[-3000:]
    assert "no series for flair" in log and "'AX DWI B0 B1000'" in log  # which series the study had
    assert "send the study with that series" in log and "datalist" not in log  # what the app's user can do
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["inference_report.json"]
    report = json.loads((tmp_path / "out" / "inference_report.json").read_text())
    assert report["summary"] == {"ok": [], "partial": [], "failed": ["study"]}
    assert "no series for flair" in report["cases"]["study"]["error"]


def test_a_model_path_that_is_no_bundle_is_refused(tmp_path):
    (tmp_path / "models").mkdir()
    result = run_app(tmp_path, tmp_path / "out", "-m", str(tmp_path / "models"))
    assert result.returncode == 1 and "pass -m <bundle folder> or -m <model.pt>" in result.stdout + result.stderr
