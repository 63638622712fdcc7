"""The few calls of Orthanc's REST API the node's worker makes (standard library HTTP: nothing to install beside
Orthanc). Orthanc being down or restarting is ``OrthancUnavailable``, which the worker waits out; any other HTTP
error is ``OrthancError`` with Orthanc's own message."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from datetime import datetime, timezone

__all__ = ["Orthanc", "OrthancError", "OrthancUnavailable", "orthanc_time"]


class OrthancError(RuntimeError):
    """Orthanc answered with an error; the message has the call and Orthanc's answer."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class OrthancUnavailable(OrthancError):
    """Orthanc cannot be reached (not started yet, restarting, killed)."""


def orthanc_time(text: str) -> float:
    """Orthanc's timestamps (``20261207T023210`` or ``20261207T023210.123456``, UTC) in seconds since the epoch."""
    layout = "%Y%m%dT%H%M%S.%f" if "." in text else "%Y%m%dT%H%M%S"
    return datetime.strptime(text, layout).replace(tzinfo=timezone.utc).timestamp()


class Orthanc:
    """A client of one Orthanc's REST API.

    Args:
        url: e.g. ``http://127.0.0.1:8042``.
        credentials: ``(user, password)`` when Orthanc's authentication is on.
        timeout: seconds per call.
    """

    def __init__(self, url: str, credentials: tuple[str, str] | None = None, timeout: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = {}
        if credentials:
            token = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            self.headers["Authorization"] = f"Basic {token}"

    def request(self, method: str, path: str, body: bytes | dict | list | None = None,
                content_type: str = "application/json") -> bytes:
        data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={**self.headers, **({"Content-Type": content_type} if data else {})})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:500]
            raise OrthancError(f"Orthanc {method} {path}: HTTP {error.code}: {detail}", error.code) from error
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as error:
            raise OrthancUnavailable(f"Orthanc at {self.url} cannot be reached ({method} {path}): {error}") from error

    def get(self, path: str):
        return json.loads(self.request("GET", path))

    def post(self, path: str, body=None):
        answer = self.request("POST", path, body if body is not None else b"")
        return json.loads(answer) if answer else None

    def alive(self) -> bool:
        try:
            self.get("/system")
            return True
        except OrthancUnavailable:
            return False

    def upload(self, dicom: bytes) -> str:
        """Store one DICOM instance; its Orthanc id (storing an instance Orthanc has already is not an error)."""
        return self.post("/instances", dicom)["ID"]

    def archive(self, resources: list[str]) -> bytes:
        """A ZIP of these resources' instances (Orthanc ids of patients, studies, series or instances)."""
        return self.request("POST", "/tools/create-archive", {"Resources": resources, "Synchronous": True})

    def store(self, modality: str, instances: list[str]) -> str:
        """Start a C-STORE job of these instances to a configured modality; its job id."""
        return self.post(f"/modalities/{modality}/store", {"Resources": instances, "Synchronous": False})["ID"]
