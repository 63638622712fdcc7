"""ONNX export: an eval-mode IUNet runs in ONNX Runtime with eager's output."""

from __future__ import annotations

import pytest
import torch

from monai_iunet import IUNet
from monai_iunet.export import export_onnx
from monai_iunet.layers.orthogonal import OrthogonalMatrix

from ..conftest import perturb

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


@pytest.mark.parametrize("memory_format", ["channels_last", "contiguous"])
def test_onnx_runtime_matches_eager(tmp_path, memory_format):
    net = perturb(IUNet(3, 4, 3, channels=4, num_levels=3, blocks_per_level=1, memory_format=memory_format), 0.1)
    shape = [2, 4, 16, 16, 12]  # 12 is not a multiple of the total stride 4: padding is part of the graph
    path = export_onnx(net, tmp_path / "iunet.onnx", shape, opset=18)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and [o.name for o in session.get_outputs()] == ["pred"]
    x = torch.randn(*shape)
    with torch.no_grad():
        expected = net(x)
    actual = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    # the matrices are trainable again after the export
    assert all(m.frozen is None for m in net.modules() if isinstance(m, OrthogonalMatrix))


def test_onnx_export_rejects_old_opsets(tmp_path):
    with pytest.raises(ValueError, match="opset"):
        export_onnx(IUNet(3, 4, 3, channels=4, num_levels=2), tmp_path / "x.onnx", [1, 4, 8, 8, 8], opset=13)
