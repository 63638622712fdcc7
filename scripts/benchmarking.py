"""Measure one training step — peak memory, step time, parameters, forward FLOPs — each case in a fresh process.

Development tooling, not part of the installed package (``scripts.benchmarking``). Used by ``scripts/benchmark.py``
(the side-by-side tables in ``docs/benchmarks/``) and by the tests that hold the memory planner to measurements. A
case is a JSON-able dict; :func:`run_case` measures it in a new Python process so that peaks never leak from one case
into the next:

* CPU: the peak anonymous resident memory of the training steps after the warm-up step (``VmHWM``, reset through
  ``/proc/self/clear_refs``, less the file-backed and shared pages, i.e. less the ~100 MiB of PyTorch's code that
  the first backward pages in) minus the anonymous memory before the network was built, with
  ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc hands large buffers back to the system and peaks are reproducible
  (the step time comes from a second process with the default allocator, see :func:`run_case`);
* CUDA: ``torch.cuda.max_memory_allocated()`` (nothing is allocated before the network is built).

Both therefore count the network's parameters, the optimizer state, the batch and everything the step allocates.

The networks (``NETWORKS``), all 4 input channels → 3 output channels in 3D:

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

import gc
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["NETWORKS", "FLOWS", "FIXED_DEPTH", "build_network", "build_case_network", "reference_available", "measure",
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
    """The case's network: ``case["network_def"]`` (a MONAI bundle config of any network, e.g. a MONAI
    ``DynUNet`` or an ``IUNet`` with task-specific arguments) or one of ``NETWORKS`` by name."""
    if "network_def" in case:
        from monai_iunet.bundle import network_def

        return network_def(case["network_def"])
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


def _status_bytes(*fields: str) -> int:
    """Sum of ``/proc/self/status`` fields (kB) in bytes."""
    with open("/proc/self/status") as f:
        status = f.read()
    return sum(int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) for field in fields) * 1024


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS


def _peak_anonymous_bytes() -> int:
    return _status_bytes("VmHWM") - _status_bytes("RssFile", "RssShmem")


def measure(case: dict) -> dict:
    """Measure ``case`` in this process (call it in a fresh one, see :func:`run_case`).

    ``case`` keys: ``network``, ``width``, ``levels``, ``blocks`` (or ``network_def``, see
    :func:`build_case_network`), ``size`` (int or per-axis list), ``batch`` (default 1), ``steps`` (default 4, the
    first is warm-up), ``device`` (default ``cpu``), ``in_channels``/``out_channels`` (default 4/3). Returns the case
    with ``parameters``, ``forward_flops``, ``peak_bytes``, ``saved_bytes`` (kept for backward by autograd) and
    ``step_seconds`` (median over the steps after the first; the CPU peak is taken over them too).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from monai_iunet.engine import SavedTensorBytes

    device = torch.device(case.get("device", "cpu"))
    size = case["size"] if isinstance(case["size"], list) else [case["size"]] * 3
    batch, steps = case.get("batch", 1), case.get("steps", 4)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    else:
        baseline = _status_bytes("RssAnon")
    net = build_case_network(case).to(device)
    optimizer = torch.optim.Adam(net.parameters(), 1e-4)
    x = torch.randn(batch, case.get("in_channels", IN_CHANNELS), *size, device=device)
    target = torch.rand(batch, case.get("out_channels", OUT_CHANNELS), *size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as flops:
        net(x)
    gc.collect()

    def objective() -> torch.Tensor:
        if case.get("network") in FLOWS:  # a flow trains on its negative log-likelihood
            from monai_iunet.networks.flow import standard_normal_log_prob

            z, log_det = net(x)
            return -(standard_normal_log_prob(z) + log_det).mean()
        return nn.functional.mse_loss(net(x), target)

    def step() -> int:
        optimizer.zero_grad(set_to_none=True)
        with SavedTensorBytes() as saved:
            loss = objective()
        loss.backward()
        optimizer.step()
        return saved.bytes

    times = []
    for i in range(steps):
        start = time.perf_counter()
        saved = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if i == 0 and device.type == "cpu" and steps > 1:
            _reset_peak_rss()  # after the warm-up step, which pages in the backward's code
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_anonymous_bytes()
    return {
        **case,
        "parameters": sum(p.numel() for p in net.parameters()),
        "forward_flops": flops.get_total_flops(),
        "peak_bytes": peak - baseline,
        "saved_bytes": saved,
        "step_seconds": statistics.median(times[1:] or times),
    }


def run_case(case: dict, timeout: float | None = None, timed: bool = True) -> dict:
    """:func:`measure` ``case`` in fresh Python processes; a failure (e.g. out of memory) is returned as
    ``{**case, "error": message}`` instead of raised, so that a sweep goes on.

    Memory and time come from two processes: the peak from one with ``MALLOC_MMAP_THRESHOLD_=65536`` (glibc then
    hands every freed tensor back to the OS, so that resident memory follows live memory; a warm-up and one
    measured step), the step time from one with the allocator as users run it (that setting makes every large
    allocation an ``mmap`` and costs a network with many temporaries up to ~1.5× its step time). ``timed=False``
    runs only the first (for memory; its ``step_seconds`` is then that process's)."""
    memory = _run_measure({**case, "steps": min(case.get("steps", 4), 2)}, {"MALLOC_MMAP_THRESHOLD_": "65536"},
                          timeout)
    if "error" in memory:
        return {**case, "error": memory["error"]}
    if not timed:
        return {**memory, **case}
    timing = _run_measure(case, {}, timeout)
    if "error" in timing:
        return {**case, "error": timing["error"]}
    return {**memory, **case, "step_seconds": timing["step_seconds"]}


def _run_measure(case: dict, env: dict, timeout: float | None) -> dict:
    try:
        out = subprocess.run([sys.executable, __file__, json.dumps(case)],
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    if out.returncode != 0:
        lines = (out.stderr.strip() or f"exit status {out.returncode}").splitlines()
        return {"error": lines[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


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


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))
