"""Helpers the tests share: the bundles' folders, a tiny network's settings, running a bundle in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from monai_iunet.bundle import bundle_command

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
