"""``monai.bundle run`` in a fresh process, for the demos, experiments and reports."""

from __future__ import annotations

import subprocess
from pathlib import Path

from monai_iunet.bundle import bundle_command

__all__ = ["run_bundle"]


def run_bundle(bundle: str | Path, configs: list, log: str | Path | None = None, **overrides) -> None:
    """``python -m monai.bundle run`` in ``bundle`` (a fresh process; :func:`bundle_command`); the command is
    printed, its output goes to the console or appended to ``log``. Raises ``subprocess.CalledProcessError`` if the
    run fails."""
    command = bundle_command(configs, **overrides)
    if log is None:
        print("\n$ " + " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=bundle, check=True)
        return
    with open(log, "a") as out:
        subprocess.run(command, cwd=bundle, check=True, stdout=out, stderr=subprocess.STDOUT)
