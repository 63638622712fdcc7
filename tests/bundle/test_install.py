"""Install like a user: the wheel, installed (not editable) into a fresh virtual environment, run from a folder with
no checkout around, finds the BraTS bundle and its shipped weights, for the ``monai-iunet-segment`` console script and
for ``python -m monai.bundle run`` on the installed bundle's ``configs/inference.json``."""

from __future__ import annotations

import json
import site
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_iunet.apps.brats.data.synthetic import make_case, write_pacs_study
from monai_iunet.apps.brats.labels import MODALITIES

from .conftest import BUNDLE, ROOT, check

SHIPPED = BUNDLE / "models" / "model.pt"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not SHIPPED.is_file(), reason="no shipped BraTS weights")]


@pytest.fixture(scope="module")
def user_venv(tmp_path_factory) -> Path:
    """A new virtual environment holding the built wheel; the dependencies (torch, MONAI, …) come from this test
    environment's site-packages through a .pth file (a path entry: the editable install of the checkout is not)."""
    work = tmp_path_factory.mktemp("install")
    check(subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                          "-w", str(work / "wheel")], capture_output=True, text=True, timeout=600))
    wheel = next((work / "wheel").glob("monai_iunet-*.whl"))
    venv = work / "venv"
    check(subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300))
    python = venv / "bin" / "python"
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    Path(purelib, "_test_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    check(subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
                         capture_output=True, text=True, timeout=600))
    return python


def _run(python: Path, args: list[str], cwd: Path, program: str | None = None) -> str:
    """``python args`` in the virtual environment, or its console script ``program`` with ``args``."""
    command = [str(python.parent / program) if program else str(python), *args]
    return check(subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=1200))


def test_installed_package_carries_the_bundle_and_weights(user_venv, tmp_path):
    bundle = Path(_run(user_venv, ["-m", "monai_iunet.bundle", "brats_iunet_segmentation"], tmp_path).strip())
    assert "site-packages" in bundle.parts and ROOT not in bundle.parents  # not the checkout
    assert (bundle / "models" / "model.pt").read_bytes() == SHIPPED.read_bytes()
    assert json.loads((bundle / "configs" / "metadata.json").read_text())["version"]


def test_segment_a_study_and_bundle_run_after_install(user_venv, tmp_path):
    case = make_case(np.random.default_rng(1), shape=(48, 48, 40), spacing=4.0)
    study = tmp_path / "EXPORT" / "STUDY"
    write_pacs_study(case.images, case.affine, study, "P1", seed=1)
    output = _run(user_venv, [str(study.parent), "--output", str(tmp_path / "out"), "--device", "cpu", "--case", "P1",
                              "--skull-strip", "false", "--no-tta"], tmp_path, program="monai-iunet-segment")
    assert "case P1: ok" in output
    report = json.loads((tmp_path / "out" / "inference_report.json").read_text())
    assert report["cases"]["P1"]["outputs"]["dicom_seg"]["status"] == "written"

    bundle = Path(_run(user_venv, ["-m", "monai_iunet.bundle"], tmp_path).strip())
    files = {m: tmp_path / f"P1_{m}.nii.gz" for m in MODALITIES}
    for m, path in files.items():
        nib.save(nib.Nifti1Image(case.images[m], case.affine), path)
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"testing": [{"case": "P1", "image": [str(files[m]) for m in MODALITIES]}]}))
    _run(user_venv, ["-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
                     "--bundle_root", str(bundle), "--data_list_file_path", str(datalist), "--dataset_dir",
                     str(tmp_path), "--output_dir", str(tmp_path / "bundle_out"), "--skull_strip", "false",
                     "--tta", "False"], tmp_path)
    label = nib.load(tmp_path / "bundle_out" / "P1_seg.nii.gz")
    assert label.shape == case.images["t1"].shape and np.allclose(label.affine, case.affine)
