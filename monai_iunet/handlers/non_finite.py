"""Stop or skip a training iteration whose loss or gradients are not finite (also under AMP and accumulation)."""

from __future__ import annotations

import logging

import torch
from ignite.engine import Engine
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys

from .utils import batch_cases

__all__ = ["NonFiniteGuard"]

logger = logging.getLogger(__name__)


class NonFiniteGuard:
    """Stop (default) or skip a training iteration whose loss or gradients are NaN/Inf, before the optimizer step.

    The check runs after backward: with ``action="raise"`` a ``FloatingPointError`` names the cases of the batch;
    with ``action="skip"`` the iteration's gradient is dropped (the optimizer leaves the weights alone), a warning
    names the cases and training goes on. Either way the weights are never updated with non-finite values.

    Mixed precision: with the trainer's ``GradScaler`` enabled (MONAI's ``SupervisedTrainer`` with ``amp``), the
    gradients seen here are scaled, and their overflow is how the scaler finds its scale: it skips that step and
    lowers the scale. The guard leaves such overflow to the scaler while the scale is above 1, and acts once the scale
    is at most 1, where a non-finite scaled gradient means a non-finite unscaled one. A non-finite loss is never
    the scaler's business and is always caught.

    Gradient accumulation: with ``accumulation_steps > 1`` and ``action="skip"``, only the bad micro-batch is
    dropped; the gradient accumulated from the earlier micro-batches of the step is kept (restored from a copy taken
    before the micro-batch's backward). Under a ``GradScaler``, a skipped step with no gradient left is handed to
    the scaler as non-finite gradients, its own way of skipping a step (it then lowers its scale too).

    Args:
        action: ``"raise"`` or ``"skip"``.
        check_gradients: also check every parameter gradient (catches overflow that leaves the loss finite).
    """

    def __init__(self, action: str = "raise", check_gradients: bool = True) -> None:
        if action not in ("raise", "skip"):
            raise ValueError(f"action must be 'raise' or 'skip', got {action!r}.")
        self.action = action
        self.check_gradients = check_gradients
        self.skipped = 0
        self.scaler_overflows = 0
        self._accumulated: list[torch.Tensor | None] | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(IterationEvents.LOSS_COMPLETED, self._keep_accumulated)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    @staticmethod
    def _params(engine: Engine) -> list[torch.Tensor]:
        return [p for group in engine.optimizer.param_groups for p in group["params"]]

    @staticmethod
    def _scaler(engine: Engine):
        scaler = getattr(engine, "scaler", None) if getattr(engine, "amp", False) else None
        return scaler if scaler is not None and scaler.is_enabled() else None

    def _keep_accumulated(self, engine: Engine) -> None:
        """Before a micro-batch's backward: copy the gradient accumulated so far (only when skipping could need it)."""
        self._accumulated = None
        if self.action == "skip" and getattr(engine, "accumulation_steps", 1) > 1:
            self._accumulated = [None if p.grad is None else p.grad.detach().clone() for p in self._params(engine)]

    def __call__(self, engine: Engine) -> None:
        loss = engine.state.output[CommonKeys.LOSS]
        params = self._params(engine)
        if not bool(torch.isfinite(loss).all()):
            problem = "non-finite loss"
        elif self.check_gradients and not all(bool(torch.isfinite(p.grad).all()) for p in params if p.grad is not None):
            scaler = self._scaler(engine)
            if scaler is not None and scaler.get_scale() > 1.0:
                self.scaler_overflows += 1  # the scaler skips this step and lowers its scale
                logger.debug("scaled gradients overflow at scale %g: left to the GradScaler", scaler.get_scale())
                return
            problem = "non-finite gradients" + (" at gradient scale <= 1" if scaler is not None else "")
        else:
            return
        cases = ", ".join(batch_cases(engine.state.batch)) or "<unknown>"
        message = (
            f"{problem} at epoch {engine.state.epoch}, iteration {engine.state.iteration} "
            f"(loss {float(loss.detach().float().mean())}); cases: {cases}. Check these images for NaN/Inf, lower "
            "the learning rate, or train in fp32 (amp false)."
        )
        if self.action == "raise":
            raise FloatingPointError(message)
        kept = self._accumulated or [None] * len(params)
        for p, grad in zip(params, kept):
            p.grad = grad
        if self._scaler(engine) is not None and _steps_now(engine) and all(p.grad is None for p in params):
            # GradScaler.step refuses an optimizer without gradients ("No inf checks were recorded"); non-finite
            # gradients are its own signal to skip the step (it also lowers its scale)
            for p in params:
                p.grad = torch.full_like(p, float("nan"))
        self.skipped += 1
        logger.warning("skipping %s: %s", "this micro-batch" if self._accumulated else "the optimizer step", message)


def _steps_now(engine: Engine) -> bool:
    """Whether the trainer's optimizer steps after this iteration (MONAI ``SupervisedTrainer``'s accumulation rule)."""
    acc = getattr(engine, "accumulation_steps", 1)
    if acc <= 1:
        return True
    epoch_length = engine.state.epoch_length
    local = (engine.state.iteration - 1) % epoch_length if epoch_length is not None else engine.state.iteration - 1
    return (local + 1) % acc == 0 or (epoch_length is not None and local + 1 == epoch_length)
