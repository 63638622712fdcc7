"""The benchmarks' catalogue of networks, measured one training step each in a fresh process by
``monai_iunet.measure`` (peak memory, step time, parameters, forward FLOPs: how, in its docstring).

Development tooling, not part of the installed package (``scripts.benchmarking``). Used by ``scripts/benchmark.py``
(the side-by-side tables in ``docs/benchmarks/``). A case is a JSON-able dict naming a network of the catalogue
(``network``, ``width``, ``levels``, ``blocks``) or giving any ``network_def``, and ``size``, ``batch``, ``steps``,
``device``. The networks (``NETWORKS``), all 4 input channels → 3 output channels in 3D:

* ``iunet`` / ``iunet-plain``: :class:`~monai_iunet.IUNet` with ``memory_efficient`` on / off, in its default
  channels-last layout; ``iunet-cf`` / ``iunet-plain-cf``: the same with ``memory_format="contiguous"``
  (channels-first, the layout of every IUNet row measured before channels-last became the default);
* ``iunet-refblock``: an ``IUNet`` whose coupling blocks match the reference implementation's default (one 3×3 conv
  → LeakyReLU → GroupNorm(1) per sub-network, Cayley resampling and mixing); one of its blocks is two of the
  reference's single couplings, so ``blocks`` b here equals the reference's ``architecture`` entries 2b;
* ``iunets-ref``: the reference ``iunets==0.1`` ``iUNet`` on ``memcnn==1.5.2`` (when installed: ``pip install
  --no-deps iunets==0.1 memcnn==1.5.2``) between the same lifting and output convolutions as ``IUNet``. Its
  exp/Cayley backward is wrong (``gradcheck`` fails); it is benchmarked for memory and speed only;
* ``unet`` / ``checkpoint-unet``: MONAI ``UNet`` / ``CheckpointUNet`` with channels ``width·2^i`` over ``levels``
  levels and ``num_res_units = blocks``;
* ``segresnet``: MONAI ``SegResNet`` as configured by the model zoo's BraTS bundle (blocks_down [1, 2, 2, 4],
  blocks_up [1, 1, 1], dropout 0.2) with ``init_filters = width``; ``levels`` and ``blocks`` do not apply.

And, in ``FLOWS``, ``iunet-flow`` / ``iunet-flow-plain``: :class:`~monai_iunet.networks.IUNetFlow` (4 channels,
squeezed to 32) memory-efficient / plain, trained on its negative log-likelihood; ``width`` does not apply.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

from torch import nn

__all__ = ["NETWORKS", "FLOWS", "FIXED_DEPTH", "build_network", "build_case_network", "reference_available",
           "run_case", "run_inference_case"]

IN_CHANNELS, OUT_CHANNELS = 4, 3


def _iunet(memory_efficient: bool, memory_format: str = "channels_last") -> Callable[..., nn.Module]:
    def build(width: int, levels: int, blocks: int) -> nn.Module:
        from monai_iunet.networks import IUNet

        return IUNet(3, IN_CHANNELS, OUT_CHANNELS, channels=width, num_levels=levels, blocks_per_level=blocks,
                     memory_efficient=memory_efficient, memory_format=memory_format)

    return build


def _iunet_refblock(width: int, levels: int, blocks: int) -> nn.Module:
    from monai_iunet.networks import IUNet

    return IUNet(3, IN_CHANNELS, OUT_CHANNELS, channels=width, num_levels=levels,
                 blocks_per_level=[blocks] * (levels - 1) + [2 * blocks], subnet_convs=1, adn_ordering="AN",
                 resampling_method="cayley", mixing_method="cayley")


def _iunets_reference(width: int, levels: int, blocks: int) -> nn.Module:
    from iunets import iUNet

    # The reference's bottom level runs its encoder and decoder couplings: 4b single couplings = our 2b blocks.
    return nn.Sequential(
        nn.Conv3d(IN_CHANNELS, width, 3, padding=1),
        iUNet(width, (2 * blocks,) * levels, 3, verbose=0),
        nn.Conv3d(width, OUT_CHANNELS, 1),
    )


def _flow(memory_efficient: bool) -> Callable[..., nn.Module]:
    def build(width: int, levels: int, blocks: int) -> nn.Module:
        from monai_iunet.networks import IUNetFlow

        # the flow's width is set by its squeeze (4 channels -> 32 at half resolution); ``width`` does not apply
        return IUNetFlow(3, IN_CHANNELS, num_levels=levels, blocks_per_level=blocks, memory_efficient=memory_efficient)

    return build


def _unet(checkpointed: bool) -> Callable[..., nn.Module]:
    def build(width: int, levels: int, blocks: int) -> nn.Module:
        from monai.networks.nets.unet import CheckpointUNet, UNet

        cls = CheckpointUNet if checkpointed else UNet
        return cls(3, IN_CHANNELS, OUT_CHANNELS, channels=[width * 2**i for i in range(levels)],
                   strides=[2] * (levels - 1), num_res_units=blocks)

    return build


def _segresnet(width: int, levels: int, blocks: int) -> nn.Module:
    from monai.networks.nets import SegResNet

    return SegResNet(3, init_filters=width, in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS,
                     blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1), dropout_prob=0.2)


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "iunet": _iunet(True),
    "iunet-plain": _iunet(False),
    "iunet-cf": _iunet(True, "contiguous"),
    "iunet-plain-cf": _iunet(False, "contiguous"),
    "iunet-refblock": _iunet_refblock,
    "iunets-ref": _iunets_reference,
    "unet": _unet(False),
    "checkpoint-unet": _unet(True),
    "segresnet": _segresnet,
}
# Normalizing flows (4 channels in, a latent and its log-determinant out), trained on their negative log-likelihood.
FLOWS: dict[str, Callable[..., nn.Module]] = {"iunet-flow": _flow(True), "iunet-flow-plain": _flow(False)}
FIXED_DEPTH = {"segresnet"}  # networks whose levels/blocks are fixed by their reference configuration


def build_case_network(case: dict) -> nn.Module:
    """The case's network of ``NETWORKS`` or ``FLOWS``, by name (``monai_iunet.measure.build`` calls it)."""
    return build_network(case["network"], case["width"], case["levels"], case["blocks"])


def build_network(name: str, width: int, levels: int, blocks: int) -> nn.Module:
    builders = {**NETWORKS, **FLOWS}
    if name not in builders:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(builders)}.")
    return builders[name](width, levels, blocks)


def reference_available() -> bool:
    """Whether the reference ``iunets`` (0.1, on ``memcnn`` 1.5.2) can be imported."""
    try:
        import iunets  # noqa: F401
        import memcnn  # noqa: F401
    except ImportError:
        return False
    return True


def run_case(case: dict, timeout: float | None = None, timed: bool = True) -> dict:
    """``monai_iunet.measure.run_case`` of a case of this catalogue (a flow trains on its negative log-likelihood)."""
    from monai_iunet.measure import run_case as run_measured

    spec = dict(case) if "network_def" in case else {
        **case, "builder": "scripts.benchmarking:build_case_network",
        "objective": "nll" if case.get("network") in FLOWS else "mse"}
    added = set(spec) - set(case)  # how the catalogue had it built: not part of the result
    return {k: v for k, v in run_measured(spec, timeout, timed).items() if k not in added}


_PEAK_RSS_WRAPPER = (
    "import resource, runpy, sys; sys.argv = ['monai.bundle'] + sys.argv[1:]\n"
    "try:\n    runpy.run_module('monai.bundle', run_name='__main__')\nexcept SystemExit as e:\n"
    "    if e.code: raise\n"
    "print('peak_rss_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
)


def run_inference_case(bundle, case_dir, out, model, configs=(), **overrides) -> dict:
    """Whole-case inference with a bundle's ``configs/inference.json`` (and further ``configs`` layered on it) on
    the case in ``case_dir`` (``*_t1``, ``*_t1ce``, ``*_t2``, ``*_flair`` NIfTI files), in a fresh process that
    reports its own peak RSS. Returns wall seconds of the whole process (loading and writing included), the peak
    RSS in MiB and the path of the label map written."""
    from pathlib import Path

    from monai_iunet.apps.brats.labels import MODALITIES
    from monai_iunet.bundle import bundle_command

    bundle, case_dir, out = Path(bundle), Path(case_dir).resolve(), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    images = [str(next(case_dir.glob(f"*_{m}.nii*"))) for m in MODALITIES]
    datalist = out / "datalist.json"
    datalist.write_text(json.dumps({"testing": [{"image": images, "case": case_dir.name}]}))
    files = [str(bundle / "configs" / "inference.json"), *(str(c) for c in configs)]
    # The child reports its own peak RSS: RUSAGE_CHILDREN would give the largest of all runs so far.
    command = bundle_command(files, [sys.executable, "-c", _PEAK_RSS_WRAPPER], bundle_root=bundle,
                             data_list_file_path=datalist, dataset_dir=out, ckpt_path=model, output_dir=out,
                             write_dicom_seg=False, **overrides)
    start = time.perf_counter()
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak_kib = int(result.stdout.strip().splitlines()[-1].split()[-1])
    return {"seconds": seconds, "peak_rss_mib": peak_kib / 1024, "label": str(out / f"{case_dir.name}_seg.nii.gz")}
