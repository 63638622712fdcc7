"""ONNX export of an eval-mode network (for ONNX Runtime or TensorRT, which hospitals deploy on CPU and GPU).

The orthogonal resampling and mixing matrices are computed once and exported as constant weights
(:func:`~monai_iunet.layers.orthogonal.frozen_matrices`): ONNX has no matrix exponential, linear solve or Householder
product, and an inference graph gains nothing from recomputing them. Export uses PyTorch's dynamo-based exporter
(``pip install onnx onnxscript``; ``onnxruntime`` to run the result). The graph has the example's fixed input shape:
MONAI's ``SlidingWindowInferer`` feeds windows of ``roi_size`` (× ``sw_batch_size``), so export with that shape.

    python -m monai_iunet.export --network configs/networks/iunet16.json --ckpt models/model.pt --output model.onnx
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .layers.orthogonal import frozen_matrices

__all__ = ["export_onnx"]


def export_onnx(
    network: nn.Module,
    path: str | Path,
    example_shape: Sequence[int],
    opset: int = 18,
) -> Path:
    """Write ``network`` (put in eval mode) as an ONNX model with input ``image`` and output ``pred``.

    Args:
        network: e.g. an ``IUNet`` with its weights loaded.
        path: the ``.onnx`` file to write.
        example_shape: ``(batch, channels, *spatial)``: the input shape of the exported graph (e.g. the sliding
            window's ``sw_batch_size`` and ``roi_size``).
        opset: ONNX opset (≥ 17).
    """
    if opset < 17:
        raise ValueError(f"opset must be at least 17, got {opset}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    network.eval()
    example = torch.randn(*example_shape, device=next(network.parameters()).device)
    with torch.no_grad(), frozen_matrices(network):
        program = torch.onnx.export(network, (example,), dynamo=True, opset_version=opset, input_names=["image"],
                                    output_names=["pred"])
    program.save(str(path))
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--network", required=True, help="JSON with a network_def (a preset or a bundle config)")
    parser.add_argument("--ckpt", help="weights (state dict, or a checkpoint with a 'model' entry)")
    parser.add_argument("--output", required=True)
    parser.add_argument("--shape", type=int, nargs="+", default=[1, 4, 128, 128, 128],
                        help="input shape: sw_batch_size, channels, roi_size (default 1 4 128 128 128)")
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args(argv)
    from .bundle import network_def

    network = network_def(args.network)
    if args.ckpt:
        from .networks import load_weights

        load_weights(network, args.ckpt, map_location="cpu")
    print(f"wrote {export_onnx(network, args.output, args.shape, args.opset)}")


if __name__ == "__main__":
    main()
