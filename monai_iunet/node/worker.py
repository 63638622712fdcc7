"""The node's worker: takes the stable studies the Orthanc plugin queued, one at a time in arrival order, runs a
processor on each (the application's: e.g. the BraTS segmentation) and stores the DICOM results back into the study
in Orthanc, which sends them to every destination with its own C-STORE jobs; a destination that is down is retried
until it takes them.

Nothing is lost and nothing is sent twice, whatever is killed when: every study is a job folder under
``<work_dir>/queue/jobs`` whose ``state.json`` is replaced atomically at each step —

    queued -> segmented (results on disk) -> stored (results in Orthanc) -> delivering -> delivered
           \\-> failed (why) / skipped (why: only our own results, or the same inputs done before)

A killed worker restarts from the last state written: a study interrupted while being segmented is segmented again
(nothing of it left the node), results written are stored and sent as they are (the same SOP instances: Orthanc and
a PACS keep an instance once). Storing results into the study makes Orthanc call the study stable again; the new
job sees that its inputs are those of a job done and is skipped. Studies Orthanc received while no event could be
queued (Orthanc killed before the study was stable) are found by comparing Orthanc's studies with the jobs.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .config import NodeConfig
from .orthanc import Orthanc, OrthancError, OrthancUnavailable, orthanc_time

__all__ = ["Outcome", "Processor", "Worker", "load_jobs", "MAX_ATTEMPTS", "OUR_MANUFACTURER"]

logger = logging.getLogger("monai_iunet.node")

MAX_ATTEMPTS = 3  # a study whose processing killed the worker this often is failed, not retried for ever
OUR_MANUFACTURER = "monai-iunet"  # the Manufacturer of every object the node writes
TERMINAL = ("delivered", "failed", "skipped")


@dataclass
class Outcome:
    """What a processor made of a study: the DICOM files to store into it and send (none when it failed), why it
    failed or what went wrong on the way, and details for the node's report (volumes, verdicts, timings)."""

    files: list[Path]
    reason: str = ""
    details: dict = field(default_factory=dict)


Processor = Callable[[Path, Path], Outcome]  # (study folder, output folder) -> Outcome


def _write_json(path: Path, content: dict) -> None:
    hidden = path.with_name(f".{path.name}.tmp")
    hidden.write_text(json.dumps(content, indent=1, default=str))
    os.replace(hidden, path)


def load_jobs(config: NodeConfig) -> list[dict]:
    """Every job's state, oldest first."""
    jobs = []
    for folder in sorted(config.jobs.glob("[0-9]*")) if config.jobs.is_dir() else []:
        try:
            jobs.append(json.loads((folder / "state.json").read_text()))
        except (OSError, json.JSONDecodeError):  # a job folder being created
            continue
    return jobs


class Worker:
    """One worker process of the node.

    Args:
        config: the node's configuration.
        processor: makes the results of one study folder.
        credentials: ``(user, password)`` for Orthanc's REST API when its authentication is on.
        index: the worker's number; worker 0 also tracks the deliveries and looks for missed studies.
        poll_s: seconds between looks at the queue when idle.
    """

    def __init__(self, config: NodeConfig, processor: Processor, credentials: tuple[str, str] | None = None,
                 index: int = 0, poll_s: float = 1.0) -> None:
        self.config = config
        self.processor = processor
        self.orthanc = Orthanc(config.url, credentials)
        self.index = index
        self.poll_s = poll_s
        self.stopping = False
        self.reconciled = False
        for folder in (config.incoming, config.jobs):
            folder.mkdir(parents=True, exist_ok=True)

    # -- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        logger.info("worker %d: watching %s", self.index, self.config.incoming)
        while not self.stopping:
            try:
                busy = self.step()
            except OrthancUnavailable as error:
                self.reconciled = False  # Orthanc restarted: look again for studies it took while we could not see
                logger.warning("worker %d: %s; waiting for it", self.index, error)
                busy = False
            if not busy:
                time.sleep(self.poll_s)

    def step(self) -> bool:
        """One unit of work; whether there was any."""
        self.ingest()
        if self.index == 0:
            if not self.reconciled:
                self.reconcile()
            self.track_deliveries()
        job = self.claim()
        if job is None:
            return False
        folder, lock = job
        try:
            self.advance(folder)
        finally:
            lock.close()
        return True

    # -- the queue ---------------------------------------------------------------------------------------------
    def ingest(self) -> None:
        """Turn the plugin's events into jobs, in arrival order; an event for a study already waiting is dropped."""
        waiting = {job["study"] for job in load_jobs(self.config) if job["state"] == "queued" and not job["attempts"]}
        for event in sorted(self.config.incoming.glob("[0-9]*.json")):
            try:
                content = json.loads(event.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if content["study"] not in waiting:
                self.enqueue(event.stem, content)
                waiting.add(content["study"])
            event.unlink(missing_ok=True)

    def enqueue(self, job_id: str, event: dict) -> None:
        folder = self.config.jobs / job_id
        if folder.exists():  # the event was turned into this job before the worker was stopped
            return
        staging = self.config.jobs / f".{job_id}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        _write_json(staging / "state.json", {"id": job_id, "study": event["study"], "state": "queued", "attempts": 0,
                                             "stable_at": event.get("stable_at"), "queued_at": time.time(),
                                             **({"found": event["found"]} if event.get("found") else {})})
        os.replace(staging, folder)
        logger.info("queued study %s (job %s)", event["study"], job_id)

    def reconcile(self) -> None:
        """Queue the studies Orthanc holds that no job knows of (received while Orthanc could not tell us) once
        they have been unchanged for ``stable_age``."""
        known = {job["study"] for job in load_jobs(self.config)}
        known |= {json.loads(e.read_text())["study"] for e in self.config.incoming.glob("[0-9]*.json")}
        now = time.time()
        for study in self.orthanc.get("/studies"):
            if study in known:
                continue
            info = self.orthanc.get(f"/studies/{study}")
            if now - orthanc_time(info["LastUpdate"]) >= self.config.stable_age:
                self.enqueue(f"{time.time_ns():020d}-{study}", {"study": study, "stable_at": now,
                                                                "found": "in Orthanc at the worker's start"})
        self.reconciled = True

    def claim(self):
        """The oldest job this worker can advance (not finished, not locked by another worker, no older job of its
        study still being processed: a study is segmented once at a time, and a later event for it is then judged
        against the finished job), locked."""
        busy = set()
        for job in load_jobs(self.config):
            if job["state"] in TERMINAL or job["state"] == "delivering":
                continue
            if job["study"] in busy:
                continue
            busy.add(job["study"])
            folder = self.config.jobs / job["id"]
            lock = open(folder / "lock", "w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                lock.close()
                continue
            return folder, lock
        return None

    # -- one study ---------------------------------------------------------------------------------------------
    def advance(self, folder: Path) -> None:
        state = json.loads((folder / "state.json").read_text())
        save = lambda: _write_json(folder / "state.json", state)  # noqa: E731
        if state["state"] == "queued":
            if state["attempts"] >= MAX_ATTEMPTS:
                return self.finish(state, save, "failed", f"the worker stopped {state['attempts']} times while "
                                   "processing this study (killed or out of memory); not tried again")
            state["attempts"] += 1
            save()
            self.process(folder, state, save)
        if state["state"] == "segmented":
            self.store(folder, state, save)
        if state["state"] == "stored":
            self.send(state, save)

    def process(self, folder: Path, state: dict, save: Callable) -> None:
        study = state["study"]
        try:
            info = self.orthanc.get(f"/studies/{study}")
        except OrthancError as error:
            if error.status == 404:
                return self.finish(state, save, "skipped", "the study was deleted from the node before processing")
            raise
        tags = info.get("MainDicomTags", {})
        state.update(study_uid=tags.get("StudyInstanceUID"), accession=tags.get("AccessionNumber", ""),
                     last_update=orthanc_time(info["LastUpdate"]), picked_up=time.time())
        ours = self.our_series()
        inputs = {}
        for series in self.orthanc.get(f"/studies/{study}/series"):
            main = series.get("MainDicomTags", {})
            uid = main.get("SeriesInstanceUID")
            if uid in ours or main.get("Manufacturer") == OUR_MANUFACTURER:
                continue
            inputs[series["ID"]] = {"uid": uid, "instances": len(series["Instances"]),
                                    "description": main.get("SeriesDescription", "")}
        state["inputs"] = inputs
        if not inputs:
            return self.finish(state, save, "skipped", "the study holds only this node's results")
        fingerprint = sorted((s["uid"], s["instances"]) for s in inputs.values())
        for done in load_jobs(self.config):
            if done["id"] != state["id"] and done.get("study") == study and done["state"] in (
                    "delivered", "delivering", "stored", "segmented", "failed") and sorted(
                    map(tuple, done.get("fingerprint", []))) == fingerprint:
                return self.finish(state, save, "skipped", f"the same series were processed by job {done['id']} "
                                   f"({done['state']})")
        state["fingerprint"] = fingerprint
        start = time.time()
        input_dir, output_dir = folder / "input", folder / "output"
        for d in (input_dir, output_dir):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
        archive = folder / "study.zip"
        archive.write_bytes(self.orthanc.archive(list(inputs)))
        with zipfile.ZipFile(archive) as z:
            z.extractall(input_dir)
        archive.unlink()
        state["timings"] = {"download_s": round(time.time() - start, 2)}
        logger.info("job %s: study %s (accession %r, %d series) downloaded in %.1f s; processing", state["id"],
                    state["study_uid"], state["accession"], len(inputs), state["timings"]["download_s"])
        start = time.time()
        try:
            outcome = self.processor(input_dir, output_dir)
        except Exception as error:  # a processor's failure is the study's, not the node's
            outcome = Outcome([], f"{type(error).__name__}: {error}")
        state["timings"]["process_s"] = round(time.time() - start, 2)
        state["details"] = outcome.details
        shutil.rmtree(input_dir, ignore_errors=True)  # only the results stay on disk
        if not outcome.files:
            return self.finish(state, save, "failed", outcome.reason or "the processor wrote no result")
        if outcome.reason:
            state["warning"] = outcome.reason
        state["outputs"] = [{"file": str(Path(f).relative_to(folder))} for f in outcome.files]
        state["state"] = "segmented"
        save()

    def store(self, folder: Path, state: dict, save: Callable) -> None:
        import pydicom

        start = time.time()
        for output in state["outputs"]:
            path = folder / output["file"]
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            output.update(series_uid=ds.SeriesInstanceUID, sop_uid=ds.SOPInstanceUID,
                          description=str(ds.get("SeriesDescription", "")), modality=ds.Modality)
            self.remember_series(ds.SeriesInstanceUID)
            output["orthanc_id"] = self.orthanc.upload(path.read_bytes())
        state["timings"]["store_s"] = round(time.time() - start, 2)
        state["stored_at"] = time.time()
        state["state"] = "stored"
        save()

    def send(self, state: dict, save: Callable) -> None:
        instances = [o["orthanc_id"] for o in state["outputs"]]
        state["deliveries"] = {}
        for name in self.config.destinations:
            state["deliveries"][name] = {"job": self.orthanc.store(name, instances), "tries": 1,
                                         "last_try": time.time(), "sent_at": None}
        state["state"] = "delivering"
        save()
        logger.info("job %s: %d result(s) stored in the study; sending to %s", state["id"], len(instances),
                    ", ".join(self.config.destinations))

    def track_deliveries(self) -> None:
        """Follow Orthanc's C-STORE jobs; resubmit the failed ones every ``retry_s``; a job done for every
        destination finishes the study."""
        for state in load_jobs(self.config):
            if state["state"] != "delivering":
                continue
            folder = self.config.jobs / state["id"]
            save = lambda s=state, f=folder: _write_json(f / "state.json", s)  # noqa: E731
            for name, delivery in state["deliveries"].items():
                if delivery["sent_at"]:
                    continue
                try:
                    job = self.orthanc.get(f"/jobs/{delivery['job']}")
                except OrthancError as error:
                    if error.status != 404:
                        raise
                    job = {"State": "Lost"}  # Orthanc restarted before saving the job: send again
                if job["State"] == "Success":
                    delivery["sent_at"] = orthanc_time(job["CompletionTime"]) if job.get(
                        "CompletionTime") else time.time()
                    logger.info("job %s: results delivered to %s", state["id"], name)
                elif job["State"] in ("Failure", "Lost") and time.time() - delivery["last_try"] >= self.config.retry_s:
                    peer = self.config.destinations[name]
                    if delivery["tries"] == 1 or delivery["tries"] % 10 == 0:
                        logger.warning("job %s: %s (%s at %s:%d) did not take the results (%s); they wait in the "
                                       "node and are sent again every %.0f s", state["id"], name, peer.aet, peer.host,
                                       peer.port, job.get("ErrorDescription", job["State"]), self.config.retry_s)
                    if job["State"] == "Failure":
                        self.orthanc.post(f"/jobs/{delivery['job']}/resubmit", {})
                    else:
                        delivery["job"] = self.orthanc.store(name, [o["orthanc_id"] for o in state["outputs"]])
                    delivery["tries"] += 1
                    delivery["last_try"] = time.time()
                save()
            if all(d["sent_at"] for d in state["deliveries"].values()):
                state["delivered_at"] = max(d["sent_at"] for d in state["deliveries"].values())
                self.finish(state, save, "delivered", state.get("warning", ""))

    # -- records -----------------------------------------------------------------------------------------------
    def finish(self, state: dict, save: Callable, status: str, reason: str) -> None:
        state["state"] = status
        state["reason"] = reason
        state["finished_at"] = time.time()
        save()
        line = {key: state.get(key) for key in ("id", "study", "study_uid", "accession", "state", "reason", "outputs",
                                                "deliveries", "timings", "details", "last_update", "stable_at",
                                                "picked_up", "stored_at", "delivered_at", "finished_at")}
        with open(self.config.report, "a") as report:
            report.write(json.dumps(line, default=str) + "\n")
        log = logger.error if status == "failed" else logger.info
        log("job %s: study %s %s%s", state["id"], state.get("study_uid") or state["study"], status,
            f": {reason}" if reason else "")

    def our_series(self) -> set[str]:
        path = self.config.work_dir / "our_series.txt"
        return set(path.read_text().split()) if path.is_file() else set()

    def remember_series(self, uid: str) -> None:
        if uid not in self.our_series():
            with open(self.config.work_dir / "our_series.txt", "a") as f:
                f.write(uid + "\n")
