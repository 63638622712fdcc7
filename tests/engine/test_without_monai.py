"""The engine and the layers import no MONAI: they work in an environment without it."""

from __future__ import annotations

import subprocess
import sys

import pytest

_SCRIPT = """
import sys
sys.modules["monai"] = None  # any "import monai" now raises ImportError
import torch
from torch import nn
import monai_iunet
from monai_iunet.engine import run_memory_efficient, run_program
from monai_iunet.layers import AdditiveCoupling, InvertibleChannelMixing, OrthogonalDownsampling

assert not hasattr(monai_iunet, "IUNet")
torch.manual_seed(0)
program = [
    InvertibleChannelMixing(3, 4, init="random"),
    OrthogonalDownsampling(3, 4),
    AdditiveCoupling(32, nn.Conv3d(16, 16, 3, padding=1), nn.Conv3d(16, 16, 3, padding=1)),
]
x = torch.randn(1, 4, 8, 8, 8, requires_grad=True)
run_memory_efficient(program, x).square().sum().backward()
efficient = x.grad.clone()
x.grad = None
run_program(program, x).square().sum().backward()
assert torch.allclose(efficient, x.grad, atol=1e-5), (efficient - x.grad).abs().max()
assert not any(name == "monai" or name.startswith("monai.") for name in sys.modules if sys.modules[name] is not None)
print("ok")
"""


@pytest.mark.slow
def test_engine_and_layers_run_without_monai():
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
