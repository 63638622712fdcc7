"""The fully invertible U-Net core (paper §3, eq. 8–9)."""

# No ``from __future__ import annotations`` here: TorchScript reads class-level annotations as types, not strings.

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import List, Tuple

import torch
from monai.utils import ensure_tuple_rep
from torch import Tensor, nn

from ..engine.reversible import Concat, Program, Split, invert_program, run
from ..layers.actnorm import ActNorm
from ..layers.base import (
    MEMORY_FORMATS,
    InvertibleIdentity,
    InvertibleModule,
    InvertibleSequential,
    check_input,
    enter_layout,
    leave_layout,
    weights_channels_last,
)
from ..layers.precision import REDUCED_PRECISION
from ..layers.resampling import InvertibleChannelMixing, OrthogonalDownsampling, OrthogonalUpsampling, as_strides
from .blocks import coupling_block

__all__ = ["InvertibleUNet", "UNetPlan", "level_strides", "unet_plan"]


def _per_level(value, num_levels: int, name: str) -> list:
    """A scalar (same for every level) or a sequence of ``num_levels`` values."""
    try:
        return list(ensure_tuple_rep(value, num_levels))
    except ValueError as error:
        raise ValueError(f"{name} must be a number or a sequence of {num_levels} values, got {value!r}.") from error


def level_strides(strides, spatial_dims: int, num_resamplings: int) -> list[tuple[int, ...]]:
    """Per-level, per-axis strides from an int, a per-axis sequence of ints, or a per-level sequence.

    A flat sequence of ints is read as per-axis (the same for every level); per-level strides are a sequence of
    ``num_levels - 1`` entries, each an int or a per-axis sequence (e.g. ``[[2, 2, 1], 2, 2]``).
    """
    if isinstance(strides, int) or (isinstance(strides, Sequence) and all(isinstance(s, int) for s in strides)):
        return [as_strides(strides, spatial_dims, "strides")] * num_resamplings
    per_level = list(strides)
    if len(per_level) != num_resamplings:
        raise ValueError(
            f"strides must be an int, {spatial_dims} per-axis ints, or {num_resamplings} per-level entries "
            f"(num_levels - 1), got {strides!r}."
        )
    return [as_strides(s, spatial_dims, f"strides[{i}]") for i, s in enumerate(per_level)]


@dataclass(frozen=True)
class UNetPlan:
    """The channel and stride plan of an :class:`InvertibleUNet`: everything about its topology that sizes depend on.

    ``level_channels[i]`` channels at level i; ``skip_channels[i]`` of them are split off as level i's skip;
    ``level_strides[i]`` is the per-axis downsampling stride below level i; ``blocks[i]`` couplings at level i.
    """

    level_channels: tuple[int, ...]
    skip_channels: tuple[int, ...]
    level_strides: tuple[tuple[int, ...], ...]
    blocks: tuple[int, ...]
    spatial_dims: int

    @property
    def total_stride(self) -> list[int]:
        """Per-axis factor that input sizes must be multiples of."""
        return [math.prod(axis) for axis in zip(*self.level_strides)] or [1] * self.spatial_dims


def unet_plan(
    spatial_dims: int,
    channels: int,
    num_levels: int,
    blocks_per_level: int | Sequence[int] = 2,
    strides: int | Sequence = 2,
    split_fraction: float | Sequence[float] | None = None,
) -> UNetPlan:
    """The :class:`UNetPlan` of an :class:`InvertibleUNet` with these arguments (same meaning), without building it;
    ``ValueError`` for arguments that make no valid network. Pure and cheap: the constructor, ``IUNet``'s padding
    and the memory planner's width search all use it."""
    if spatial_dims not in (1, 2, 3):
        raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims}.")
    if num_levels < 1:
        raise ValueError(f"num_levels must be at least 1, got {num_levels}.")
    if channels < 2:
        raise ValueError(f"channels must be at least 2 (coupling layers split channels), got {channels}.")
    blocks = [int(b) for b in _per_level(blocks_per_level, num_levels, "blocks_per_level")]
    if any(b < 0 for b in blocks):
        raise ValueError(f"blocks_per_level must be non-negative, got {blocks_per_level!r}.")
    strides_per_level = level_strides(strides, spatial_dims, num_levels - 1)
    sigmas = [math.prod(s) for s in strides_per_level]
    if any(s < 2 for s in sigmas):
        raise ValueError(f"every level must downsample (prod(stride) >= 2), got strides {strides_per_level}.")
    if split_fraction is None:
        fractions = [min(Fraction(2, s), Fraction(1, 2)) for s in sigmas]
    else:
        fractions = [
            Fraction(f).limit_denominator(10_000) for f in _per_level(split_fraction, num_levels - 1, "split_fraction")
        ]
    level_channels, skip_channels = [channels], []
    for i, (fraction, sigma) in enumerate(zip(fractions, sigmas)):
        kept = fraction * level_channels[-1]
        if not 0 < fraction < 1 or kept.denominator != 1:
            raise ValueError(
                f"split_fraction {float(fraction)} at level {i} must lie in (0, 1) and split its "
                f"{level_channels[-1]} channels into whole parts; change channels or split_fraction."
            )
        skip_channels.append(level_channels[-1] - int(kept))
        level_channels.append(int(kept) * sigma)
    for i, (c, b) in enumerate(zip(level_channels, blocks)):
        if b > 0 and c < 2:
            raise ValueError(f"level {i} has {c} channel(s); its coupling layers need at least 2 (see channels).")
    return UNetPlan(tuple(level_channels), tuple(skip_channels), tuple(strides_per_level), tuple(blocks), spatial_dims)


_MARKER_KINDS = (Split, Concat)  # a marker's kind is its index here (TorchScript holds markers as int pairs)


def _apply_markers(x: Tensor, skips: list[Tensor], markers: list[tuple[int, int]]) -> Tensor:
    for kind, n in markers:
        if kind == 0:  # Split
            skips.append(x[:, :n])
            x = x[:, n:]
        else:  # Concat
            x = torch.cat([skips.pop(), x], dim=1)
    return x


def _make_stage(spatial_dims: int, channels: int, blocks: int, coupling: str, subnet: dict,
                actnorm: bool) -> InvertibleSequential:
    """``blocks`` coupling blocks of one level (each after an actnorm layer with ``actnorm``)."""
    layers: list[InvertibleModule] = []
    for _ in range(blocks):
        if actnorm:
            layers.append(ActNorm(spatial_dims, channels))
        layers.append(coupling_block(spatial_dims, channels, coupling, **subnet))
    return InvertibleSequential(*layers)


def _make_mixing(spatial_dims: int, channels: int, init, enabled: bool, method: str) -> InvertibleModule:
    """The learnable channel mixing of one level (the identity when switched off)."""
    return InvertibleChannelMixing(spatial_dims, channels, method, init) if enabled else InvertibleIdentity()


class InvertibleUNet(InvertibleModule):
    """Fully invertible U-Net: ``forward`` maps ``(B, C, *S)`` to ``(B, C, *S)`` and ``inverse`` undoes it exactly.

    Level i applies ``blocks_per_level[i]`` coupling layers, mixes channels, splits off ``(1 - λ)·C_i`` channels as
    the skip, and downsamples the remaining ``λ·C_i`` channels with a learnable orthogonal downsampling (σ_i = ∏
    stride_i), giving ``C_{i+1} = λ·σ_i·C_i``. The decoder mirrors it: upsample, concatenate the skip, mix channels,
    ``blocks_per_level[i]`` coupling layers. The bottom level has ``blocks_per_level[-1]`` coupling layers.

    The topology is written down once, as a program (:meth:`program`): the layers in execution order (``steps``)
    with the skips' split/concat markers between them (``markers``). ``forward`` runs it through the
    memory-efficient engine (plain autograd where no gradient is recorded, and under tracing or export), TorchScript
    interprets the same steps and markers, and ``inverse`` runs the program backwards.

    Args:
        spatial_dims: 1, 2 or 3.
        channels: number of channels C_0 of input and output.
        num_levels: number of resolution levels (≥ 1).
        blocks_per_level: coupling layers per level (int or a sequence of ``num_levels`` ints).
        strides: downsampling strides: an int, a per-axis sequence of ints (same for all levels), or a per-level
            sequence of ``num_levels - 1`` ints/per-axis sequences (e.g. ``[[2, 2, 1], 2]``).
        split_fraction: λ, the fraction of channels downsampled at each level (float or per-level sequence).
            Default ``min(2/σ, 1/2)``: channels double per level (1/2 in 2D and 1/4 in 3D at stride 2).
        coupling: ``"additive"`` (default; fused memory-efficient backward) or ``"affine"``.
        subnet_convs: convolutions in each coupling sub-network.
        kernel_size: kernel size of those convolutions.
        norm: MONAI norm spec for the sub-networks (default layer norm, ``("group", {"num_groups": 1})``).
        act: MONAI activation spec for the sub-networks.
        adn_ordering: order of norm and activation after each sub-network conv, ``"NA"`` or ``"AN"`` (see
            :func:`~monai_iunet.networks.blocks.coupling_subnet`).
        zero_init: zero-initialise the final norm of each sub-network, making the whole core the identity at init.
        resampling_method: orthogonal parametrisation of the resampling, ``"exp"``, ``"cayley"``, ``"householder"``.
        resampling_init: ``"haar"``, ``"pixel_shuffle"`` or ``"random"`` (each upsampling starts as the exact
            inverse of its downsampling).
        learnable_resampling: False freezes the resampling matrices.
        channel_mixing: orthogonal 1×1 channel mixing before each split and after each concatenation.
        mixing_method: orthogonal parametrisation of the channel mixing.
        mixing_init: ``"identity"`` or ``"random"`` (each decoder mixing starts as the inverse of its encoder twin).
        memory_efficient: during training keep no activations and reconstruct them by inversion in backward.
        subnet_dtype: ``"bfloat16"`` or ``"float16"`` runs the coupling sub-networks under autocast to that dtype
            (norms in fp32) while the invertible state stays fp32, on any device (on CPU, where MONAI's trainers
            have no autocast, this is how a model trains in bf16); None (default): the caller's autocast, if any.
            Faster only where the hardware computes that dtype natively (``docs/benchmarks/training_cpu.md``).
        memory_format: ``"channels_last"`` (default; 2D/3D) keeps the state and the convolution weights with channels
            stored last, where oneDNN (CPU) and cuDNN run the sub-networks' small-channel convolutions fastest
            (measured: ``docs/benchmarks/cpu.md``); ``"contiguous"`` keeps PyTorch's default channels-first layout.
            Inputs may come in either layout; the output comes in the input's layout.
        actnorm: an :class:`~monai_iunet.layers.ActNorm` before every coupling layer (for flows; identity at init).
    """

    markers: List[List[Tuple[int, int]]]  # noqa: UP006 (TorchScript cannot infer it from empty lists)

    def __init__(
        self,
        spatial_dims: int,
        channels: int,
        num_levels: int,
        blocks_per_level: int | Sequence[int] = 2,
        strides: int | Sequence = 2,
        split_fraction: float | Sequence[float] | None = None,
        coupling: str = "additive",
        subnet_convs: int = 2,
        kernel_size: int = 3,
        norm: tuple | str = ("group", {"num_groups": 1}),
        act: tuple | str = ("leakyrelu", {"negative_slope": 0.01}),
        adn_ordering: str = "NA",
        zero_init: bool = True,
        resampling_method: str = "exp",
        resampling_init: str = "haar",
        learnable_resampling: bool = True,
        channel_mixing: bool = True,
        mixing_method: str = "exp",
        mixing_init: str = "identity",
        memory_efficient: bool = True,
        subnet_dtype: str | None = None,
        memory_format: str = "channels_last",
        actnorm: bool = False,
    ) -> None:
        super().__init__()
        if memory_format not in MEMORY_FORMATS:
            raise ValueError(f"memory_format must be one of {MEMORY_FORMATS}, got {memory_format!r}.")
        if subnet_dtype is not None and subnet_dtype not in REDUCED_PRECISION:
            raise ValueError(f"subnet_dtype must be one of {tuple(REDUCED_PRECISION)} or None, got {subnet_dtype!r}.")
        plan = unet_plan(spatial_dims, channels, num_levels, blocks_per_level, strides, split_fraction)
        self.spatial_dims = spatial_dims
        self.memory_efficient = memory_efficient
        self.level_channels = list(plan.level_channels)
        self.skip_channels = list(plan.skip_channels)
        self.level_strides = [list(s) for s in plan.level_strides]
        self.total_stride = plan.total_stride
        subnet = dict(
            num_convs=subnet_convs, kernel_size=kernel_size, norm=norm, act=act, adn_ordering=adn_ordering,
            zero_init=zero_init, compute_dtype=subnet_dtype,
        )
        stage = functools.partial(_make_stage, spatial_dims, coupling=coupling, subnet=subnet, actnorm=actnorm)
        mixing = functools.partial(_make_mixing, spatial_dims, enabled=channel_mixing, method=mixing_method)
        resampling = dict(method=resampling_method, init=resampling_init, learnable=learnable_resampling)
        self._set_program(self._make_program(plan, stage, mixing, mixing_init, resampling))
        self.channels_last = memory_format == "channels_last" and spatial_dims > 1
        if self.channels_last:
            weights_channels_last(self, spatial_dims)

    @staticmethod
    def _make_program(plan: UNetPlan, stage, mixing, mixing_init, resampling: dict) -> Program:
        """The topology, once: a program of invertible layers and skip markers that forward, inverse, the
        memory-efficient engine and TorchScript all run. The layers are built in this order (encoder, then decoder,
        each kind of layer in turn) so that a seed gives the same initial weights as always; decoder layers start as
        the exact inverses of their encoder twins, so the core is the identity at init."""
        channels, skips, strides = plan.level_channels, plan.skip_channels, plan.level_strides
        levels = range(len(channels) - 1)
        encoder = [stage(channels[i], plan.blocks[i]) for i in levels]
        split_mixing = [mixing(channels[i], mixing_init) for i in levels]
        downsampling = [
            OrthogonalDownsampling(plan.spatial_dims, channels[i] - skips[i], strides[i], resampling["method"],
                                   resampling["init"], resampling["learnable"])
            for i in levels
        ]
        bottom = stage(channels[-1], plan.blocks[-1])
        upsampling = {
            i: OrthogonalUpsampling(plan.spatial_dims, channels[i + 1], strides[i], resampling["method"],
                                    downsampling[i].matrix.value(torch.float64).detach(), resampling["learnable"])
            for i in reversed(levels)
        }
        concat_mixing = {
            i: mixing(channels[i], split_mixing[i].matrix.value(torch.float64).detach()[0].mT
                      if isinstance(split_mixing[i], InvertibleChannelMixing) else None)
            for i in reversed(levels)
        }
        decoder = {i: stage(channels[i], plan.blocks[i]) for i in reversed(levels)}
        program: Program = []
        for i in levels:
            program += [encoder[i], split_mixing[i], Split(skips[i]), downsampling[i]]
        program.append(bottom)
        for i in reversed(levels):
            program += [upsampling[i], Concat(skips[i]), concat_mixing[i], decoder[i]]
        return program

    def _set_program(self, program: Program) -> None:
        """Hold a program as TorchScript can run it: its layers (``steps``) and, between them, its markers
        (``markers[k]``: the (kind, skip channels) markers before ``steps[k]``; ``markers[-1]``: those after the
        last step)."""
        self.steps = nn.ModuleList([step for step in program if isinstance(step, nn.Module)])
        self.markers = [[]]
        for step in program:
            if isinstance(step, nn.Module):
                self.markers.append([])
            else:
                self.markers[-1].append((_MARKER_KINDS.index(type(step)), step.skip_channels))

    def _check_input(self, x: Tensor) -> None:
        check_input(x, "InvertibleUNet", self.spatial_dims, self.level_channels[0], self.total_stride,
                    "pad the input (IUNet does this with pad_input=True)")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        x, restore = enter_layout(x, self.channels_last)
        y = self._run_scripted(x) if torch.jit.is_scripting() else self._run_program(x)
        return leave_layout(y, restore)

    def _run_scripted(self, x: Tensor) -> Tensor:
        """The program as TorchScript runs it (it cannot run the engine): plain autograd, same layers and markers."""
        skips: list[Tensor] = []
        for k, step in enumerate(self.steps):
            x = _apply_markers(x, skips, self.markers[k])
            x = step(x)
        return _apply_markers(x, skips, self.markers[-1])

    @torch.jit.unused
    def _run_program(self, x: Tensor) -> Tensor:
        return run(self.program(), x, self.memory_efficient)

    @torch.jit.unused
    def program(self) -> Program:
        """The core as a flat program of invertible layers and skip markers, for the memory-efficient engine."""
        program: Program = []
        for markers, step in zip(self.markers, self.steps):
            program += [_MARKER_KINDS[kind](n) for kind, n in markers] + [step]
        return program + [_MARKER_KINDS[kind](n) for kind, n in self.markers[-1]]

    @torch.jit.unused
    def forward_and_log_det(self, x: Tensor) -> Tuple[Tensor, Tensor]:  # noqa: UP006
        """``(y, log|det ∂y/∂x|)`` per sample through the memory-efficient engine (for flows: affine couplings and
        actnorm contribute, the orthogonal layers have |det| = 1)."""
        self._check_input(x)
        x, restore = enter_layout(x, self.channels_last)
        y, log_det = run(self.program(), x, self.memory_efficient, log_det=True)
        return leave_layout(y, restore), log_det

    @torch.jit.unused
    def inverse(self, y: Tensor) -> Tensor:
        """Reconstruct the input from the output (exact up to floating-point rounding); in the output's layout."""
        self._check_input(y)
        y, restore = enter_layout(y, self.channels_last)
        return leave_layout(invert_program(self.program(), y), restore)
