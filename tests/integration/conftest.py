"""Fixtures of the end-to-end tests: real Orthanc processes on loopback ports (the hospital's PACS and the node),
dcmtk's storescu as the scanner, a tiny trained bundle as the node's model."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from monai_iunet.apps.brats.data.synthetic import make_case, write_pacs_study
from monai_iunet.node.config import PLUGIN_FOLDERS

from ..utils import BUNDLE, OrthancPeer, free_port, tiny_network_config, tool_available, wait_until

ROOT = Path(__file__).resolve().parents[2]


def orthanc_installed() -> bool:
    """Orthanc with its Python and DICOMweb plugins, and storescu: the node tests skip without them outside CI and
    fail under CI (``tool_available``)."""
    plugins = any(Path(f, "libOrthancPython.so").is_file() for f in PLUGIN_FOLDERS)
    return (tool_available("Orthanc", "orthanc orthanc-python orthanc-dicomweb", "the node tests")
            and (plugins or tool_available("orthanc-python-plugin", "orthanc-python", "the node tests"))
            and tool_available("storescu", "dcmtk", "the node tests"))


@pytest.fixture
def requires_orthanc() -> None:
    if not orthanc_installed():
        pytest.skip("Orthanc, its plugins or dcmtk not installed")


needs_orthanc = pytest.mark.usefixtures("requires_orthanc")


def storescu(port: int, files: list[Path], calling: str = "SCANNER", called: str = "IUNETNODE"):
    """Send files with dcmtk's storescu (the scanner); the completed process."""
    return subprocess.run(["storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=300)


def study_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


class Node:
    """``monai-iunet-node`` as a user starts it, with its node.json; the processes it supervises by name."""

    def __init__(self, folder: Path, settings: dict) -> None:
        self.folder = folder
        self.settings = settings
        self.config = folder / "node.json"
        self.config.write_text(json.dumps(settings, indent=1))
        self.work = Path(settings["work_dir"])
        self.process = None

    def start(self) -> Node:
        self.log = open(self.folder / "node.log", "a")
        self.process = subprocess.Popen([sys.executable, "-m", "monai_iunet.apps.brats.node", "--config",
                                         str(self.config)], stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_until(lambda: "worker 0 started" in (self.folder / "node.log").read_text(), 90, "the node to start")
        return self

    def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(90)
        self.log.close()
        return code

    def pid(self, name: str) -> int:
        return json.loads((self.work / "pids.json").read_text())[name]

    def kill(self, name: str) -> None:
        os.kill(self.pid(name), signal.SIGKILL)

    def jobs(self) -> list[dict]:
        from monai_iunet.node import NodeConfig, load_jobs

        return load_jobs(NodeConfig.load(self.config))

    def report(self) -> list[dict]:
        path = self.work / "node_report.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def worker_log(self) -> str:
        return "\n".join(p.read_text() for p in sorted((self.work / "logs").glob("worker*.log")))


@pytest.fixture(scope="session")
def tiny_bundle(trained, tmp_path_factory) -> tuple[Path, Path]:
    """A copy of the BraTS bundle holding the tiny model the ``trained`` fixture trained, and the config file
    that makes inference.json build that network: (bundle folder, config file)."""
    folder = tmp_path_factory.mktemp("node_bundle")
    bundle = folder / "brats_iunet_segmentation"
    shutil.copytree(BUNDLE / "configs", bundle / "configs")
    (bundle / "models").mkdir()
    shutil.copy(trained / "models" / "model.pt", bundle / "models" / "model.pt")
    return bundle, tiny_network_config(folder)


@pytest.fixture
def pacs(tmp_path, requires_orthanc):
    peer = OrthancPeer(tmp_path / "pacs")
    yield peer
    peer.stop()


@pytest.fixture
def make_node(tmp_path, tiny_bundle, pacs):
    """Build (not start) a node whose destination is ``pacs``; stopped after the test."""
    nodes = []

    def make(**settings) -> Node:
        bundle, tiny = tiny_bundle
        node = Node(tmp_path, {
            "aet": "IUNETNODE", "dicom_port": free_port(), "http_port": free_port(),
            "allowed_aets": ["SCANNER", "PACS"],
            "destinations": {"pacs": {"aet": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}},
            "work_dir": str(tmp_path / "node"), "device": "cpu", "bundle": str(bundle), "configs": [str(tiny)],
            "stable_age": 2, "retry_s": 2, "tta": False, **settings})
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.stop()


def write_study(folder: Path, patient: str, seed: int) -> Path:
    """A synthetic brain study as a PACS exports it (``write_pacs_study``: the four contrasts on clinical grids,
    localizer, DWI, ADC)."""
    case = make_case(np.random.default_rng(seed), shape=(24, 24, 24), spacing=8.0)
    write_pacs_study(case.images, case.affine, folder, patient, seed=seed)
    return folder


def delivered_series(pacs: OrthancPeer, study_uid: str) -> dict[str, int]:
    """How many series of each of our kinds (SEG, SR, summary OT) the PACS holds for a study."""
    kinds = {}
    for series in pacs.series_of(study_uid):
        tags = series["MainDicomTags"]
        if tags.get("Manufacturer") == "monai-iunet" or tags.get("Modality") in ("SEG", "SR"):
            kinds[tags["Modality"]] = kinds.get(tags["Modality"], 0) + 1
    return kinds


def study_uid_of(folder: Path) -> str:
    import pydicom

    return pydicom.dcmread(study_files(folder)[0], stop_before_pixels=True).StudyInstanceUID


def wait_delivered(node: Node, pacs: OrthancPeer, study_uid: str, timeout: float = 300) -> dict:
    """Until the PACS holds the SEG, SR and summary of a study; the node's job of it."""
    wait_until(lambda: delivered_series(pacs, study_uid) == {"SEG": 1, "SR": 1, "OT": 1}, timeout,
               f"the results of {study_uid} in the PACS (node log: {node.worker_log()[-1500:]})", interval=1.0)
    return wait_until(lambda: next((j for j in node.jobs() if j.get("study_uid") == study_uid
                                    and j["state"] == "delivered"), None), 30, "the job to be marked delivered")


__all__ = ["Node", "needs_orthanc", "storescu", "study_files", "write_study", "delivered_series", "study_uid_of",
           "wait_delivered"]
