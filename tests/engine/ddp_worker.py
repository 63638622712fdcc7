"""Run by ``torch.distributed.run`` from test_ddp.py: one DDP training step, rank 0 saves the gradients."""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from monai_iunet import IUNet


def model() -> IUNet:
    torch.manual_seed(0)
    net = IUNet(2, 2, 2, channels=4, num_levels=2, blocks_per_level=2).double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # away from the identity initialisation
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return net


def batch() -> torch.Tensor:
    return torch.randn(4, 2, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


if __name__ == "__main__":
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    net = DistributedDataParallel(model())  # default settings
    shard = batch().chunk(dist.get_world_size())[dist.get_rank()]
    net(shard).square().mean().backward()
    if dist.get_rank() == 0:
        torch.save({n: p.grad for n, p in net.module.named_parameters()}, sys.argv[1])
    dist.barrier()  # tearing gloo down while the other rank is still busy aborts the process
    dist.destroy_process_group()
