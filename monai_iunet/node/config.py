"""``node.json``: what a PACS team sets, checked before anything starts, and the Orthanc configuration made from it.

    {"aet": "IUNETNODE", "dicom_port": 11112, "http_port": 8042, "allowed_aets": ["SCANNER", "PACS"],
     "destinations": {"pacs": {"aet": "PACS", "host": "pacs.example.org", "port": 104}},
     "work_dir": "/var/lib/iunet-node", "device": "cpu"}

Optional: ``bundle`` (a bundle folder; default: the installed one), ``configs`` (config files layered on its
inference.json), ``tta`` (mirroring: true/false; default the bundle's), ``workers`` (studies segmented at once, each
one in memory; default 1), ``stable_age`` (seconds without a new instance before a study counts as complete; default
60), ``retry_s`` (seconds between tries to reach a destination that is down; default 30), ``http_remote`` (let other
hosts reach the HTTP/DICOMweb port; default false: loopback only) with ``http_users`` (``{"name": "password"}``,
required then), ``orthanc`` (the Orthanc executable; default ``Orthanc`` on the PATH) and ``orthanc_plugins`` (the
folder of Orthanc's plugins; default Debian's).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Destination", "NodeConfig", "NodeConfigError", "orthanc_configuration", "PLUGIN_SCRIPT"]

PLUGIN_SCRIPT = Path(__file__).with_name("orthanc_plugin.py")
INSTALL = "Debian: apt-get install orthanc orthanc-python orthanc-dicomweb"
PLUGIN_FOLDERS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins", "/usr/local/share/orthanc/plugins")
AET = re.compile(r"^[\x21-\x5b\x5d-\x7e](?:[\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")  # 1-16, no backslash
REQUIRED = ("aet", "dicom_port", "http_port", "allowed_aets", "destinations", "work_dir")
OPTIONAL = ("device", "bundle", "configs", "tta", "workers", "stable_age", "retry_s", "http_remote", "http_users",
            "orthanc", "orthanc_plugins")


class NodeConfigError(ValueError):
    """``node.json`` cannot be used; the message names the key and says what to write."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer results are sent to (C-STORE)."""

    aet: str
    host: str
    port: int


@dataclass(frozen=True)
class NodeConfig:
    """The node's settings (see the module's docstring for the keys)."""

    aet: str
    dicom_port: int
    http_port: int
    allowed_aets: tuple[str, ...]
    destinations: dict[str, Destination]
    work_dir: Path
    device: str = "cpu"
    bundle: Path | None = None
    configs: tuple[Path, ...] = ()
    tta: bool | None = None
    workers: int = 1
    stable_age: int = 60
    retry_s: float = 30.0
    http_remote: bool = False
    http_users: dict[str, str] = field(default_factory=dict)
    orthanc: str = "Orthanc"
    orthanc_plugins: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def incoming(self) -> Path:
        """Where the Orthanc plugin drops the stable studies (one file each)."""
        return self.work_dir / "queue" / "incoming"

    @property
    def jobs(self) -> Path:
        return self.work_dir / "queue" / "jobs"

    @property
    def logs(self) -> Path:
        return self.work_dir / "logs"

    @property
    def report(self) -> Path:
        """One JSON line per study the node finished with (delivered, failed or skipped), and why."""
        return self.work_dir / "node_report.jsonl"

    @classmethod
    def load(cls, path: str | Path) -> NodeConfig:
        """Read and check ``node.json``; relative paths are taken from its folder."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise NodeConfigError(f"cannot read the node configuration {path}: {error}") from error
        return cls.from_dict(raw, path.resolve().parent, str(path))

    @classmethod
    def from_dict(cls, raw: dict, base: Path = Path("."), where: str = "node.json") -> NodeConfig:
        if not isinstance(raw, dict):
            raise NodeConfigError(f"{where}: expected a JSON object with the keys {', '.join(REQUIRED)}.")
        missing = [k for k in REQUIRED if k not in raw]
        unknown = sorted(set(raw) - set(REQUIRED) - set(OPTIONAL) - {"_comment"})
        if missing or unknown:
            raise NodeConfigError(f"{where}: " + "; ".join(
                ([f"missing {', '.join(missing)}"] if missing else [])
                + ([f"unknown key(s) {', '.join(unknown)} (known: {', '.join(REQUIRED + OPTIONAL)})"]
                   if unknown else [])))

        def aet(value, key):
            if not isinstance(value, str) or not AET.match(value):
                raise NodeConfigError(f"{where}: {key} {value!r} is not an AE title (1-16 characters, no backslash, "
                                      "no leading or trailing space).")
            return value

        def port(value, key):
            if not isinstance(value, int) or not 0 < value < 65536:
                raise NodeConfigError(f"{where}: {key} must be a TCP port number, got {value!r}.")
            return value

        allowed = raw["allowed_aets"]
        if not isinstance(allowed, list) or not allowed:
            raise NodeConfigError(f"{where}: allowed_aets must list the calling AE titles that may send studies "
                                  "(every other association is refused).")
        destinations = raw["destinations"]
        if not isinstance(destinations, dict) or not destinations:
            raise NodeConfigError(f"{where}: destinations must name at least one peer: "
                                  '{"pacs": {"aet": "PACS", "host": "pacs.example.org", "port": 104}}.')
        peers = {}
        for name, peer in destinations.items():
            if not re.match(r"^[A-Za-z0-9_-]+$", name) or not isinstance(peer, dict) or set(peer) != {
                    "aet", "host", "port"}:
                raise NodeConfigError(f"{where}: destination {name!r} must be a name of letters, digits, _ or - "
                                      'with {"aet": ..., "host": ..., "port": ...}.')
            peers[name] = Destination(aet(peer["aet"], f"destinations.{name}.aet"), str(peer["host"]),
                                      port(peer["port"], f"destinations.{name}.port"))
        users = raw.get("http_users") or {}
        if raw.get("http_remote") and not users:
            raise NodeConfigError(f"{where}: http_remote opens the HTTP/DICOMweb port to other hosts: set "
                                  'http_users ({"name": "password"}) as well; it is refused without authentication.')
        workers = raw.get("workers", 1)
        if not isinstance(workers, int) or workers < 1:
            raise NodeConfigError(f"{where}: workers must be a positive integer, got {workers!r}.")
        device = raw.get("device", "cpu")
        if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
            raise NodeConfigError(f"{where}: device must be cpu, cuda or cuda:N, got {device!r}.")
        resolve = lambda p: (base / p).resolve()  # noqa: E731
        return cls(
            aet=aet(raw["aet"], "aet"), dicom_port=port(raw["dicom_port"], "dicom_port"),
            http_port=port(raw["http_port"], "http_port"),
            allowed_aets=tuple(aet(a, "allowed_aets") for a in allowed), destinations=peers,
            work_dir=resolve(raw["work_dir"]), device=device,
            bundle=resolve(raw["bundle"]) if raw.get("bundle") else None,
            configs=tuple(resolve(c) for c in raw.get("configs", [])), tta=raw.get("tta"), workers=workers,
            stable_age=int(raw.get("stable_age", 60)), retry_s=float(raw.get("retry_s", 30.0)),
            http_remote=bool(raw.get("http_remote", False)), http_users=dict(users),
            orthanc=raw.get("orthanc", "Orthanc"),
            orthanc_plugins=Path(raw["orthanc_plugins"]) if raw.get("orthanc_plugins") else None,
        )

    def plugin(self, name: str) -> Path:
        """An Orthanc plugin library (``libOrthancPython.so``, ``libOrthancDicomWeb.so``) from the user's Orthanc."""
        folders = [self.orthanc_plugins] if self.orthanc_plugins else [Path(f) for f in PLUGIN_FOLDERS]
        for folder in folders:
            if (folder / name).is_file():
                return folder / name
        raise NodeConfigError(f"Orthanc's plugin {name} is not in {', '.join(map(str, folders))}: install Orthanc "
                              f"and its plugins ({INSTALL}) or set orthanc_plugins to their folder.")

    def orthanc_executable(self) -> str:
        found = shutil.which(self.orthanc)
        if not found:
            raise NodeConfigError(f"the Orthanc executable {self.orthanc!r} is not found: install Orthanc ({INSTALL}) "
                                  "or set orthanc to its path.")
        return found


def orthanc_configuration(config: NodeConfig, worker_credentials: tuple[str, str] | None = None) -> dict:
    """The Orthanc configuration of the node: its DICOM and HTTP ports, the calling AE titles it accepts (every other
    association is refused, and so is a called AE title other than its own), the destinations, the stable-study
    delay, DICOMweb (STOW-RS), the job history the delivery tracking reads, and our plugin with its queue folder."""
    modalities = {}
    for name, peer in config.destinations.items():
        modalities[name] = {"AET": peer.aet, "Host": peer.host, "Port": peer.port, "AllowEcho": True,
                            "AllowStore": peer.aet in config.allowed_aets, "AllowFind": False, "AllowMove": False}
    known = {peer.aet for peer in config.destinations.values()}
    for index, aet in enumerate(a for a in config.allowed_aets if a not in known):
        # a sender that is not a destination: its host is not checked (DicomCheckModalityHost false), nothing is
        # ever sent to it
        modalities[f"sender{index}"] = {"AET": aet, "Host": "127.0.0.1", "Port": 104, "AllowEcho": True,
                                        "AllowStore": True, "AllowFind": False, "AllowMove": False}
    users = dict(config.http_users)
    if worker_credentials and (users or config.http_remote):
        users[worker_credentials[0]] = worker_credentials[1]
    orthanc_db = config.work_dir / "orthanc"
    return {
        "Name": config.aet,
        "DicomAet": config.aet,
        "DicomPort": config.dicom_port,
        "HttpPort": config.http_port,
        "StorageDirectory": str(orthanc_db),
        "IndexDirectory": str(orthanc_db),
        "Plugins": [str(config.plugin("libOrthancPython.so")), str(config.plugin("libOrthancDicomWeb.so"))],
        "PythonScript": str(PLUGIN_SCRIPT),
        "PythonVerbose": False,
        "IUNetNode": {"Incoming": str(config.incoming)},
        "StableAge": config.stable_age,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowEcho": False,
        "DicomAlwaysAllowStore": False,
        "DicomCheckModalityHost": False,
        "DicomModalities": modalities,
        "DicomScuTimeout": 10,
        "RemoteAccessAllowed": config.http_remote,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": users,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
        "SaveJobs": True,
        "JobsHistorySize": 1000,
        "ConcurrentJobs": 2,
        "OverwriteInstances": False,
        "HttpTimeout": 120,
    }
