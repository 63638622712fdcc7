"""DistributedDataParallel (default settings, gloo, 2 CPU processes) with the memory-efficient engine."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..conftest import relative_error
from .ddp_worker import batch, model


@pytest.mark.slow
def test_ddp_gradients_equal_single_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out_file = tmp_path / "ddp_grads.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), str(Path(__file__).with_name("ddp_worker.py")), str(out_file)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[:6000]
    ddp_grads = torch.load(out_file, weights_only=True)

    net = model()
    assert net.memory_efficient
    # DDP averages the shard gradients: the gradient of the mean of the per-shard losses.
    losses = [net(shard).square().mean() for shard in batch().chunk(2)]
    (sum(losses) / 2).backward()
    for name, p in net.named_parameters():
        assert relative_error(ddp_grads[name], p.grad) <= 1e-10, name
