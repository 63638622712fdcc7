"""A real ``python -m monai.bundle run`` killed with SIGKILL mid-epoch resumes from its last checkpoint."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from ..utils import BUNDLE, TRAIN_TINY, check

EPOCHS = 6


def _command(dataset, out, resume: bool) -> list[str]:
    overrides = {**TRAIN_TINY, "epochs": EPOCHS, "val_interval": EPOCHS, "dataset_dir": dataset, "bundle_root": out,
                 "resume": resume}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", "['configs/train.json']"]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    return command


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(dataset, tmp_path):
    out = tmp_path / "run"
    process = subprocess.Popen(_command(dataset, out, False), cwd=BUNDLE, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 300
    killed_in = None
    for line in process.stdout:
        match = re.search(r"Epoch: (\d+)/%d, Iter: 2/" % EPOCHS, line)
        if match and int(match.group(1)) >= 3:  # two epochs checkpointed, the third half done
            process.send_signal(signal.SIGKILL)
            killed_in = int(match.group(1))
            break
        assert time.monotonic() < deadline, "training did not reach epoch 3"
    process.wait(timeout=60)
    assert killed_in is not None and process.returncode == -signal.SIGKILL
    last = torch.load(out / "models" / "resume" / "last.pt", weights_only=True)  # intact despite the kill
    done = last["trainer"]["iteration"] // last["trainer"]["epoch_length"]
    assert done == killed_in - 1

    output = check(subprocess.run(_command(dataset, out, True), cwd=BUNDLE, capture_output=True, text=True,
                                  timeout=600))
    started = sorted({int(e) for e in re.findall(r"Epoch: (\d+)/%d, Iter" % EPOCHS, output)})
    assert started == list(range(killed_in, EPOCHS + 1))  # at most one epoch (the interrupted one) repeated
    final = torch.load(out / "models" / "resume" / "last.pt", weights_only=True)
    assert final["trainer"]["iteration"] == EPOCHS * final["trainer"]["epoch_length"]
    # the poly schedule continued where it stopped: its clock carried over, its last rate is that of the last step
    assert final["lr_scheduler"]["training_time"] > last["lr_scheduler"]["training_time"]
    total = EPOCHS * final["trainer"]["epoch_length"]
    base = final["lr_scheduler"]["base_lrs"][0]
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(base * (1 - (total - 1) / total) ** 0.9)
    assert not list((out / "models").glob(".*.tmp"))
    assert final["best_model"]["best_epoch"] >= 1  # the best metric survived the restart
