"""Small helpers that the bundle configs call (``$monai_iunet.bundle...``), ``run_bundle`` for scripts, and
``bundle_path``: where the shipped bundles are, installed or in a checkout.

    python -m monai_iunet.bundle brats_iunet_segmentation     # prints the bundle folder
"""

from __future__ import annotations

import copy
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from monai.handlers import from_engine

__all__ = ["BUNDLES", "bundle_path", "handler", "region_output_transform", "load_weights", "handlers_for_rank",
           "run_bundle"]

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


def handler(instance):
    """``instance`` itself. A config's handler list entry ``{"_target_": "monai_iunet.bundle.handler", "instance":
    "@lr_scheduler"}`` attaches an object defined elsewhere in the config (one that the resumable checkpoint also
    saves) while keeping every entry a dict, as MONAI Label requires (it reads ``_target_`` of each)."""
    return instance


def region_output_transform(channel: int) -> Callable:
    """``output_transform`` for a metric handler on one BraTS region: the ``channel`` of every pred and label."""
    select = from_engine(["pred", "label"])

    def transform(output):
        preds, labels = select(output)
        return [p[channel : channel + 1] for p in preds], [y[channel : channel + 1] for y in labels]

    return transform


def handlers_for_rank(handlers: list, rank: int) -> list:
    """The trainer handlers a process of a distributed run attaches: all on rank 0; on the others, everything but
    the console and TensorBoard logging (one copy of each line and curve). Chosen by type, not by position, because
    tools such as MONAI Label insert handlers of their own into the list."""
    from ignite.handlers import ProgressBar
    from monai.handlers import StatsHandler, TensorBoardStatsHandler

    if rank == 0:
        return list(handlers)
    return [h for h in handlers if not isinstance(h, (ProgressBar, StatsHandler, TensorBoardStatsHandler))]


def load_weights(network: torch.nn.Module, path: str, map_location=None) -> torch.nn.Module:
    """Load a checkpoint written by the bundle (``model.pt``: the network's state dict; ``last.pt``: a dict with a
    ``"model"`` entry) with ``weights_only=True``. A checkpoint of another architecture raises ``ValueError`` listing
    the missing, unexpected and mis-shaped keys."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train first or set ckpt_path.")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    # tried on a copy first, so that a mismatch leaves the network as it was; load_state_dict (not a comparison of
    # keys) so that the network's own load hooks (earlier parameter names) apply
    try:
        result = copy.deepcopy(network).load_state_dict(state, strict=False)
        mis_shaped = ""
    except RuntimeError as error:  # parameters of another shape
        result, mis_shaped = None, str(error).split(":", 1)[-1].strip()
    missing, unexpected = (sorted(result.missing_keys), sorted(result.unexpected_keys)) if result else ([], [])
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"checkpoint {path} does not match the network (another architecture?): "
            f"missing {missing[:10]}{'…' if len(missing) > 10 else ''}, "
            f"unexpected {unexpected[:10]}{'…' if len(unexpected) > 10 else ''}"
            + (f", {mis_shaped[:1000]}" if mis_shaped else ".")
        )
    network.load_state_dict(state)
    return network


def run_bundle(bundle: str | Path, configs: list, log: str | Path | None = None, **overrides) -> None:
    """``python -m monai.bundle run`` in ``bundle`` (a fresh process) with ``configs`` layered and ``--key value``
    overrides; the command is printed, its output goes to the console or appended to ``log``. Raises
    ``subprocess.CalledProcessError`` if the run fails."""
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", repr([str(c) for c in configs])]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    if log is None:
        print("\n$ " + " ".join(command[1:]), flush=True)
        subprocess.run(command, cwd=bundle, check=True)
        return
    with open(log, "a") as out:
        subprocess.run(command, cwd=bundle, check=True, stdout=out, stderr=subprocess.STDOUT)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m monai_iunet.bundle", description="Print a shipped bundle's folder.")
    parser.add_argument("name", nargs="?", default="brats_iunet_segmentation", choices=BUNDLES)
    print(bundle_path(parser.parse_args(argv).name))


if __name__ == "__main__":
    main()
