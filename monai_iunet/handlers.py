"""Ignite handlers for bundle configs: resumable atomic checkpoints, non-finite guard, inversion-drift monitor."""

from __future__ import annotations

import logging
import os
import random
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.handlers import CheckpointLoader
from monai.utils import CommonKeys

__all__ = [
    "ResumableCheckpoint",
    "PolyLRSchedule",
    "BestModelSaver",
    "UnvalidatedModelSaver",
    "save_atomically",
    "unwrapped",
    "RandomStates",
    "GradScalerState",
    "is_main_process",
    "NonFiniteGuard",
    "InversionDriftMonitor",
    "batch_cases",
]

logger = logging.getLogger(__name__)


def _batch_dicts(batch) -> list[dict]:
    """A batch as a list of dicts: MONAI engines decollate ``state.batch`` into per-sample dicts, and crops with
    ``num_samples`` collate to a list of dicts."""
    if isinstance(batch, dict):
        return [batch]
    return [b for b in batch if isinstance(b, dict)] if isinstance(batch, (list, tuple)) else []


def batch_cases(batch) -> list[str]:
    """Names of the cases in a collated batch (their first image file), for messages."""
    names: list[str] = []
    for item in _batch_dicts(batch):
        found = (getattr(item.get("image"), "meta", None) or {}).get("filename_or_obj", [])
        names += [str(n) for n in (found if isinstance(found, (list, tuple)) else [found])]
    return list(dict.fromkeys(names))


def is_main_process() -> bool:
    """True outside a distributed run and on its rank 0: the one process that writes checkpoints."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def save_atomically(obj: dict, path: str | Path) -> None:
    """``torch.save`` to a temporary file of its own in the same folder, flush it to disk, rename it over ``path`` and
    flush the folder: a crash at any moment leaves either the old or the new checkpoint, never a truncated one, and
    two writers never share a temporary file. The file gets the usual permissions (umask), like ``torch.save``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself reaches the disk
    finally:
        os.close(folder)


def unwrapped(obj):
    """The module inside ``DistributedDataParallel``/``DataParallel``, so that checkpoints hold plain keys (no
    ``module.`` prefix) whether or not the run was distributed; anything else as it is."""
    parallel = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    return obj.module if isinstance(obj, parallel) else obj


def _randomizable_transforms(root) -> list:
    """Every MONAI ``Randomizable`` reachable from ``root`` (a Compose and what its transforms hold), in a fixed
    order, each once."""
    from monai.transforms import Randomizable, Transform

    found, seen, stack = [], set(), [root]
    while stack:
        obj = stack.pop()
        if obj is None or id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            found.append(obj)
        # a Compose's transforms, and transforms held by transforms (e.g. RandCropByPosNegLabeld's cropper)
        children = [v for value in vars(obj).values() for v in (value if isinstance(value, (list, tuple)) else [value])
                    if isinstance(v, Transform)]
        stack.extend(reversed(children))
    return found


class RandomStates:
    """The random-number state a training run continues from: PyTorch's (CPU and CUDA), NumPy's, Python's, and the
    generators of the training data's random transforms, so that a resumed run draws the same shuffles and
    augmentations as one that was never interrupted. ``state_dict`` holds only tensors and plain numbers
    (``torch.load(weights_only=True)`` reads it)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _transforms(self) -> list:
        loader = getattr(self.engine, "data_loader", None)
        dataset = getattr(loader, "dataset", None)
        return _randomizable_transforms(getattr(dataset, "transform", None))

    def state_dict(self) -> dict:
        def numpy_state(state) -> dict:
            _, keys, pos, has_gauss, gauss = state
            return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                    "gauss": float(gauss)}

        version, internal, gauss = random.getstate()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": numpy_state(np.random.get_state()),
            "python": {"version": version, "internal": list(internal), "gauss": gauss},
            "transforms": [numpy_state(t.R.get_state()) for t in self._transforms()],
        }

    def load_state_dict(self, state: dict) -> None:
        def numpy_state(saved: dict) -> tuple:
            return "MT19937", saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"], saved["gauss"]

        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        np.random.set_state(numpy_state(state["numpy"]))
        random.setstate((state["python"]["version"], tuple(state["python"]["internal"]), state["python"]["gauss"]))
        transforms = self._transforms()
        if len(transforms) != len(state["transforms"]):
            warnings.warn(f"the checkpoint holds the random state of {len(state['transforms'])} random transforms, "
                          f"the training data now has {len(transforms)}: their augmentation streams start afresh.",
                          stacklevel=2)
            return
        for transform, saved in zip(transforms, state["transforms"]):
            transform.R.set_state(numpy_state(saved))


class GradScalerState:
    """The trainer's ``GradScaler`` (MONAI's ``SupervisedTrainer`` makes it when the run starts), as a checkpoint
    entry: its scale and growth tracker, so that a resumed mixed-precision run does not start again at 2^16."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def state_dict(self) -> dict:
        scaler = getattr(self.engine, "scaler", None)
        return scaler.state_dict() if scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        scaler = getattr(self.engine, "scaler", None)
        if state and scaler is not None and scaler.is_enabled():
            scaler.load_state_dict(state)


class ResumableCheckpoint:
    """Keep ``<ckpt_dir>/<filename>`` up to date with everything needed to resume training, and resume from it.

    Every ``interval`` epochs (or iterations with ``epoch_level=False``) the ``save_dict`` objects (network,
    optimizer, LR scheduler, …), the trainer's state (epoch, iteration), its ``GradScaler`` and the random states
    (:class:`RandomStates`) are written atomically; a network wrapped in ``DistributedDataParallel`` is saved
    unwrapped. With ``resume=True`` they are loaded when the trainer starts (MONAI's ``CheckpointLoader``,
    ``weights_only=True``), and training continues up to the configured number of epochs, drawing the same shuffles
    and augmentations an uninterrupted run would have drawn. Checkpoints written before the scaler and random
    states were saved still resume (with a warning that those start afresh).

    Args:
        ckpt_dir: folder of the checkpoint.
        save_dict: objects with ``state_dict``/``load_state_dict``; the trainer is added under ``"trainer"``.
        resume: load the checkpoint at start; a missing checkpoint is an error.
        interval: save every this many epochs (or iterations).
        epoch_level: count ``interval`` in epochs (True) or iterations (False).
        filename: checkpoint file name.
        map_location: ``torch.load`` map_location when resuming.
        save: write checkpoints; default: only the main process (rank 0) of a distributed run, the others only
            resume.
    """

    def __init__(
        self,
        ckpt_dir: str,
        save_dict: dict,
        resume: bool = False,
        interval: int = 1,
        epoch_level: bool = True,
        filename: str = "last.pt",
        map_location=None,
        save: bool | None = None,
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be at least 1, got {interval}.")
        self.path = Path(ckpt_dir) / filename
        self.save_dict = dict(save_dict)
        self.resume = resume
        self.event = (Events.EPOCH_COMPLETED if epoch_level else Events.ITERATION_COMPLETED)(every=interval)
        self.map_location = map_location
        self.save = save

    def attach(self, engine: Engine) -> None:
        objects = {**{k: unwrapped(v) for k, v in self.save_dict.items()}, "trainer": engine,
                   "grad_scaler": GradScalerState(engine), "random_states": RandomStates(engine)}
        if self.resume:
            if not self.path.is_file():
                raise FileNotFoundError(
                    f"resume=true but there is no checkpoint {self.path}; start without --resume or set ckpt_dir."
                )
            saved = set(torch.load(self.path, map_location="cpu", weights_only=True))
            missing = [k for k in ("grad_scaler", "random_states") if k not in saved]
            if missing:
                warnings.warn(f"{self.path} was written without {' and '.join(missing)}: resuming without them "
                              "(the augmentation stream and the gradient scale start afresh).", stacklevel=2)
            loadable = {k: v for k, v in objects.items() if k not in missing}
            CheckpointLoader(str(self.path), loadable, map_location=self.map_location).attach(engine)
        if is_main_process() if self.save is None else self.save:
            # Registered when the run starts, i.e. after every other handler, so that a checkpoint holds the state
            # *after* this epoch's LR-scheduler step and validation.
            engine.add_event_handler(Events.STARTED, self._register_saving, objects)

    def _register_saving(self, engine: Engine, objects: dict) -> None:
        if not engine.has_event_handler(self._save, Events.COMPLETED):
            engine.add_event_handler(self.event, self._save, objects)
            engine.add_event_handler(Events.COMPLETED, self._save, objects)

    def _save(self, engine: Engine, objects: dict) -> None:
        save_atomically({name: obj.state_dict() for name, obj in objects.items()}, self.path)


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


class BestModelSaver:
    """Attach to an evaluator: write the network's weights atomically to ``<ckpt_dir>/<filename>`` whenever the key
    metric improves. Its ``state_dict`` (best value and epoch) goes into :class:`ResumableCheckpoint`, so a resumed
    run does not overwrite the best model with a worse one.

    Args:
        ckpt_dir: output folder.
        network: the network whose ``state_dict`` is saved (DDP's ``.module`` is unwrapped).
        metric: name of the metric in ``engine.state.metrics`` (default: the evaluator's key metric).
        filename: file name of the best model.
        greater_is_better: direction of the metric.
    """

    def __init__(
        self,
        ckpt_dir: str,
        network: torch.nn.Module,
        metric: str | None = None,
        filename: str = "model.pt",
        greater_is_better: bool = True,
    ) -> None:
        self.path = Path(ckpt_dir) / filename
        self.network = network
        self.metric = metric
        self.sign = 1.0 if greater_is_better else -1.0
        self.best = float("-inf")
        self.best_epoch = -1

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        name = self.metric or engine.state.key_metric_name
        value = self.sign * float(engine.state.metrics[name])
        if value > self.best:  # MONAI evaluators run with state.epoch = the trainer's epoch
            self.best, self.best_epoch = value, engine.state.epoch
            self.save()
            logger.info("new best %s %.4f: saved %s", name, self.sign * value, self.path)

    @property
    def validated(self) -> bool:
        """Whether a validation result has been recorded (then ``model.pt`` holds the best validated weights)."""
        return self.best_epoch >= 0

    def save(self) -> None:
        """Write the network's current weights (DDP's ``.module`` unwrapped) atomically to ``path``."""
        save_atomically(getattr(self.network, "module", self.network).state_dict(), self.path)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])


class UnvalidatedModelSaver:
    """Attach to the trainer: until validation has scored a model, keep ``saver``'s ``model.pt`` equal to the latest
    weights after every epoch, so that a run without validation data (MONAI Label's fine-tuning with a validation
    split of 0) or one shorter than the validation interval still leaves a model to serve. Once the
    :class:`BestModelSaver` has a validation result, it alone writes ``model.pt``.

    Args:
        saver: the evaluator's :class:`BestModelSaver`.
    """

    def __init__(self, saver: BestModelSaver) -> None:
        self.saver = saver
        self._announced = False

    def attach(self, engine: Engine) -> None:
        # Registered when the run starts, after every other handler: validation of this epoch runs first.
        engine.add_event_handler(Events.STARTED, self._register)

    def _register(self, engine: Engine) -> None:
        if not engine.has_event_handler(self, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if self.saver.validated or not is_main_process():
            return
        self.saver.save()
        if not self._announced:
            logger.info("no validation result yet: %s holds the latest weights (epoch %d) until validation scores a "
                        "model", self.saver.path, engine.state.epoch)
            self._announced = True


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


class InversionDriftMonitor:
    """Every ``interval`` iterations, reconstruct the invertible core's input from its output on the current batch
    and log the relative error ``‖core⁻¹(core(h)) − h‖ / ‖h‖`` (logger, TensorBoard, ``engine.state.<tag>``).

    The memory-efficient gradients are exact only while inversion is accurate. Above ``threshold`` a warning says
    what to do: keep the invertible state in fp32 (the default, also under autocast), lower the learning rate,
    keep the couplings normalised (layer/group norm), or train with ``memory_efficient=False`` for a while.

    Args:
        network: a network with a ``reconstruction_error(x)`` method, e.g. ``IUNet`` (or a module wrapping it as
            ``.module``, e.g. DDP). Any other network has no inversion to monitor: the handler then logs that once
            and does not attach, so a bundle's ``network_def`` can be swapped for a non-invertible one.
        interval: check every this many iterations.
        threshold: relative error above which a warning is issued.
        log_dir: TensorBoard folder (optional); the value is logged under ``tag``.
        tag: metric name.
        image_key: batch key of the network input.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        interval: int = 100,
        threshold: float = 1e-3,
        log_dir: str | None = None,
        tag: str = "inversion_error",
        image_key: str = "image",
    ) -> None:
        if interval < 1:
            raise ValueError(f"interval must be at least 1, got {interval}.")
        self.network = getattr(network, "module", network)
        self.enabled = callable(getattr(self.network, "reconstruction_error", None))
        self.interval = interval
        self.threshold = threshold
        self.tag = tag
        self.image_key = image_key
        self.log_dir = log_dir
        self._writer = None

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            logger.info("InversionDriftMonitor: %s has no reconstruction_error(x) (not invertible); nothing to monitor.",
                        type(self.network).__name__)
            return
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        dicts = _batch_dicts(engine.state.batch)
        if not dicts or self.image_key not in dicts[0]:
            raise ValueError(f"InversionDriftMonitor: the batch has no '{self.image_key}' entry; set image_key.")
        image = torch.as_tensor(dicts[0][self.image_key])
        if not isinstance(engine.state.batch, dict):  # MONAI engines decollate state.batch into single samples
            image = image[None]
        value = self.network.reconstruction_error(image)
        setattr(engine.state, self.tag, value)  # not in state.metrics: StatsHandler would print it as 0.0000
        logger.info("iteration %d: %s %.3e", engine.state.iteration, self.tag, value)
        if self.log_dir is not None:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=self.log_dir)
            self._writer.add_scalar(self.tag, value, engine.state.iteration)
            self._writer.flush()
        if value > self.threshold:
            message = (
                f"{self.tag} {value:.2e} > {self.threshold:.0e} at iteration {engine.state.iteration}: the "
                "memory-efficient gradients are only as accurate as the inversion. Keep the invertible state in fp32, "
                "lower the learning rate, keep normalisation in the couplings, or set memory_efficient=False."
            )
            logger.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=2)
