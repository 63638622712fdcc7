"""DistributedDataParallel (default settings, gloo, 2 CPU processes) with the memory-efficient engine."""

from __future__ import annotations

import os
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

from monai_iunet import IUNet

from ..conftest import perturb, relative_error


def _model() -> IUNet:
    torch.manual_seed(0)
    return perturb(IUNet(2, 2, 2, channels=4, num_levels=2, blocks_per_level=2), 0.1).double()


def _batch() -> torch.Tensor:
    return torch.randn(4, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _worker(rank: int, world_size: int, port: int, out_file: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.set_num_threads(1)
        model = DistributedDataParallel(_model())
        shard = _batch().chunk(world_size)[rank]
        model(shard).square().mean().backward()
        if rank == 0:
            torch.save({n: p.grad for n, p in model.module.named_parameters()}, out_file)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_gradients_equal_single_process(tmp_path):
    out_file = str(tmp_path / "ddp_grads.pt")
    context = mp.start_processes(_worker, args=(2, _free_port(), out_file), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 180
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("DDP workers did not finish within 180 s")
    ddp_grads = torch.load(out_file, weights_only=True)

    model = _model()
    # DDP averages the shard gradients: equal to the mean loss over the whole batch, sharded evenly.
    losses = [model(shard).square().mean() for shard in _batch().chunk(2)]
    (sum(losses) / 2).backward()
    assert model.memory_efficient
    for name, p in model.named_parameters():
        assert relative_error(ddp_grads[name], p.grad) <= 1e-10, name
