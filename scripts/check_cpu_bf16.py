#!/usr/bin/env python
"""Is bf16 autocast correct on this CPU? Runs the engine test's three passes (fp32, plain autograd under bf16
autocast, memory-efficient under bf16 autocast; ``tests/engine/test_reversible.py::test_cpu_bf16_autocast``) over
many seeds, with PyTorch's oneDNN kernels on and off, and for the first pass whose gradients are not finite names the
first module whose output (forward) or input gradient (backward) is not: the kernel to look at.

    python -m scripts.check_cpu_bf16 [--seeds 50] [--threads 2]

It prints the CPU's bf16 instructions (lscpu flags) and whether oneDNN runs bf16 natively here; exit 1 if any pass
was not finite. A CPU without native bf16 computes bf16 convolutions in ATen's reference kernels (slow, but they
show whether a failure is in our code or in a CPU-specific kernel).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys

import torch
from torch import nn

from monai_iunet.networks import IUNet


def _network(seed: int) -> tuple[IUNet, torch.Tensor]:
    torch.manual_seed(seed)
    net = IUNet(3, 2, 2, channels=4, num_levels=3, blocks_per_level=1)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return net, torch.randn(2, 2, 8, 8, 8)


def _gradients(net: IUNet, x: torch.Tensor, memory_efficient: bool, autocast: bool) -> torch.Tensor:
    net.memory_efficient = memory_efficient
    net.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = net(x)
    y.float().square().mean().backward()
    return torch.cat([p.grad.flatten() for p in net.parameters()])


def first_non_finite(net: IUNet, x: torch.Tensor) -> str:
    """Rerun the plain bf16 pass with hooks on every leaf module: where does the first non-finite value appear?"""
    found: list[str] = []

    def describe(name: str, module: nn.Module, where: str, tensors) -> None:
        if not found and any(isinstance(t, torch.Tensor) and not torch.isfinite(t).all() for t in tensors):
            shapes = [(tuple(t.shape), str(t.dtype)) for t in tensors if isinstance(t, torch.Tensor)]
            found.append(f"{where}: {name} ({type(module).__name__}) {shapes}")

    handles = []
    for name, module in net.named_modules():
        if not list(module.children()):
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: describe(name, m, "forward output", [out])))
            handles.append(module.register_full_backward_hook(
                lambda m, grad_in, grad_out, name=name: describe(name, m, "backward input gradient", grad_in)))
    try:
        _gradients(net, x, False, True)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else "no module's output or gradient was non-finite in this rerun (not reproducible)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    bf16_flags = sorted(set(re.findall(r"\b(avx512_bf16|avx512_fp16|amx_bf16|amx_tile|avx512f)\b", flags)))
    print(f"torch {torch.__version__}; CPU bf16 flags: {', '.join(bf16_flags) or 'none'}; oneDNN bf16 native: "
          f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    failures = 0
    for onednn in (True, False):
        with torch.backends.mkldnn.flags(enabled=onednn):
            for seed in range(args.seeds):
                net, x = _network(seed)
                passes = {"fp32": _gradients(net, x, False, False), "bf16 plain": _gradients(net, x, False, True),
                          "bf16 memory-efficient": _gradients(net, x, True, True)}
                bad = [name for name, g in passes.items() if not torch.isfinite(g).all()]
                if bad:
                    failures += 1
                    print(f"oneDNN {'on' if onednn else 'off'}, seed {seed}: non-finite gradients in {bad}; "
                          f"first non-finite in a rerun: {first_non_finite(net, x)}")
    print(f"{failures} of {2 * args.seeds} runs had non-finite gradients")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
