"""Memory-efficient backpropagation through a chain of invertible layers (no activations kept).

A network is described to the engine as a *program*: a flat list of invertible layers plus ``Split``/``Concat``
markers for U-Net skips (a split pushes the skip channels on a stack, a concat pops them). ``run_memory_efficient``
runs the program inside one ``torch.autograd.Function``:

- forward runs under ``no_grad`` and saves only the program's output;
- backward walks the program in reverse: each layer reconstructs its input from its output and backpropagates
  through a local recomputation (``InvertibleModule.invert_and_backward``), so at most one layer's graph exists at
  a time.

For normalizing flows the engine also carries the log-determinant (``log_det=True``): forward sums the layers'
``forward_and_log_det``, and the reconstructing backward hands each layer the gradient of the sum, so a flow trains
with the same activation memory as the network alone.

Forward hooks on a layer inside the program fire twice per training step: once in forward and once when backward
recomputes that layer. Layers must be deterministic given their input (no dropout, no random noise): backward
reconstructs activations by recomputation, so a random layer would silently break it; ``run_memory_efficient``
refuses programs with dropout in training mode.

Unlike memcnn, nothing is ever freed by hand (so the caller may reuse the input, modify it in place, or run forward
without backward), and parameter gradients are *returned* by the Function rather than accumulated inside backward,
so ``torch.autograd.grad``, gradient accumulation, hooks and DistributedDataParallel see ordinary autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import NamedTuple, Union

import torch
from torch import Tensor, nn

from ..layers.base import InvertibleModule, InvertibleSequential, autocast_state

__all__ = [
    "Split", "Concat", "Program", "flatten_program", "run_program", "walk_program", "invert_program",
    "run_memory_efficient", "run",
]


class Split(NamedTuple):
    """Move the first ``skip_channels`` channels to the skip stack; the rest continue."""

    skip_channels: int


class Concat(NamedTuple):
    """Pop the most recent skip (``skip_channels`` channels) and put it back in front of the current tensor."""

    skip_channels: int


Program = list[Union[InvertibleModule, Split, Concat]]


def flatten_program(program: Program) -> Program:
    """Expand ``InvertibleSequential`` steps so that every recomputation in backward covers a single layer."""
    flat: Program = []
    for step in program:
        if isinstance(step, InvertibleSequential):
            flat.extend(flatten_program(list(step)))
        else:
            flat.append(step)
    return flat


def walk_program(program: Program, x: Tensor, apply: Callable[[InvertibleModule, Tensor], Tensor]) -> Tensor:
    """Run a program forward calling ``apply(layer, input)`` for each layer (the skips handled as in forward), e.g.
    to look at or initialise layers from the activations that reach them."""
    return _walk(program, x, Split, Concat, apply)


def _walk(steps, x: Tensor, push: type, pop: type, apply: Callable[[InvertibleModule, Tensor], Tensor]) -> Tensor:
    """Walk program steps: a ``push`` marker moves its skip channels to the stack, a ``pop`` marker puts the most
    recent skip back in front, a layer is applied. Forward pushes at Split; backwards (inversion) at Concat."""
    skips: list[Tensor] = []
    for step in steps:
        if isinstance(step, push):
            skips.append(x[:, : step.skip_channels])
            x = x[:, step.skip_channels :]
        elif isinstance(step, pop):
            x = torch.cat([skips.pop(), x], dim=1)
        else:
            x = apply(step, x)
    if skips:
        raise ValueError(f"program leaves {len(skips)} skip(s) unconsumed: every Split needs a matching Concat.")
    return x


def run_program(program: Program, x: Tensor, log_det: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Run a program forward with ordinary autograd semantics (whatever grad mode is active); with ``log_det`` also
    return the summed ``log|det ∂y/∂x|`` per sample."""
    if not log_det:
        return _walk(program, x, Split, Concat, lambda layer, t: layer(t))
    total = [x.new_zeros(x.shape[0])]

    def apply(layer: InvertibleModule, t: Tensor) -> Tensor:
        t, layer_log_det = layer.forward_and_log_det(t)
        total[0] = total[0] + layer_log_det
        return t

    y = _walk(program, x, Split, Concat, apply)
    return y, total[0]


def invert_program(program: Program, y: Tensor) -> Tensor:
    """Run a program backwards: the input that produced output ``y`` (each layer's ``inverse``, skips restored)."""
    return _walk(reversed(program), y, Concat, Split, lambda layer, t: layer.inverse(t))


def _invert_program(
    program: Program, y: Tensor, grad_y: Tensor, grad_log_det: Tensor | None = None
) -> tuple[Tensor, dict[Tensor, Tensor]]:
    """Walk the program backwards from its output: reconstruct inputs, return the input and parameter gradients
    (with ``grad_log_det``, those of the summed log-determinant too: each layer's log-det gets that gradient)."""
    stack: list[tuple[Tensor, Tensor]] = []
    param_grads: dict[Tensor, Tensor] = {}
    # The program's output is also saved elsewhere (the next layer's backward) and autograd owns its gradient; every
    # later pair was made here, so layers may overwrite it.
    owned = False
    for step in reversed(program):
        if isinstance(step, Concat):
            n = step.skip_channels
            stack.append((y[:, :n], grad_y[:, :n]))
            y, grad_y = y[:, n:], grad_y[:, n:]
        elif isinstance(step, Split):
            skip, grad_skip = stack.pop()
            y, grad_y = torch.cat([skip, y], dim=1), torch.cat([grad_skip, grad_y], dim=1)
            del skip, grad_skip  # the skip views keep their whole storage alive: drop them now, not at return
            owned = True
        else:
            x, grad_x, grads = step.invert_and_backward(y, grad_y, overwrite=owned, grad_log_det=grad_log_det)
            # a layer may hand back its input's memory (an identity does): that stays as owned as it was
            owned = owned or not (_same_memory(x, y) or _same_memory(grad_x, grad_y))
            y, grad_y = x, grad_x
            del x, grad_x
            for param, grad in grads.items():
                if grad is not None:
                    param_grads[param] = grad if param not in param_grads else param_grads[param] + grad
    return grad_y, param_grads


def _same_memory(a: Tensor, b: Tensor) -> bool:
    return a.untyped_storage() is b.untyped_storage()  # storages keep one Python object each


@contextmanager
def _running_stats_frozen(program: Program) -> Iterator[None]:
    """Recomputation must not update BatchNorm-style running statistics a second time (memcnn #12)."""
    norms = [
        m
        for step in program
        if isinstance(step, nn.Module)
        for m in step.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.training and m.track_running_stats
    ]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


@contextmanager
def _parameters_bound(owners: list[tuple[nn.Module, str]], params: tuple[Tensor, ...]) -> Iterator[None]:
    """Backward recomputes with the parameter tensors the forward used, even if the modules now hold others
    (``torch.func.functional_call`` swaps them only for the duration of the forward)."""
    swapped = [(m, name, m._parameters[name]) for (m, name), p in zip(owners, params) if m._parameters[name] is not p]
    for (m, name), p in zip(owners, params):
        m._parameters[name] = p
    try:
        yield
    finally:
        for m, name, original in swapped:
            m._parameters[name] = original


class _MemoryEfficientFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, program: Program, owners: list[tuple[nn.Module, str]], log_det: bool, x: Tensor, *params: Tensor):
        ctx.program = program
        ctx.owners = owners
        ctx.log_det = log_det
        ctx.device_type = x.device.type
        ctx.autocast = autocast_state(x.device.type)
        out = run_program(program, x, log_det)
        y = out[0] if log_det else out
        # Saving the parameters (no copy) lets autograd detect an in-place update between forward and backward.
        ctx.save_for_backward(y, *params)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor, grad_log_det: Tensor | None = None):
        y, *params = ctx.saved_tensors
        if grad_y is None:  # only the log-determinant was used
            grad_y = torch.zeros_like(y)
        if ctx.log_det and grad_log_det is None:
            grad_log_det = y.new_zeros(y.shape[0])
        enabled, dtype = ctx.autocast
        with (
            torch.autocast(ctx.device_type, dtype=dtype) if enabled else nullcontext(),
            _running_stats_frozen(ctx.program),
            _parameters_bound(ctx.owners, params),
        ):
            grad_x, param_grads = _invert_program(ctx.program, y, grad_y, grad_log_det if ctx.log_det else None)
        grads = [param_grads.get(p) for p in params]
        return (None, None, None, grad_x if ctx.needs_input_grad[3] else None, *grads)


def _trainable_parameters(program: Program) -> tuple[list[tuple[nn.Module, str]], list[Tensor]]:
    """(owner module, name) and tensor of every distinct trainable parameter in the program."""
    owners, params, seen = [], [], set()
    for step in program:
        if not isinstance(step, nn.Module):
            continue
        for module in step.modules():
            for name, p in module._parameters.items():
                if p is not None and p.requires_grad and id(p) not in seen:
                    seen.add(id(p))  # a parameter shared by two layers gets one (summed) gradient
                    owners.append((module, name))
                    params.append(p)
    return owners, params


def _refuse_random_layers(program: Program) -> None:
    for step in program:
        if isinstance(step, nn.Module):
            for module in step.modules():
                if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
                    raise ValueError(
                        f"{type(step).__name__} holds {type(module).__name__} in training mode: the memory-efficient "
                        "engine recomputes layers in backward, and a random layer would recompute differently. Use "
                        "memory_efficient=False, or no dropout inside the invertible program."
                    )


def run_memory_efficient(program: Program, x: Tensor, log_det: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Run ``program`` on ``x`` keeping no activations for backward (only the output), see the module docstring;
    with ``log_det`` also return the summed log-determinant per sample.

    Falls back to :func:`run_program` when no gradient is needed (``no_grad``, ``inference_mode``, nothing requires
    grad), so evaluation pays nothing.
    """
    program = flatten_program(program)
    owners, params = _trainable_parameters(program)
    if not torch.is_grad_enabled() or not (x.requires_grad or params):
        return run_program(program, x, log_det)
    _refuse_random_layers(program)
    return _MemoryEfficientFunction.apply(program, owners, log_det, x, *params)


def run(
    program: Program, x: Tensor, memory_efficient: bool = True, log_det: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Run an invertible program the way a network should: the invertible state in fp32 (fp64 stays fp64) under
    fp16/bf16 autocast, because a low-precision state drifts on reconstruction; memory-efficient when asked and a
    gradient is being recorded, except under ``torch.jit.trace`` and ``torch.export``, which need one ordinary graph
    (they record :func:`run_program`, with the same output). Under ``torch.compile`` the engine is a graph break
    when training (memory saving kept) and compiled like any code when no gradient is recorded."""
    if autocast_state(x.device.type)[0] and x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    plain = torch.jit.is_tracing() or torch.compiler.is_exporting() or not torch.is_grad_enabled()
    if not memory_efficient or plain:
        return run_program(program, x, log_det)
    if torch.compiler.is_compiling():
        # What torch.compile sees of the engine: a graph break; the engine runs eagerly between the compiled parts.
        # (Made here, not at import: wrapping imports torch._dynamo, which keeps tensors alive in eager runs.)
        return torch.compiler.disable(run_memory_efficient)(program, x, log_det)
    return run_memory_efficient(program, x, log_det)
