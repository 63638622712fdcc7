#!/usr/bin/env python
"""Is bf16 autocast correct on this CPU? Runs the engine's bf16 test (``tests/engine/test_reversible.py::
test_cpu_bf16_autocast``: fp32, plain autograd under bf16 autocast and memory-efficient under bf16 autocast, with
PyTorch's oneDNN kernels on and off) over many seeds; a pass whose gradients are not finite fails naming the first
module whose output (forward) or input gradient (backward) is not: the kernel to look at.

    python -m scripts.check_cpu_bf16 [--seeds 50] [--threads 2]

It prints the CPU's bf16 instructions (lscpu flags) and whether oneDNN runs bf16 natively here; its exit status is
pytest's. A CPU without native bf16 computes bf16 convolutions in ATen's reference kernels (slow, but they show
whether a failure is in our code or in a CPU-specific kernel).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

import torch

from scripts import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    flags = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    bf16_flags = sorted(set(re.findall(r"\b(avx512_bf16|avx512_fp16|amx_bf16|amx_tile|avx512f)\b", flags)))
    print(f"torch {torch.__version__}; CPU bf16 flags: {', '.join(bf16_flags) or 'none'}; oneDNN bf16 native: "
          f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}", flush=True)
    environment = {**os.environ, "MONAI_IUNET_BF16_SEEDS": str(args.seeds), "OMP_NUM_THREADS": str(args.threads)}
    test = "tests/engine/test_reversible.py::test_cpu_bf16_autocast"
    sys.exit(subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT,
                            env=environment).returncode)


if __name__ == "__main__":
    main()
