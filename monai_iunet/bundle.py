"""The bundles as code reaches them: ``bundle_path`` (where the shipped bundles are, installed or in a checkout),
``bundle_parser`` (a bundle's configs with its metadata, as ``monai.bundle run`` reads them), ``network_def`` (the
network a config describes), ``bundle_command`` (the command line of ``monai.bundle run``) and ``run_bundle`` (that
command in a fresh process).

    python -m monai_iunet.bundle brats_iunet_segmentation     # prints the bundle folder
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["BUNDLES", "bundle_path", "bundle_parser", "network_def", "bundle_command", "run_bundle"]

BUNDLES = ("brats_iunet_segmentation", "ct_iunet_postprocessing")


def bundle_path(name: str = "brats_iunet_segmentation") -> Path:
    """The folder of a shipped bundle: inside the installed package (``pip install``, see ``setup.py``), or the
    ``bundles/`` folder of a source checkout (editable install)."""
    if name not in BUNDLES:
        raise ValueError(f"unknown bundle '{name}'; shipped bundles: {', '.join(BUNDLES)}.")
    package = Path(__file__).resolve().parent
    for folder in (package / "bundles" / name, package.parent / "bundles" / name):
        if (folder / "configs" / "metadata.json").is_file():
            return folder
    raise FileNotFoundError(f"bundle {name} is neither in the installed package ({package / 'bundles'}) nor in a "
                            f"source checkout ({package.parent / 'bundles'}); reinstall monai-iunet.")


def bundle_parser(configs: str | Path | Sequence[str | Path],
                  meta_file: str | Path | Sequence[str | Path] | None = None):
    """A MONAI ``ConfigParser`` of bundle config files (later files replace earlier keys) with the bundle's metadata
    read under ``_meta_``, as ``monai.bundle run`` reads it: ``metadata.json`` next to the first file unless
    ``meta_file`` is given (a list is merged in order, e.g. the bundle's metadata and a plans overlay such as
    ``{"plans#pixdim": [3, 3, 3]}``). The bundles' configs take the model's facts from there
    (``@_meta_#plans#...``)."""
    from monai.bundle import ConfigParser

    files = [str(configs)] if isinstance(configs, (str, Path)) else [str(c) for c in configs]
    parser = ConfigParser()
    parser.read_config(files)
    if meta_file is None:
        default = Path(files[0]).parent / "metadata.json"
        meta_file = default if default.is_file() else None
    if meta_file is not None:
        parser.read_meta(str(meta_file) if isinstance(meta_file, (str, Path)) else [str(m) for m in meta_file])
    return parser


def network_def(config: str | Path | Mapping, instantiate: bool = True, **overrides):
    """The network a config describes, parsed by MONAI's ``ConfigParser`` as ``monai.bundle run`` parses it: a bundle
    config (a file, read with its bundle's metadata: ``bundle_parser``) or a preset (a file or a dict) with a
    ``network_def`` (its ``imports`` run, references, macros and expressions resolved), or a bare ``network_def`` (a
    dict with ``_target_``). ``overrides`` replace arguments of the network.
    With ``instantiate=False``: the network's resolved arguments instead (``_target_`` and the other ``_`` keys left
    out), e.g. for the memory planner."""
    from monai.bundle import ConfigParser

    if not isinstance(config, Mapping):
        config = bundle_parser(config).get()
    config = copy.deepcopy(dict(config))  # the parser writes overrides into the (nested) dicts it is given
    if "network_def" not in config:
        config = {"network_def": config}
    parser = ConfigParser(config)
    if "imports" in config:
        parser.get_parsed_content("imports")
    for key, value in overrides.items():
        parser[f"network_def#{key}"] = value
    if instantiate:
        return parser.get_parsed_content("network_def")
    arguments = parser.get_parsed_content("network_def", instantiate=False).get_config()
    return {key: value for key, value in arguments.items() if not key.startswith("_")}


def bundle_command(configs: Sequence, launcher: Sequence[str] | None = None, **overrides) -> list[str]:
    """The command line of ``monai.bundle run`` with ``configs`` layered (later files replace earlier keys) and
    ``--key value`` overrides; ``launcher`` replaces the Python interpreter (e.g. ``torchrun`` arguments, or
    ``[python, "-c", wrapper]`` for a wrapper that runs ``monai.bundle`` itself)."""
    command = [*(launcher or [sys.executable, "-m", "monai.bundle"]), "run",
               "--config_file", repr([str(c) for c in configs])]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    return command


def run_bundle(bundle: str | Path, configs: Sequence, log: str | Path | None = None,
               env: Mapping[str, str] | None = None, **overrides) -> None:
    """``python -m monai.bundle run`` in the folder ``bundle`` (a fresh process; :func:`bundle_command`) with ``env``
    added to the environment; the command is printed and its output goes to the console, or both are appended to
    ``log``. Raises ``subprocess.CalledProcessError`` if the run fails (the log says why)."""
    import os
    import subprocess

    command = bundle_command(configs, **overrides)
    environment = {**os.environ, **(env or {})}
    if log is None:
        print("\n$ " + " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=bundle, check=True, env=environment)
        return
    with open(log, "a") as out:
        out.write("$ " + " ".join(command[1:]) + "\n")
        out.flush()
        subprocess.run(command, cwd=bundle, check=True, stdout=out, stderr=subprocess.STDOUT, env=environment)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m monai_iunet.bundle",
                                     description="Print a shipped bundle's folder.")
    parser.add_argument("name", nargs="?", default="brats_iunet_segmentation", choices=BUNDLES)
    print(bundle_path(parser.parse_args(argv).name))


if __name__ == "__main__":
    main()
