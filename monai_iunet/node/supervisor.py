"""Start and keep running the node's processes: the user's Orthanc (with the configuration written from
``node.json`` and our plugin) and the worker(s) in this environment. A process that dies is started again (a killed
Orthanc or worker loses nothing: see ``worker``); SIGTERM or SIGINT stops the workers, then Orthanc, and returns."""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import time
from pathlib import Path

from .config import NodeConfig, orthanc_configuration
from .orthanc import Orthanc

__all__ = ["run_node", "WORKER_CREDENTIALS_ENV"]

logger = logging.getLogger("monai_iunet.node")

WORKER_CREDENTIALS_ENV = "IUNET_NODE_CREDENTIALS"  # user:password of the workers' REST account, when auth is on
START_TIMEOUT_S = 60.0


class _Child:
    """One supervised process, its output appended to a log file, restarted with a growing delay."""

    def __init__(self, name: str, command: list[str], log: Path, pids: Path, env: dict | None = None) -> None:
        self.name, self.command, self.log, self.pids, self.env = name, command, log, pids, env
        self.process: subprocess.Popen | None = None
        self.restarts = 0
        self.next_start = 0.0

    def start(self) -> None:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)
        logger.info("%s started (pid %d); log %s", self.name, self.process.pid, self.log)
        # which process is which, for an operator (and the failure tests)
        pids = json.loads(self.pids.read_text()) if self.pids.is_file() else {}
        pids[self.name] = self.process.pid
        self.pids.write_text(json.dumps(pids))

    def check(self) -> None:
        """Start it again if it exited (after 1, 2, 4 … 30 s, so that a crash loop does not spin)."""
        if self.process is None or self.process.poll() is None:
            return
        if self.next_start == 0.0:
            delay = min(30.0, 2.0 ** min(self.restarts, 5))
            logger.error("%s exited with code %s; starting it again in %.0f s (log %s)", self.name,
                         self.process.returncode, delay, self.log)
            self.next_start = time.monotonic() + delay
        elif time.monotonic() >= self.next_start:
            self.restarts += 1
            self.next_start = 0.0
            self.start()

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
            self.process.kill()
            self.process.wait()
        logger.info("%s stopped", self.name)


def run_node(config: NodeConfig, worker_command: list[str]) -> int:
    """Run the node until SIGTERM/SIGINT; 0 on a clean stop, 1 if Orthanc cannot start.

    Args:
        config: the node's configuration.
        worker_command: the command of a worker process (``--index N`` is appended).
    """
    for folder in (config.work_dir, config.logs, config.incoming, config.jobs):
        folder.mkdir(parents=True, exist_ok=True)
    credentials = ("iunet-worker", secrets.token_hex(16))
    settings = orthanc_configuration(config, credentials)
    orthanc_json = config.work_dir / "orthanc.json"
    orthanc_json.touch()
    orthanc_json.chmod(0o600)  # it holds the passwords when authentication is on
    orthanc_json.write_text(json.dumps(settings, indent=2))
    env = dict(os.environ)
    if settings["AuthenticationEnabled"]:
        env[WORKER_CREDENTIALS_ENV] = ":".join(credentials)
    pids = config.work_dir / "pids.json"
    pids.unlink(missing_ok=True)
    orthanc = _Child("Orthanc", [config.orthanc_executable(), str(orthanc_json)], config.logs / "orthanc.log", pids)
    workers = [_Child(f"worker {i}", [*worker_command, "--index", str(i)], config.logs / f"worker{i}.log", pids, env)
               for i in range(config.workers)]
    stopping = []
    previous = {sig: signal.signal(sig, lambda *_: stopping.append(True)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        orthanc.start()
        client = Orthanc(config.url, credentials if settings["AuthenticationEnabled"] else None)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not client.alive():
            if orthanc.process.poll() is not None or time.monotonic() > deadline:
                tail = config.logs.joinpath("orthanc.log").read_text().splitlines()[-15:]
                logger.error("Orthanc did not start; the end of its log:\n%s", "\n".join(tail))
                orthanc.stop()
                return 1
            time.sleep(0.2)
        peers = ", ".join(f"{n} ({d.aet}@{d.host}:{d.port})" for n, d in config.destinations.items())
        logger.info("node %s listening: DICOM port %d (calling AE titles %s), HTTP/DICOMweb port %d (%s); results "
                    "go to %s", config.aet, config.dicom_port, ", ".join(config.allowed_aets), config.http_port,
                    "remote, authenticated" if config.http_remote else "loopback only", peers)
        for worker in workers:
            worker.start()
        while not stopping:
            for child in (orthanc, *workers):
                child.check()
            time.sleep(0.5)
        logger.info("stopping")
        return 0
    finally:
        for worker in workers:
            worker.stop()
        orthanc.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
