"""PolyLRSchedule: nnU-Net's poly decay per iteration, over epochs or a budget of training time, resumable."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events

from monai_iunet.handlers import PolyLRSchedule
from monai_iunet.handlers import schedule as schedule_module


def _run(schedule: PolyLRSchedule, epochs: int, epoch_length: int, on_iteration=None) -> tuple[Engine, list[float]]:
    lrs = []

    def step(engine, batch):
        lrs.append(schedule.optimizer.param_groups[0]["lr"])
        if on_iteration:
            on_iteration(engine)

    engine = Engine(step)
    schedule.attach(engine)
    engine.run(range(epoch_length), max_epochs=epochs)
    return engine, lrs


def _optimizer(lr=0.01):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_poly_decay_over_epochs():
    schedule = PolyLRSchedule(_optimizer(), max_epochs=2, power=0.9)
    engine, lrs = _run(schedule, epochs=2, epoch_length=5)
    expected = [0.01 * (1 - i / 10) ** 0.9 for i in range(10)]
    assert lrs == pytest.approx(expected)
    assert engine.state.learning_rate == pytest.approx(expected[-1])
    assert engine.state.training_time > 0


def test_time_budget_stops_training_and_drives_the_decay(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(schedule_module.time, "perf_counter", lambda: clock[0])

    def tick(engine):  # every iteration takes 10 s of training time
        clock[0] += 10.0

    schedule = PolyLRSchedule(_optimizer(), max_epochs=1000, time_budget_s=45.0, power=1.0)
    engine, lrs = _run(schedule, epochs=1000, epoch_length=3, on_iteration=tick)
    assert engine.state.iteration == 5  # 50 s >= 45 s: stopped after the fifth iteration
    assert lrs == pytest.approx([0.01 * (1 - t / 45.0) for t in (0, 10, 20, 30, 40)])
    assert schedule.state_dict()["training_time"] == pytest.approx(50.0)


def test_validation_time_does_not_count(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(schedule_module.time, "perf_counter", lambda: clock[0])
    schedule = PolyLRSchedule(_optimizer(), max_epochs=3)

    def step(engine, batch):
        clock[0] += 1.0

    engine = Engine(step)
    schedule.attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: clock.__setitem__(0, clock[0] + 100.0))  # "validation"
    engine.run(range(2), max_epochs=3)
    assert schedule.training_time == pytest.approx(6.0)


def test_resumed_schedule_continues_where_it_stopped():
    first = PolyLRSchedule(_optimizer(), max_epochs=4, time_budget_s=1e6)
    _run(first, epochs=2, epoch_length=3)
    resumed = PolyLRSchedule(_optimizer(lr=0.5), max_epochs=4, time_budget_s=1e6)
    resumed.load_state_dict(first.state_dict())
    assert resumed.base_lrs == [0.01] and resumed.training_time == first.training_time


@pytest.mark.parametrize("kwargs", [{"max_epochs": 0}, {"max_epochs": 1, "time_budget_s": 0}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        PolyLRSchedule(_optimizer(), **kwargs)
