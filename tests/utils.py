"""Helpers the tests share: the bundles' folders, a tiny network's settings, running a bundle in a subprocess, the
real data, known objects at known patient positions, the bundle's runner around a stand-in network, and the calls
MONAI Label makes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import torch
from monai.transforms import Compose, SaveImaged

from monai_iunet.apps.brats.data.location import real_data
from monai_iunet.apps.brats.inference import BatchSegmentation
from monai_iunet.bundle import bundle_command, bundle_parser
from monai_iunet.networks import load_weights

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "bundles" / "brats_iunet_segmentation"
CT_BUNDLE = ROOT / "bundles" / "ct_iunet_postprocessing"
SCHEMA = ROOT.parent / "shared" / "monai" / "meta_schema_20240725.json"

# A tiny network and 32³ volumes: every config runs end-to-end in seconds on CPU.
TINY = {
    "_meta_#plans#network_def#channels": 4,
    "_meta_#plans#network_def#num_levels": 2,
    "_meta_#plans#network_def#blocks_per_level": 1,
    "num_members": 1,  # inference.json: the one network train.json writes
    "tta": False,  # one pass: 16³ windows over a whole phantom are many (tests that need mirroring ask for it)
    "roi_size": "[16,16,16]",
    "num_workers": 0,
    "amp": False,
    "skull_strip": "false",  # the synthetic phantoms have a scalp but no anatomy deepbet would call a brain
}
TRAIN_TINY = {**TINY, "val_roi_size": "[32,32,32]", "epochs": 1, "val_interval": 1, "cache_rate": 0}


def run_bundle(configs: list[str], cwd: Path = BUNDLE, launcher: list[str] | None = None, timeout: float = 600,
               **overrides):
    """``monai.bundle run`` in ``cwd``, its output captured: the completed process (``check`` it, or look at a
    failure)."""
    launcher = [*launcher, "-m", "monai.bundle"] if launcher else None
    return subprocess.run(bundle_command(configs, launcher, **overrides), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def verify_and_export(bundle: Path, weights: Path, torchscript: Path) -> torch.jit.ScriptModule:
    """The model zoo's checks of a bundle with shipped weights: ``verify_net_in_out`` on ``network_def`` and
    ``ckpt_export`` of the weights (no tracing); returns the exported TorchScript module."""
    for args in (["verify_net_in_out", "network_def", "--n", "1", "--any", "1", "--device", "cpu"],
                 ["ckpt_export", "network_def", "--filepath", str(torchscript), "--ckpt_file", str(weights)]):
        out = subprocess.run([sys.executable, "-m", "monai.bundle", *args, "--meta_file", "configs/metadata.json",
                              "--config_file", "configs/inference.json"], cwd=bundle, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
    return torch.jit.load(torchscript)


def check(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def write_json(path: Path, content) -> Path:
    path.write_text(json.dumps(content, indent=2))
    return path


def free_port() -> int:
    """A TCP port nothing listens on now (loopback)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str, interval: float = 0.5):
    """Poll ``condition()`` until it returns something true (returned) or ``timeout`` seconds pass (a failure
    saying what was awaited)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class OrthancPeer:
    """A plain Orthanc on loopback ports standing in for the hospital's PACS: it accepts C-STORE from anyone and
    answers REST calls. ``start``/``stop`` it as a PACS going down and coming back; its database survives."""

    def __init__(self, folder: Path, aet: str = "PACS") -> None:
        from monai_iunet.node.orthanc import Orthanc

        self.folder, self.aet = folder, aet
        self.dicom_port, self.http_port = free_port(), free_port()
        self.client = Orthanc(f"http://127.0.0.1:{self.http_port}", timeout=30)
        self.process = None
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "orthanc.json").write_text(json.dumps({
            "Name": aet, "DicomAet": aet, "DicomPort": self.dicom_port, "HttpPort": self.http_port,
            "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowEcho": True, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "Plugins": []}))

    def start(self) -> OrthancPeer:
        with open(self.folder / "orthanc.log", "a") as log:
            self.process = subprocess.Popen(["Orthanc", str(self.folder / "orthanc.json")], stdout=log,
                                            stderr=subprocess.STDOUT)
        wait_until(self.client.alive, 30, f"Orthanc {self.aet} to start")
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)

    def series_of(self, study_uid: str) -> list[dict]:
        """The series of a study (by StudyInstanceUID) with their main tags and instance ids."""
        found = self.client.post("/tools/find", {"Level": "Series", "Query": {"StudyInstanceUID": study_uid},
                                                 "Expand": True})
        return found or []


def tiny_network_config(tmp_path: Path) -> Path:
    """A config file layered on inference.json for the tiny network the ``trained`` fixture trains."""
    parser = bundle_parser(str(BUNDLE / "configs" / "inference.json"))
    network = dict(parser.get("_meta_#plans#network_def"))
    network.update({key.rsplit("#", 1)[1]: value for key, value in TINY.items() if key.startswith("_meta_#plans#")})
    ensemble = {**parser.get("network_def"), "network": network}
    return write_json(tmp_path / "tiny.json", {"network_def": ensemble, "num_members": 1, "roi_size": [32, 32, 32],
                                               "overlap": 0.0, "skull_strip": TINY["skull_strip"]})


SKIPPED_CHECKS: list[str] = []


def tool_available(tool: str, package: str, check: str) -> bool:
    """Whether an external tool a check needs is installed. Without it the check cannot run: under CI (``CI`` set)
    that is a failure, elsewhere the check is listed as skipped at the end of the run (never counted as passed)."""
    if shutil.which(tool) is not None:
        return True
    if os.environ.get("CI"):
        pytest.fail(f"{tool} is not installed, so {check} cannot run; CI needs it: apt-get install {package}.")
    SKIPPED_CHECKS.append(f"{check}: {tool} not installed (apt-get install {package})")
    return False


def assert_dicom_valid(path: Path) -> None:
    """``dciodvfy`` (dicom3tools) reports no error for ``path``. Without the validator the check cannot run: an
    error under CI, elsewhere a skipped check listed at the end of the test run (``tests/conftest.py``)."""
    if not tool_available("dciodvfy", "dicom3tools", f"validating {Path(path).name}"):
        return
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], f"dciodvfy finds errors in {path}: {errors}"


DATA = real_data()
REAL_CASE = DATA / "brats" / "Brats18_2013_2_1"


def write_real_study(folder: Path, seed: int = 7) -> Path:
    """A real BraTS case (``REAL_CASE``) written as a PACS export: its four modalities as series on their own
    clinical grids, a localizer, a diffusion series and an ADC map (``write_pacs_study``). Skips without the data."""
    import nibabel as nib
    import numpy as np

    from monai_iunet.apps.brats.data.synthetic import write_pacs_study
    from monai_iunet.apps.brats.labels import MODALITIES

    if not REAL_CASE.is_dir():
        pytest.skip("../shared/data not present")
    files = {m: nib.load(REAL_CASE / f"{REAL_CASE.name}_{m}.nii.gz") for m in MODALITIES}
    images = {m: np.asarray(f.dataobj, dtype=np.float32) for m, f in files.items()}
    write_pacs_study(images, files["t1ce"].affine, folder, "BRATS_2013_2", seed=seed)
    return folder


# --- clinical geometry: known objects at known patient positions -------------------------------------------------
REAL = {  # real scanner series of ../shared/data
    "ge_oblique": DATA / "dicom" / "ge_signa_3d_ax_t1_mprage_oblique",
    "siemens_enhanced": DATA / "dicom" / "enhanced_siemens_xa30_t1w_tfl",
    "siemens_2d_gaps": DATA / "dicom" / "siemens_prisma_t1_fl2d_sag_HFS",
}
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
CENTRE = np.array([12.0, -18.0, 25.0])  # RAS, mm: where sphere_study's sphere is
RADIUS = 14.0


def sphere(affine: np.ndarray, shape, centre_ras, radius: float) -> np.ndarray:
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    world = index @ affine[:3, :3].T + affine[:3, 3]
    return np.linalg.norm(world - np.asarray(centre_ras), axis=-1) <= radius


def centroid_ras(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    index = np.argwhere(mask).mean(0)
    return affine[:3, :3] @ index + affine[:3, 3]


def seg_centroid_ras(path: Path) -> np.ndarray:
    """Where the SEG's pixels are, from highdicom's own reading of the SEG (its affine is LPS)."""
    volume = hd.seg.segread(str(path)).get_volume(combine_segments=True)
    return (LPS @ np.append(centroid_ras(volume.array > 0, volume.affine), 1.0))[:3]


class BrightIsTumour(torch.nn.Module):
    """A stand-in network whose answer is known: every region channel is 'on' where the (normalised) input is
    bright. Real geometry, no training needed."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 20.0 * (x[:, 1:2].expand(-1, 3, *x.shape[2:]) - 1.0)


def bundle_runner(study: Path | None, case: str, output: Path, cases: list[dict] | None = None,
                  **overrides) -> BatchSegmentation:
    """The bundle's own preprocessing, inferer, postprocessing and runner (inference.json) around
    ``BrightIsTumour``, on one study or on ``cases``; ``overrides`` set config ids (``skull_strip`` defaults to
    false: the synthetic studies are no heads)."""
    parser = bundle_parser(str(BUNDLE / "configs" / "inference.json"))
    parser.update({"bundle_root": str(BUNDLE), "roi_size": [32, 32, 32], "device": "$torch.device('cpu')",
                   "skull_strip": False, "output_dir": str(output), "network": "$None", "uncertainty": False,
                   **overrides,
                   "test_datalist": cases or [{"study": str(study), "case": case}]})
    runner = parser.get_parsed_content("runner")
    runner.network = BrightIsTumour()
    return runner


def monai_label_infer(image: Path, ckpt: Path, **overrides) -> dict:
    """What ``BundleInferTask`` does for one request: parse ``inference.json``, build ``network_def`` and load the
    weights, run the pre-transforms one by one, the inferer on the batched image, the post-transforms without
    ``SaveImaged``."""
    parser = bundle_parser(BUNDLE / "configs" / "inference.json")
    parser.update({"bundle_root": str(BUNDLE), "device": "cpu", **overrides})
    network = load_weights(parser.get_parsed_content("network_def"), str(ckpt)).eval()

    def transforms(key):
        content = parser.get_parsed_content(key)
        return [t for t in (content.transforms if isinstance(content, Compose) else content)
                if not isinstance(t, SaveImaged)]

    data = {"image": str(image), "image_path": str(image)}
    for transform in transforms("preprocessing"):
        data = transform(data)
    with torch.no_grad():
        data["pred"] = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    for transform in transforms("postprocessing"):
        data = transform(data)
    return data
