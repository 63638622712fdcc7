"""nnU-Net's polynomial learning-rate schedule with an optional training-time budget."""

from __future__ import annotations

import logging
import time

import torch
from ignite.engine import Engine, Events

__all__ = ["PolyLRSchedule"]

logger = logging.getLogger(__name__)


class PolyLRSchedule:
    """Attach to the trainer: nnU-Net's polynomial learning-rate decay, ``lr · (1 − progress)^power``, set before
    every iteration, and an optional budget of training time after which training stops.

    ``progress`` is the larger of the fraction of ``max_epochs`` done and, with ``time_budget_s``, the fraction of
    the time budget used, so the rate reaches zero when the first of the two runs out. Training time is measured
    between iterations within an epoch, so validation and checkpointing do not count; it is kept in
    ``state_dict`` (store the schedule in :class:`ResumableCheckpoint`), so that a resumed run continues the same
    schedule, and it is published as ``engine.state.training_time`` (seconds) with ``engine.state.learning_rate``
    for loggers (e.g. ``TensorBoardStatsHandler(state_attributes=[...])``).

    Args:
        optimizer: the optimizer whose parameter groups are scheduled; their ``lr`` at construction is the base.
        max_epochs: epochs of the run (the trainer's ``max_epochs``).
        time_budget_s: seconds of training time after which the trainer terminates; None: no time limit.
        power: exponent of the decay (nnU-Net: 0.9).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, max_epochs: int, time_budget_s: float | None = None,
                 power: float = 0.9) -> None:
        if max_epochs < 1:
            raise ValueError(f"max_epochs must be at least 1, got {max_epochs}.")
        if time_budget_s is not None and time_budget_s <= 0:
            raise ValueError(f"time_budget_s must be positive or None, got {time_budget_s}.")
        self.optimizer = optimizer
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.max_epochs = max_epochs
        self.time_budget_s = time_budget_s
        self.power = power
        self.training_time = 0.0
        self._tick = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._start_clock)
        engine.add_event_handler(Events.ITERATION_STARTED, self._set_lr)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._count)

    def progress(self, engine: Engine) -> float:
        """Fraction of the run done before the current iteration, in [0, 1]."""
        done = (engine.state.iteration - 1) / (self.max_epochs * engine.state.epoch_length)
        if self.time_budget_s is not None:
            done = max(done, self.training_time / self.time_budget_s)
        return min(max(done, 0.0), 1.0)

    def _start_clock(self, engine: Engine) -> None:
        self._tick = time.perf_counter()
        engine.state.training_time = self.training_time

    def _set_lr(self, engine: Engine) -> None:
        factor = (1.0 - self.progress(engine)) ** self.power
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        engine.state.learning_rate = self.optimizer.param_groups[0]["lr"]

    def _count(self, engine: Engine) -> None:
        now = time.perf_counter()
        self.training_time += now - self._tick
        self._tick = now
        engine.state.training_time = self.training_time
        if self.time_budget_s is not None and self.training_time >= self.time_budget_s:
            logger.info("training-time budget of %.0f s used at epoch %d, iteration %d: stopping",
                        self.time_budget_s, engine.state.epoch, engine.state.iteration)
            engine.terminate()

    def state_dict(self) -> dict:
        return {"training_time": self.training_time, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, state: dict) -> None:
        self.training_time = float(state["training_time"])
        self.base_lrs = [float(lr) for lr in state["base_lrs"]]
