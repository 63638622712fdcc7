"""The AI node against real Orthanc processes on loopback ports: the hospital's PACS (a plain Orthanc), the node
(``monai-iunet-node``: Orthanc with our plugin, and the worker) and dcmtk's storescu as the scanner. Nothing lost,
nothing twice: a destination that is down, a worker or Orthanc killed during a segmentation, bad studies, refused
callers, ten studies back to back and a restart."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pydicom
import pytest

from monai_iunet.node import NodeConfig, NodeConfigError, orthanc_configuration

from ..utils import assert_dicom_valid, wait_until, write_real_study
from .conftest import (
    delivered_series,
    needs_orthanc,
    storescu,
    study_files,
    study_uid_of,
    wait_delivered,
    write_study,
)

CONFIG = {"aet": "IUNETNODE", "dicom_port": 11112, "http_port": 8042, "allowed_aets": ["SCANNER", "PACS"],
          "destinations": {"pacs": {"aet": "PACS", "host": "pacs.example.org", "port": 104}},
          "work_dir": "/var/lib/iunet-node", "device": "cpu"}


def test_the_issue_s_node_json_is_read_and_orthanc_configured_from_it(tmp_path):
    config = NodeConfig.from_dict(CONFIG)
    assert config.destinations["pacs"].host == "pacs.example.org" and config.workers == 1 and not config.http_remote
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("libOrthancPython.so", "libOrthancDicomWeb.so"):
        (plugins / name).touch()
    settings = orthanc_configuration(NodeConfig.from_dict({**CONFIG, "orthanc_plugins": str(plugins)}))
    assert settings["DicomAet"] == "IUNETNODE" and settings["DicomCheckCalledAet"] is True
    assert settings["DicomAlwaysAllowStore"] is False and settings["RemoteAccessAllowed"] is False
    callers = {m["AET"]: m["AllowStore"] for m in settings["DicomModalities"].values()}
    assert callers == {"PACS": True, "SCANNER": True}
    # a destination that may not send: known for C-STORE out, not allowed to store in
    settings = orthanc_configuration(NodeConfig.from_dict({**CONFIG, "allowed_aets": ["SCANNER"],
                                                           "orthanc_plugins": str(plugins)}))
    assert {m["AET"]: m["AllowStore"] for m in settings["DicomModalities"].values()} == {"PACS": False,
                                                                                           "SCANNER": True}


def test_remote_http_needs_users_and_turns_authentication_on_for_everyone(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    for name in ("libOrthancPython.so", "libOrthancDicomWeb.so"):
        (plugins / name).touch()
    local = orthanc_configuration(NodeConfig.from_dict({**CONFIG, "orthanc_plugins": str(plugins)}), ("w", "pw"))
    assert local["RemoteAccessAllowed"] is False and local["AuthenticationEnabled"] is False
    remote = orthanc_configuration(NodeConfig.from_dict({**CONFIG, "orthanc_plugins": str(plugins),
                                                         "http_remote": True, "http_users": {"pacs": "secret"}}),
                                   ("w", "pw"))
    assert remote["RemoteAccessAllowed"] is True and remote["AuthenticationEnabled"] is True
    assert remote["RegisteredUsers"] == {"pacs": "secret", "w": "pw"}  # the worker's own account beside the users


@pytest.mark.parametrize("change, message", [
    ({"aet": "A" * 17}, "not an AE title"),
    ({"allowed_aets": []}, "allowed_aets must list"),
    ({"destinations": {"pacs": {"aet": "PACS", "host": "x"}}}, "destination 'pacs' must be"),
    ({"http_remote": True}, "set http_users"),
    ({"dicom_port": 70000}, "TCP port"),
    ({"colour": "blue"}, "unknown key(s) colour"),
    ({"workers": 0}, "workers must be"),
])
def test_a_wrong_node_json_is_refused_naming_the_key(change, message):
    with pytest.raises(NodeConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        NodeConfig.from_dict({**CONFIG, **change})


def test_a_missing_node_json_or_orthanc_is_an_error_before_anything_starts(tmp_path):
    from monai_iunet.apps.brats.node import main

    assert main(["--config", str(tmp_path / "none.json")]) == 2
    config = tmp_path / "node.json"
    config.write_text(json.dumps({**CONFIG, "work_dir": str(tmp_path / "w"), "orthanc": "no-such-orthanc"}))
    assert main(["--config", str(config)]) == 2
    assert not (tmp_path / "w").exists()



@pytest.mark.slow
@needs_orthanc
def test_results_wait_for_a_destination_that_is_down_and_arrive_once_it_is_back(make_node, pacs, tmp_path):
    """The PACS is down when the results are ready: they wait in the node and are delivered once it is back; the
    study becoming stable again (our results stored into it) does not segment it twice; a caller not on the list
    and a wrong called AE title are refused; the results are valid DICOM in the source study."""
    node = make_node().start()
    study = write_study(tmp_path / "A", "PATIENT_A", seed=4)
    uid = study_uid_of(study)
    refused = storescu(node.settings["dicom_port"], study_files(study)[:2], calling="STRANGER")
    assert refused.returncode != 0 and "Calling AE Title Not Recognized" in refused.stderr + refused.stdout
    wrong_called = storescu(node.settings["dicom_port"], study_files(study)[:2], called="OTHERNODE")
    assert wrong_called.returncode != 0
    sent = storescu(node.settings["dicom_port"], study_files(study))
    assert sent.returncode == 0, sent.stderr
    job = wait_until(lambda: next((j for j in node.jobs() if j["state"] == "delivering"
                                   and j["deliveries"]["pacs"]["tries"] >= 2), None), 300,
                     f"results waiting for the PACS (log: {node.worker_log()[-2000:]})")
    assert job["study_uid"] == uid and [o["modality"] for o in job["outputs"]] == ["SEG", "SR", "OT"]
    assert "did not take the results" in node.worker_log()
    pacs.start()
    job = wait_delivered(node, pacs, uid)
    for series in pacs.series_of(uid):
        if series["MainDicomTags"].get("Manufacturer") == "monai-iunet":
            (instance,) = series["Instances"]
            path = tmp_path / f"{instance}.dcm"
            path.write_bytes(pacs.client.request("GET", f"/instances/{instance}/file"))
            assert pydicom.dcmread(path).StudyInstanceUID == uid
            assert_dicom_valid(path)
    # our results made the study stable again: that job is skipped, nothing is segmented or sent twice
    wait_until(lambda: any(r["state"] == "skipped" for r in node.report()), 60, "the re-stable study to be skipped")
    time.sleep(3)
    assert delivered_series(pacs, uid) == {"SEG": 1, "SR": 1, "OT": 1}
    assert [r["state"] for r in node.report()].count("delivered") == 1
    assert job["timings"]["process_s"] > 0 and job["details"]["timings_s"]["inference"] >= 0
    assert node.stop() == 0  # SIGTERM: Orthanc and the worker stop cleanly
    pids = json.loads((node.work / "pids.json").read_text())
    assert pids.keys() == {"Orthanc", "worker 0"}
    for pid in pids.values():  # both are gone, not left behind
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    assert (node.work / "orthanc.json").stat().st_mode & 0o777 == 0o600


def stow(url: str, files: list[Path]) -> None:
    """Send files to a DICOMweb STOW-RS endpoint (multipart/related)."""
    boundary = uuid.uuid4().hex
    body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + f.read_bytes() + b"\r\n"
                    for f in files) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        assert answer.status == 200


@pytest.mark.slow
@needs_orthanc
@pytest.mark.parametrize("victim", ["worker 0", "Orthanc"])
def test_a_process_killed_during_segmentation_loses_nothing_and_sends_once(make_node, pacs, tmp_path, victim):
    """SIGKILL of the worker or of the node's Orthanc while a study is being segmented: the supervisor starts it
    again and the study is segmented and delivered exactly once. The study arrives over DICOMweb (STOW-RS)."""
    pacs.start()
    node = make_node(tta=True).start()  # eight passes per window: a segmentation long enough to be killed in
    study = write_study(tmp_path / "B", "PATIENT_B", seed=5)
    uid = study_uid_of(study)
    stow(f"http://127.0.0.1:{node.settings['http_port']}/dicom-web/studies", study_files(study))
    wait_until(lambda: any(j["state"] == "queued" and j["attempts"] == 1 for j in node.jobs()), 120,
               "the segmentation to start")
    time.sleep(1.0)  # inside the segmentation (model loading and inference take several seconds)
    assert not any(j.get("timings", {}).get("process_s") for j in node.jobs()), "segmentation ended too soon"
    old = node.pid(victim)
    node.kill(victim)
    wait_until(lambda: node.pid(victim) != old, 60, f"{victim} to be started again")
    job = wait_delivered(node, pacs, uid)
    time.sleep(4)  # a second delivery would land now
    assert delivered_series(pacs, uid) == {"SEG": 1, "SR": 1, "OT": 1}
    if victim == "worker 0":
        assert job["attempts"] == 2  # the killed try, then the one that finished


def drop_series(study: Path, words: str) -> None:
    for file in study_files(study):
        if words in str(pydicom.dcmread(file, stop_before_pixels=True).SeriesDescription):
            file.unlink()


def ct_study(folder: Path) -> Path:
    import numpy as np

    from monai_iunet.dicom.synthetic import SeriesSpec, grid_affine, study_ids, write_series

    volume = np.random.default_rng(0).normal(40, 10, (32, 32, 20))
    spec = SeriesSpec("HEAD CT", volume, grid_affine(np.eye(3), (0.8, 0.8, 5.0), (0, 0, 0), (32, 32, 20)), "2D",
                      extra={"Modality": "CT"})
    write_series(spec, folder, study_ids("PATIENT_CT"), 2, lambda k: f"CT{k:04d}")
    return folder


@pytest.mark.slow
@needs_orthanc
def test_ten_studies_back_to_back_three_bad_in_order_one_at_a_time_and_across_a_restart(make_node, pacs, tmp_path):
    """10 studies sent one after the other, 3 of them bad (no FLAIR, two patients in one study, a CT): every good
    one is delivered, in arrival order, one study segmented at a time (workers: 1); each bad one fails with its
    reason in the report (the two patients' study as two studies, one per patient, as Orthanc keeps them) and the
    node goes on; the node stopped half-way and started again finishes the queue."""
    pacs.start()
    node = make_node().start()
    studies, bad = [], {}
    for k in range(10):
        folder = tmp_path / f"S{k}"
        if k == 2:
            write_study(folder, f"P{k}", seed=10 + k)
            drop_series(folder, "FLAIR")
            bad[study_uid_of(folder)] = "no series for flair"
        elif k == 5:  # two patients in one study: the T2 and FLAIR series carry another patient's ID, so Orthanc
            write_study(folder, f"P{k}", seed=10 + k)  # (as our loader) keeps two studies, each missing two series
            for file in study_files(folder):
                ds = pydicom.dcmread(file)
                if "T2" in str(ds.SeriesDescription):
                    ds.PatientID, ds.PatientName = "OTHER", "OTHER^PATIENT"
                    ds.save_as(file)
            bad[study_uid_of(folder)] = "no series for"
        elif k == 7:
            ct_study(folder)
            bad[study_uid_of(folder)] = "no series for"
        else:
            write_study(folder, f"P{k}", seed=10 + k)
        studies.append(study_uid_of(folder))
        assert storescu(node.settings["dicom_port"], study_files(folder)).returncode == 0
    good = [uid for uid in studies if uid not in bad]
    wait_delivered(node, pacs, good[2], timeout=600)
    assert node.stop() == 0  # stopped with studies still queued
    node.start()
    for uid in good:
        wait_delivered(node, pacs, uid, timeout=600)
    report = node.report()
    delivered = [r for r in report if r["state"] == "delivered"]
    assert [r["study_uid"] for r in delivered] == good  # in arrival order
    spans = sorted((r["picked_up"], r["stored_at"]) for r in delivered)
    assert all(end <= next_start for (_, end), (next_start, _) in zip(spans, spans[1:]))  # one at a time
    failed = [(r["study_uid"], r["reason"]) for r in report if r["state"] == "failed"]
    assert sorted(uid for uid, _ in failed) == sorted([*bad, study_uid_of(tmp_path / "S5")])  # S5: two patients
    for uid, reason in failed:
        assert bad[uid] in reason, (uid, reason)
    assert "failed: " in node.worker_log()
    for uid in studies:
        assert delivered_series(pacs, uid) == ({"SEG": 1, "SR": 1, "OT": 1} if uid in good else {})


def test_the_status_command_lists_the_jobs(tmp_path, capsys):
    from monai_iunet.apps.brats.node import main

    config = tmp_path / "node.json"
    config.write_text(json.dumps({**CONFIG, "work_dir": str(tmp_path / "w")}))
    job = tmp_path / "w" / "queue" / "jobs" / "0001-abc"
    job.mkdir(parents=True)
    (job / "state.json").write_text(json.dumps({"id": "0001-abc", "study": "abc", "state": "failed", "attempts": 1,
                                                "queued_at": 0, "finished_at": 1, "study_uid": "1.2.3",
                                                "reason": "no series for flair"}))
    assert main(["--config", str(config), "--status"]) == 0
    out = capsys.readouterr().out
    assert "1 job(s), 0 not finished" in out and "failed" in out and "no series for flair" in out


def test_the_plugin_uses_the_standard_library_only():
    """It runs in Orthanc's interpreter, where the project is not installed."""
    import ast

    from monai_iunet.node.config import PLUGIN_SCRIPT

    imported = {alias.name.split(".")[0] for node in ast.walk(ast.parse(PLUGIN_SCRIPT.read_text()))
                if isinstance(node, ast.Import) for alias in node.names}
    assert imported == {"json", "os", "time", "orthanc"}
    assert subprocess.run(["python3", "-c", "import ast,sys; ast.parse(open(sys.argv[1]).read())",
                           str(PLUGIN_SCRIPT)]).returncode == 0


@pytest.mark.slow
@needs_orthanc
def test_the_shipped_ensemble_on_a_real_brats_study_as_a_pacs_sends_it(make_node, pacs, tmp_path):
    """The installed bundle (five members, mirroring) on a real BraTS case written as a PACS export: the PACS gets
    a SEG, an SR whose volumes are the SEG's voxels times the voxel volume, and a summary page, all valid."""
    import highdicom as hd
    import numpy as np

    study = write_real_study(tmp_path / "real")
    uid = study_uid_of(study)
    pacs.start()
    node = make_node(bundle=None, configs=[], tta=None).start()  # the installed bundle as it ships
    assert storescu(node.settings["dicom_port"], study_files(study)).returncode == 0
    job = wait_delivered(node, pacs, uid, timeout=1500)
    assert set(job["details"]["inputs"]) == {"t1", "t1ce", "t2", "flair"}
    files = {}
    for series in pacs.series_of(uid):
        if series["MainDicomTags"].get("Manufacturer") == "monai-iunet":
            (instance,) = series["Instances"]
            files[series["MainDicomTags"]["Modality"]] = path = tmp_path / f"{instance}.dcm"
            path.write_bytes(pacs.client.request("GET", f"/instances/{instance}/file"))
            assert_dicom_valid(path)
    volume = hd.seg.segread(files["SEG"]).get_volume(combine_segments=False)
    voxel_ml = abs(np.linalg.det(volume.affine[:3, :3])) / 1000
    counts = volume.array.sum(axis=(0, 1, 2))  # NCR, ED, ET
    report = hd.sr.srread(files["SR"]).content
    measured = {g.tracking_identifier: float(g.get_measurements()[0].value)
                for g in report.get_volumetric_roi_measurement_groups()}
    assert measured["ET"] == pytest.approx(counts[2] * voxel_ml, abs=2e-3)
    assert measured["NCR"] == pytest.approx(counts[0] * voxel_ml, abs=2e-3)
    assert measured["ED"] == pytest.approx(counts[1] * voxel_ml, abs=2e-3)
    assert job["details"]["volumes_ml"]["WT"] == pytest.approx(counts.sum() * voxel_ml, abs=2e-3)
    assert job["details"]["volumes_ml"]["WT"] > 20  # this case's tumour: ~150 mL
    assert job["details"]["review"] is not None and job["details"]["timings_s"]["inference"] > 0
