"""Memory planner: the peak memory of an ``IUNet`` training step, and the largest ROI or width that fits a budget.

How it predicts: the network and two training steps (forward, loss, backward, optimizer step; the second step runs
with the optimizer state in place) run on PyTorch's ``meta`` device — shapes only, no arithmetic — while a dispatch
mode follows the bytes of every live tensor storage. Every activation is proportional to batch size × voxels and
nothing else is, so two such runs (one and two units of volume) give the whole live-bytes timeline as
``c_t + d_t · batch · voxels`` exactly, and the peak for any ROI and batch size is ``max_t`` of it: a search over
ROIs costs nothing more.

What it adds for the device (``device_type``):

* ``"cpu"``: what convolutions allocate inside the op, invisible to the dispatch mode — the im2col buffers of those
  PyTorch runs with its fallback kernel (it picks by a size rule), oneDNN's blocked-layout copies of input and
  output for the others, and the batch of two half-volumes for those that ``SameConv`` moves off the fallback —
  and ``CPU_RUNTIME_BYTES`` for what a process that has run a training step holds beyond tensors (oneDNN, OpenMP
  and autograd-thread memory). Checked against peaks measured with ``monai_iunet.measure``
  (``docs/benchmarks/cpu.md``): −2 … +4 % for every channels-last configuration there, −15 … −1 % for the
  channels-first ones (the worst at width 8, where copies of full-resolution halves are not all modelled);
* ``"cuda"``: Adam's ``foreach`` temporaries are simulated as on CUDA; cuDNN's workspace and the allocator's
  rounding are not modelled (leave ~10 % headroom), and the CUDA context (~0.5 GiB, outside
  ``torch.cuda.max_memory_allocated``) is not included.

Python::

    from monai_iunet.planner import MemoryPlanner
    planner = MemoryPlanner(spatial_dims=3, in_channels=4, out_channels=3, channels=16, num_levels=5)
    planner.estimate([128, 128, 128]).peak_bytes
    planner.largest_roi(16 * 2**30, aspect=[160, 192, 128])

Command line (``--network`` reads a bundle config's ``network_def``, e.g. ``configs/networks/iunet16.json``)::

    python -m monai_iunet.planner --network configs/networks/iunet16.json --roi 128 128 128 --budget-gib 16
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .bundle import network_def
from .layers.base import is_channels_last
from .layers.conv import splits_batch
from .networks import IUNet
from .networks.invertible_unet import unet_plan

__all__ = ["CPU_RUNTIME_BYTES", "MemoryEstimate", "MemoryPlanner", "largest_width", "main"]

CPU_RUNTIME_BYTES = 30 * 2**20  # measured 23 MiB for a tiny network, up to ~40 MiB for width 16 at 64³
OPTIMIZERS = {
    "adam": lambda params, foreach: torch.optim.Adam(params, 1e-4, foreach=foreach),
    "adamw": lambda params, foreach: torch.optim.AdamW(params, 1e-4, foreach=foreach),
    "sgd": lambda params, foreach: torch.optim.SGD(params, 1e-4, momentum=0.9, foreach=foreach),
}
_GIB = 2**30
_aten = torch.ops.aten


def _group_norm_shapes(func, args):
    """Shape-only group norm: the meta decompositions of these two ops cost milliseconds per call."""
    if func is _aten.native_group_norm.default:
        x, n, groups = args[0], args[3], args[6]
        return x.new_empty(x.shape), x.new_empty((n, groups)), x.new_empty((n, groups))
    grad_out, x, channels, mask = args[0], args[1], args[6], args[9]
    return (
        grad_out.new_empty(x.shape) if mask[0] else None,
        grad_out.new_empty((channels,)) if mask[1] else None,
        grad_out.new_empty((channels,)) if mask[2] else None,
    )


class _LiveBytes(TorchDispatchMode):
    """Follows the bytes of every live tensor storage created under it: ``timeline`` holds them after every op, and
    ``convolutions`` the timeline index, input and weight of every convolution (forward and backward)."""

    _SHAPE_ONLY = {_aten.native_group_norm.default, _aten.native_group_norm_backward.default}

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.timeline: list[int] = []
        self.convolutions: list[_Convolution] = []

    def _release(self, key: int) -> None:
        self.current -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._SHAPE_ONLY and args[0].device.type == "meta":
            out = _group_norm_shapes(func, args)
        else:
            out = func(*args, **kwargs)
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.current += storage.nbytes()
                    weakref.finalize(storage, self._release, key)
        if func is _aten.convolution.default:  # (input, weight, bias, stride, padding, dilation, transposed, ...)
            self.convolutions.append(_Convolution(len(self.timeline), args[0], args[1], tuple(args[3:9])))
        elif func is _aten.convolution_backward.default:  # (grad_output, input, weight, bias_sizes, stride, ...)
            self.convolutions.append(_Convolution(len(self.timeline), args[1], args[2], tuple(args[4:10])))
        self.timeline.append(self.current)
        return out


_IM2COL_BACKENDS = {"Slow2d", "Slow3d", "SlowTranspose2d", "SlowTranspose3d", "SlowDilated2d", "SlowDilated3d"}


class _Convolution:
    """A convolution seen in the simulated step: where (timeline index), which pass, and its shapes."""

    def __init__(self, index: int, input: torch.Tensor, weight: torch.Tensor, conv_args: tuple):
        self.index = index
        self.conv_args = tuple(tuple(a) if isinstance(a, (list, tuple)) else a for a in conv_args)
        self.input_shape, self.weight_shape, self.dtype = tuple(input.shape), tuple(weight.shape), input.dtype
        self.channels_last = is_channels_last(input)

    def cpu_workspace(self, batch_size: int, scale: Sequence[int]) -> int:
        """Bytes a CPU convolution allocates inside the op, for this convolution on ``batch_size`` × (spatial shape
        × ``scale``). PyTorch picks the kernel by a size rule, applied here to stand-in tensors of the real shapes
        (``torch.empty`` touches no memory):

        * its fallback kernel: the im2col buffer, (C_in / groups · kernel volume) × output voxels (input voxels when
          transposed); in backward one such buffer at a time (the columns' gradient, then the recomputed columns);
        * oneDNN: copies of the input and the output in its blocked memory layout.
        """
        stride, padding, dilation, transposed, output_padding, groups = self.conv_args
        select = getattr(torch._C, "_select_conv_backend", None)
        if select is None:
            return 0
        kernel = self.weight_shape[2:]
        spatial_in = [s * f for s, f in zip(self.input_shape[2:], scale)]
        if transposed:
            spatial_out = [(s - 1) * st - 2 * p + d * (k - 1) + op + 1
                           for s, st, p, d, k, op in zip(spatial_in, stride, padding, dilation, kernel, output_padding)]
            out_channels = self.weight_shape[1] * groups
        else:
            spatial_out = [(s + 2 * p - d * (k - 1) - 1) // st + 1
                           for s, p, d, k, st in zip(spatial_in, padding, dilation, kernel, stride)]
            out_channels = self.weight_shape[0]
        input = torch.empty(batch_size, self.input_shape[1], *spatial_in, dtype=self.dtype)
        if self._halved(input):
            # SameConv's batch of two halves with their halos, and oneDNN's copies of it and of the output; in the
            # channels-first layout also the copies that join the output halves and split their gradient
            halves = self.input_shape[1] * (spatial_in[0] + 4 * padding[0]) * math.prod(spatial_in[1:])
            output = out_channels * math.prod(spatial_out)
            elements = 2 * halves + (1 if self.channels_last else 3) * output
            return elements * input.element_size()
        backend = select(input, torch.empty(self.weight_shape, dtype=self.dtype), None, *self.conv_args).name
        if backend in _IM2COL_BACKENDS:
            if all(k == 1 for k in kernel) and all(st == 1 for st in stride) and not any(padding):
                return 0  # a 1×1 convolution's columns are its input
            voxels = math.prod(spatial_in if transposed else spatial_out)
            return batch_size * self.weight_shape[1] * math.prod(kernel) * voxels * input.element_size()
        if backend.startswith("Mkldnn"):
            elements = self.input_shape[1] * math.prod(spatial_in) + out_channels * math.prod(spatial_out)
            return batch_size * elements * input.element_size()
        return 0


    def _halved(self, input: torch.Tensor) -> bool:
        """Whether this is a convolution :func:`~monai_iunet.layers.conv.same_conv` makes (stride 1, output size =
        input size, one group) that it runs as two half-volumes, by its own rule
        (:func:`~monai_iunet.layers.conv.splits_batch`) applied to a stand-in input on the CPU."""
        stride, padding, dilation, transposed, _, groups = self.conv_args
        same_size = all(2 * p == k - 1 for p, k in zip(padding, self.weight_shape[2:]))
        plain = all(s == 1 for s in stride) and all(d == 1 for d in dilation) and not transposed and groups == 1
        return same_size and plain and splits_batch(input, torch.empty(self.weight_shape, dtype=input.dtype))


@dataclass(frozen=True)
class MemoryEstimate:
    """Predicted peak memory of one training step."""

    roi_size: tuple[int, ...]
    batch_size: int
    peak_bytes: int
    parameter_bytes: int  # parameters and buffers
    optimizer_bytes: int  # gradients and optimizer state

    @property
    def peak_gib(self) -> float:
        return self.peak_bytes / _GIB

    def __str__(self) -> str:
        roi = "×".join(map(str, self.roi_size))
        return (
            f"batch {self.batch_size} × {roi}: peak {self.peak_gib:.2f} GiB "
            f"(parameters {self.parameter_bytes / 2**20:.0f} MiB, "
            f"gradients + optimizer state {self.optimizer_bytes / 2**20:.0f} MiB, activations and workspace "
            f"{(self.peak_bytes - self.parameter_bytes - self.optimizer_bytes) / 2**20:.0f} MiB)"
        )


class MemoryPlanner:
    """Peak training memory of one :class:`~monai_iunet.IUNet` configuration, for any ROI size and batch size.

    Args:
        dtype: dtype of the parameters and the batch (``torch.float32``; ``float16``/``bfloat16`` for pure
            half-precision training).
        optimizer: ``"adam"`` (default, as in the bundle), ``"adamw"`` or ``"sgd"`` (with momentum).
        device_type: ``"cuda"`` (default) or ``"cpu"``, the device the estimate is for (see the module docstring).
        network_kwargs: the ``IUNet`` arguments (``spatial_dims``, ``in_channels``, ``out_channels``, ``channels``,
            ``num_levels``, ``blocks_per_level``, ``memory_efficient``, …).
    """

    def __init__(
        self, *, dtype: torch.dtype = torch.float32, optimizer: str = "adam", device_type: str = "cuda",
        **network_kwargs,
    ) -> None:
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}.")
        if device_type not in ("cpu", "cuda"):
            raise ValueError(f"device_type must be 'cpu' or 'cuda', got {device_type!r}.")
        self.network_kwargs = network_kwargs
        self.dtype, self.optimizer, self.device_type = dtype, optimizer, device_type
        net = self._network()
        self.total_stride = list(net.total_stride)
        self.parameter_bytes = sum(t.nbytes for t in (*net.parameters(), *net.buffers()))
        grad_bytes = sum(p.nbytes for p in net.parameters() if p.requires_grad)
        self.optimizer_bytes = grad_bytes * {"adam": 3, "adamw": 3, "sgd": 2}[optimizer]
        del net
        unit = self.total_stride
        one, self._convolutions = self._timeline(unit)
        two, _ = self._timeline([2 * unit[0], *unit[1:]])
        if self.device_type != "cpu":
            self._convolutions = []
        if len(one) != len(two):  # the step must not branch on sizes; IUNet's does not
            raise RuntimeError("the training step differs between input sizes; cannot extrapolate the timeline.")
        # live bytes at every point of the step = constant + per_unit · (batch · volume / unit volume)
        runtime = CPU_RUNTIME_BYTES if device_type == "cpu" else 0
        self._constant = [2 * a - b + runtime for a, b in zip(one, two)]
        self._per_unit = [b - a for a, b in zip(one, two)]

    def _network(self) -> IUNet:
        with torch.device("meta"):
            net = IUNet(**self.network_kwargs)
        # float32 keeps the float64 bases of the orthogonal matrices, as in training code that never calls .to()
        return net if self.dtype == torch.float32 else net.to(self.dtype)

    def _timeline(self, spatial: list[int]) -> tuple[list[int], list[_Convolution]]:
        live = _LiveBytes()
        with live:
            net = self._network()
            optimizer = OPTIMIZERS[self.optimizer](net.parameters(), self.device_type == "cuda")
            x = torch.empty(1, net.in_channels, *spatial, device="meta", dtype=self.dtype)
            target = torch.empty(1, net.out_channels, *spatial, device="meta", dtype=self.dtype)
            live.timeline.clear()  # construction is not part of the step
            live.convolutions.clear()
            for _ in range(2):
                optimizer.zero_grad(set_to_none=True)
                torch.nn.functional.mse_loss(net(x), target).backward()
                optimizer.step()
        return live.timeline, live.convolutions

    def padded_size(self, roi_size: Sequence[int]) -> list[int]:
        """The size the network computes on: ``roi_size`` rounded up to multiples of the total stride."""
        if len(roi_size) != len(self.total_stride):
            raise ValueError(f"roi_size must have {len(self.total_stride)} entries, got {list(roi_size)}.")
        if any(int(s) < 1 for s in roi_size):
            raise ValueError(f"roi_size entries must be positive, got {list(roi_size)}.")
        return [math.ceil(int(s) / t) * t for s, t in zip(roi_size, self.total_stride)]

    def peak_bytes(self, roi_size: Sequence[int], batch_size: int = 1) -> int:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        padded = self.padded_size(roi_size)
        units = batch_size * math.prod(padded) // math.prod(self.total_stride)
        live = [c + d * units for c, d in zip(self._constant, self._per_unit)]
        scale = [p // t for p, t in zip(padded, self.total_stride)]
        workspace: dict[tuple, int] = {}
        for conv in self._convolutions:
            key = (conv.input_shape, conv.weight_shape, conv.conv_args)
            if key not in workspace:
                workspace[key] = conv.cpu_workspace(batch_size, scale)
            live[conv.index] += workspace[key]
        return max(live)

    def estimate(self, roi_size: Sequence[int], batch_size: int = 1) -> MemoryEstimate:
        return MemoryEstimate(
            tuple(int(s) for s in roi_size), batch_size, self.peak_bytes(roi_size, batch_size), self.parameter_bytes,
            self.optimizer_bytes,
        )

    def largest_roi(
        self, budget_bytes: float, batch_size: int = 1, aspect: Sequence[float] | None = None, max_steps: int = 4096
    ) -> list[int] | None:
        """The largest ROI with the shape of ``aspect`` (default a cube, in voxels) whose sides are multiples of the
        total stride and whose training step fits ``budget_bytes``; None if not even the smallest fits."""
        aspect = [1.0] * len(self.total_stride) if aspect is None else [float(a) for a in aspect]
        if len(aspect) != len(self.total_stride) or min(aspect) <= 0:
            raise ValueError(f"aspect must be {len(self.total_stride)} positive numbers, got {aspect}.")

        def roi(k: int) -> list[int]:  # k steps of the total stride along the shortest side
            shortest = min(aspect)
            return [t * max(1, round(k * a / shortest)) for a, t in zip(aspect, self.total_stride)]

        def fits(k: int) -> bool:
            return self.peak_bytes(roi(k), batch_size) <= budget_bytes

        if not fits(1):
            return None
        low, high = 1, 2
        while high <= max_steps and fits(high):
            low, high = high, 2 * high
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        return roi(low)


def _width_step(network_kwargs: dict) -> int:
    """The smallest width the core's channel plan accepts with these arguments
    (:func:`~monai_iunet.networks.invertible_unet.unet_plan`, no network built); the width search tries its multiples.
    ``IUNet``'s own conditions (e.g. ``identity_init``'s ``in_channels <= channels``) are not looked at here: building
    the network checks them."""
    arguments = inspect.signature(IUNet).bind_partial(**network_kwargs)
    arguments.apply_defaults()
    values = {**arguments.arguments, **arguments.arguments.get("core_kwargs", {})}
    error = None
    for width in range(2, 1025):
        try:
            unet_plan(values["spatial_dims"], width, values["num_levels"], values["blocks_per_level"],
                      values["strides"], values.get("split_fraction"))
        except ValueError as e:
            error = e
            continue
        return width
    raise ValueError(f"no width up to 1024 is valid for {network_kwargs}; the last error: {error}") from error


def largest_width(
    budget_bytes: float, roi_size: Sequence[int], batch_size: int = 1, max_width: int = 256, **planner_kwargs
) -> int | None:
    """The largest ``channels`` (a valid width up to ``max_width``) whose training step on ``roi_size`` fits
    ``budget_bytes``; None if not even the smallest fits. ``planner_kwargs`` as for :class:`MemoryPlanner`."""
    network_kwargs = {k: v for k, v in planner_kwargs.items() if k not in ("dtype", "optimizer", "device_type")}
    step = _width_step(network_kwargs)

    def fits(multiple: int) -> bool:
        planner = MemoryPlanner(**{**planner_kwargs, "channels": multiple * step})
        return planner.peak_bytes(roi_size, batch_size) <= budget_bytes

    if not fits(1):
        return None
    low, high = 1, max(1, max_width // step)
    if fits(high):
        return high * step
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low * step


def _network_kwargs(path: str | None, overrides: list[str]) -> dict:
    kwargs: dict = network_def(path, instantiate=False) if path else {"spatial_dims": 3, "in_channels": 4,
                                                                         "out_channels": 3}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value (e.g. channels=32), got {item!r}.")
        kwargs[key] = json.loads(value)
    return kwargs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m monai_iunet.planner",
        description="Predict the peak memory of an IUNet training step; find the largest ROI or width for a budget.",
    )
    parser.add_argument("--network", help="JSON file with IUNet arguments or a bundle config with network_def")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=JSON",
                        help="IUNet arguments on top of --network, e.g. channels=32 blocks_per_level=4")
    parser.add_argument("--roi", type=int, nargs="+", help="ROI size to estimate (and the shape for --budget-gib)")
    parser.add_argument("--batch", type=int, default=1, help="batch size")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16", "float64"])
    parser.add_argument("--optimizer", default="adam", choices=sorted(OPTIMIZERS))
    parser.add_argument("--device-type", default="cuda", choices=["cpu", "cuda"])
    parser.add_argument("--budget-gib", type=float, help="find the largest ROI (shaped like --roi) that fits")
    parser.add_argument("--largest-width", action="store_true", help="with --budget-gib: largest width for --roi")
    args = parser.parse_args(argv)
    if args.largest_width and not (args.budget_gib and args.roi):
        parser.error("--largest-width needs --budget-gib and --roi.")
    if not (args.roi or args.budget_gib):
        parser.error("give --roi, --budget-gib, or both.")

    kwargs = _network_kwargs(args.network, args.set)
    options = dict(dtype=getattr(torch, args.dtype), optimizer=args.optimizer, device_type=args.device_type)
    budget = args.budget_gib * _GIB if args.budget_gib else None
    if args.largest_width:
        width = largest_width(budget, args.roi, args.batch, **options, **kwargs)
        print(f"largest width for {'×'.join(map(str, args.roi))} in {args.budget_gib} GiB: "
              + (str(width) if width else "none (not even the smallest fits)"))
        return
    planner = MemoryPlanner(**options, **kwargs)
    if args.roi:
        print(planner.estimate(args.roi, args.batch))
    if budget:
        roi = planner.largest_roi(budget, args.batch, aspect=args.roi)
        if roi is None:
            print(f"nothing fits in {args.budget_gib} GiB (the smallest ROI, the total stride, does not).")
        else:
            print(f"largest ROI in {args.budget_gib} GiB (multiples of the total stride {planner.total_stride}): "
                  f"{roi}  -> {planner.estimate(roi, args.batch)}")


if __name__ == "__main__":
    main()
