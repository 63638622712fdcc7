"""Memory-efficient backpropagation through a chain of invertible layers (no activations kept).

A network is described to the engine as a *program*: a flat list of invertible layers plus ``Split``/``Concat``
markers for U-Net skips (a split pushes the skip channels on a stack, a concat pops them). ``run_memory_efficient``
runs the program inside one ``torch.autograd.Function``:

- forward runs under ``no_grad`` and saves only the program's output;
- backward walks the program in reverse: each layer reconstructs its input from its output and backpropagates
  through a local recomputation (``InvertibleModule.invert_and_backward``), so at most one layer's graph exists at
  a time.

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
    "Split", "Concat", "Program", "flatten_program", "run_program", "invert_program", "run_memory_efficient", "run",
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


def run_program(program: Program, x: Tensor) -> Tensor:
    """Run a program forward with ordinary autograd semantics (whatever grad mode is active)."""
    return _walk(program, x, Split, Concat, lambda layer, t: layer(t))


def invert_program(program: Program, y: Tensor) -> Tensor:
    """Run a program backwards: the input that produced output ``y`` (each layer's ``inverse``, skips restored)."""
    return _walk(reversed(program), y, Concat, Split, lambda layer, t: layer.inverse(t))


def _invert_program(program: Program, y: Tensor, grad_y: Tensor) -> tuple[Tensor, dict[Tensor, Tensor]]:
    """Walk the program backwards from its output: reconstruct inputs, return the input and parameter gradients."""
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
            x, grad_x, grads = step.invert_and_backward(y, grad_y, overwrite=owned)
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
    def forward(ctx, program: Program, owners: list[tuple[nn.Module, str]], x: Tensor, *params: Tensor) -> Tensor:
        ctx.program = program
        ctx.owners = owners
        ctx.device_type = x.device.type
        ctx.autocast = autocast_state(x.device.type)
        y = run_program(program, x)
        # Saving the parameters (no copy) lets autograd detect an in-place update between forward and backward.
        ctx.save_for_backward(y, *params)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor):
        y, *params = ctx.saved_tensors
        enabled, dtype = ctx.autocast
        with (
            torch.autocast(ctx.device_type, dtype=dtype) if enabled else nullcontext(),
            _running_stats_frozen(ctx.program),
            _parameters_bound(ctx.owners, params),
        ):
            grad_x, param_grads = _invert_program(ctx.program, y, grad_y)
        grads = [param_grads.get(p) for p in params]
        return (None, None, grad_x if ctx.needs_input_grad[2] else None, *grads)


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


def run_memory_efficient(program: Program, x: Tensor) -> Tensor:
    """Run ``program`` on ``x`` keeping no activations for backward (only the output), see the module docstring.

    Falls back to :func:`run_program` when no gradient is needed (``no_grad``, ``inference_mode``, nothing requires
    grad), so evaluation pays nothing.
    """
    program = flatten_program(program)
    owners, params = _trainable_parameters(program)
    if not torch.is_grad_enabled() or not (x.requires_grad or params):
        return run_program(program, x)
    return _MemoryEfficientFunction.apply(program, owners, x, *params)


def run(program: Program, x: Tensor, memory_efficient: bool = True) -> Tensor:
    """Run an invertible program the way a network should: the invertible state in fp32 (fp64 stays fp64) under
    fp16/bf16 autocast, because a low-precision state drifts on reconstruction; memory-efficient when asked and a
    gradient is being recorded, except under ``torch.jit.trace`` and ``torch.export``, which need one ordinary graph
    (they record :func:`run_program`, with the same output). Under ``torch.compile`` the engine is a graph break
    when training (memory saving kept) and compiled like any code when no gradient is recorded."""
    if autocast_state(x.device.type)[0] and x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    plain = torch.jit.is_tracing() or torch.compiler.is_exporting() or not torch.is_grad_enabled()
    if not memory_efficient or plain:
        return run_program(program, x)
    if torch.compiler.is_compiling():
        # What torch.compile sees of the engine: a graph break; the engine runs eagerly between the compiled parts.
        # (Made here, not at import: wrapping imports torch._dynamo, which keeps tensors alive in eager runs.)
        return torch.compiler.disable(run_memory_efficient)(program, x)
    return run_memory_efficient(program, x)
