"""The contract every invertible layer follows, and the small helpers they share."""

from __future__ import annotations

import contextlib
from typing import List, Optional, Tuple  # TorchScript reads these, not PEP 585/604 spellings

import torch
from torch import Tensor, nn

__all__ = [
    "InvertibleModule", "InvertibleIdentity", "InvertibleSequential", "trainable_parameters", "autocast_state",
    "autocast_disabled", "MEMORY_FORMATS", "to_channels_last", "is_channels_last", "like_layout", "memory_format_of",
    "weights_channels_last", "enter_layout", "leave_layout", "check_input",
]

MEMORY_FORMATS = ("channels_last", "contiguous")


def to_channels_last(x: Tensor) -> Tensor:
    """``x`` with its channels stored last (NHWC / NDHWC), the layout oneDNN and cuDNN run 2D/3D convolutions fastest
    in; 1D tensors have no such layout and are returned as they are. A no-op when ``x`` is already so stored."""
    if x.dim() == 5:
        return x.contiguous(memory_format=torch.channels_last_3d)
    if x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def is_channels_last(x: Tensor) -> bool:
    """Whether ``x`` is stored channels-last (a 2D/3D tensor; with one channel both layouts coincide)."""
    if x.dim() == 5:
        return x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()
    if x.dim() == 4:
        return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return False


def memory_format_of(x: Tensor) -> torch.memory_format:
    """The memory format to allocate a tensor like ``x`` (of another shape) in: channels-last or contiguous."""
    if is_channels_last(x):
        return torch.channels_last_3d if x.dim() == 5 else torch.channels_last
    return torch.contiguous_format


def enter_layout(x: Tensor, channels_last: bool) -> Tuple[Tensor, bool]:
    """A network's entry: ``x`` in the network's layout (channels-last when ``channels_last``), and whether the exit
    must give the caller's channels-first layout back (:func:`leave_layout`). One conversion at entry and one at exit;
    none inside."""
    restore = channels_last and not is_channels_last(x)
    return (to_channels_last(x) if channels_last else x), restore


def leave_layout(y: Tensor, restore: bool) -> Tensor:
    """A network's exit: ``y`` in the layout its caller gave (``restore`` from :func:`enter_layout`)."""
    return y.contiguous() if restore else y


def check_input(x: Tensor, name: str, spatial_dims: int, channels: int, strides: Optional[List[int]] = None,
                hint: str = "pad the input") -> None:
    """The input check of the layers and networks: a ``(batch, channels, *spatial)`` tensor with ``spatial_dims``
    spatial axes, ``channels`` channels and, given ``strides``, every spatial size a multiple of its stride. Otherwise
    a ``ValueError`` that names ``name``, the shape, and (for the strides) what to do, ``hint``."""
    if x.dim() != spatial_dims + 2:
        raise ValueError(f"{name} expects (batch, {channels}, {spatial_dims} spatial dims), got shape {list(x.shape)}.")
    if x.shape[1] != channels:
        raise ValueError(f"{name} expects in_channels={channels} input channels, got {x.shape[1]}.")
    if strides is not None:
        for size, stride in zip(x.shape[2:], strides):
            if size % stride != 0:
                raise ValueError(f"{name}: spatial size {list(x.shape[2:])} is not divisible by the stride "
                                 f"{strides}; {hint}.")


def weights_channels_last(module: nn.Module, spatial_dims: int) -> nn.Module:
    """Store ``module``'s 2D/3D convolution weights channels-last (in place; other parameters keep their layout)."""
    if spatial_dims > 1:
        module.to(memory_format=torch.channels_last_3d if spatial_dims == 3 else torch.channels_last)
    return module


def like_layout(part: Tensor, whole: Tensor) -> Tensor:
    """A channel slice of ``whole`` stored as ``whole`` is: a slice of a channels-last tensor is strided in no
    standard layout, and a convolution given one falls back to channels-first (the slow kernels on CPU); a slice of
    a channels-first tensor is already contiguous."""
    return to_channels_last(part) if is_channels_last(whole) else part


def autocast_state(device_type: str) -> tuple[bool, torch.dtype | None]:
    """(enabled, dtype) of autocast for ``device_type``; (False, None) on devices without autocast (``meta``, which
    the memory planner runs on)."""
    try:
        return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except RuntimeError:
        return False, None


def autocast_disabled(device_type: str) -> contextlib.AbstractContextManager:
    """A context with autocast off for ``device_type`` (nothing to switch off on devices without autocast)."""
    if autocast_state(device_type)[1] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, enabled=False)


def trainable_parameters(module: nn.Module) -> list[Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


class InvertibleModule(nn.Module):
    """A module ``y = f(x)`` with an exact ``inverse(y) = x`` (same shape bookkeeping, no information lost).

    Subclasses implement ``forward`` and ``inverse``. ``invert_and_backward`` is what the memory-efficient engine
    (:mod:`monai_iunet.engine`) calls during backward: given the layer's output and the gradient w.r.t. it, return the
    reconstructed input, the gradient w.r.t. the input and the gradients of the layer's trainable parameters. The
    default inverts and then recomputes the forward locally; layers that can fuse both (additive coupling) override
    it. ``overwrite=True`` tells the layer that nobody else holds ``y`` and ``grad_y`` (the engine made them), so it
    may reuse their memory for the results.

    For normalizing flows a layer also reports ``log|det ∂y/∂x|`` per sample (:meth:`forward_and_log_det`).
    Layers with ``volume_preserving = True`` (orthogonal maps, additive couplings: |det| = 1 exactly) get zeros for
    free; others (affine coupling, actnorm) implement it, and ``invert_and_backward`` then also backpropagates
    ``grad_log_det``, the gradient w.r.t. the program's summed log-determinant.
    """

    volume_preserving = False

    def inverse(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(y, log|det ∂y/∂x|)``, the log-determinant of shape ``(batch,)`` in ``x``'s precision."""
        if not self.volume_preserving:
            raise NotImplementedError(
                f"{type(self).__name__} has no log-determinant: it cannot be part of a normalizing flow."
            )
        return self.forward(x), x.new_zeros(x.shape[0])

    def invert_and_backward(
        self, y: Tensor, grad_y: Tensor, overwrite: bool = False, grad_log_det: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[Tensor, Tensor]]:
        with torch.no_grad():
            x = self.inverse(y)
        x = x.detach().requires_grad_(True)
        params = trainable_parameters(self)
        with torch.enable_grad():
            if grad_log_det is None or self.volume_preserving:
                outputs, grad_outputs = [self.forward(x)], [grad_y]
            else:
                y_recomputed, log_det = self.forward_and_log_det(x)
                outputs, grad_outputs = [y_recomputed, log_det], [grad_y, grad_log_det.to(log_det.dtype)]
        grads = torch.autograd.grad(outputs, [x, *params], grad_outputs, allow_unused=True)
        grad_x = grads[0] if grads[0] is not None else torch.zeros_like(x)
        return x.detach(), grad_x, dict(zip(params, grads[1:]))


class InvertibleIdentity(InvertibleModule):
    """Placeholder for an optional invertible layer that is switched off (keeps the network's structure static)."""

    volume_preserving = True

    def forward(self, x: Tensor) -> Tensor:
        return x

    def inverse(self, y: Tensor) -> Tensor:
        return y


class InvertibleSequential(InvertibleModule):
    """A chain of invertible modules; the engine walks its children one by one, so each recomputation is local."""

    def __init__(self, *layers: InvertibleModule) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def inverse(self, y: Tensor) -> Tensor:
        for layer in self.layers[::-1]:
            y = layer.inverse(y)
        return y

    @torch.jit.unused
    def forward_and_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = x.new_zeros(x.shape[0])
        for layer in self.layers:
            x, layer_log_det = layer.forward_and_log_det(x)
            log_det = log_det + layer_log_det
        return x, log_det

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)
