"""Checkpoints: resumable atomic training state, the best validated model, and a model before any validation."""

from __future__ import annotations

import logging
import os
import random
import warnings
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader

from .utils import is_main_process, unwrapped

__all__ = ["ResumableCheckpoint", "BestModelSaver", "UnvalidatedModelSaver", "RandomStates", "GradScalerState",
           "AtomicFileSaver", "save_atomically"]

logger = logging.getLogger(__name__)


class AtomicFileSaver(DiskSaver):
    """Ignite's ``DiskSaver`` (atomic: a temporary file of its own, renamed over the checkpoint; written on rank 0
    only) for a checkpoint kept under one file name and replaced in place. On top of Ignite's, the file reaches the
    disk before the rename and the rename before the call returns (file and folder are fsynced), the file gets the
    usual permissions (umask), like ``torch.save``, and the previous file is never deleted before its successor is
    written (``Checkpoint`` asks to remove an older file of the same name first; here the rename replaces it).
    A crash at any moment therefore leaves the old or the new checkpoint, never none or a truncated one.

    Args:
        dirname: folder of the checkpoint (created if missing).
    """

    def __init__(self, dirname: str | Path) -> None:
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False)

    def _save_func(self, checkpoint, path: Path, func) -> None:
        def save_to_disk(obj, file, **kwargs) -> None:
            func(obj, file, **kwargs)
            file.flush()
            os.fsync(file.fileno())

        super()._save_func(checkpoint, path, save_to_disk)
        os.chmod(path, 0o666 & ~_umask())
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)  # the rename itself reaches the disk
        finally:
            os.close(folder)

    def remove(self, filename: str) -> None:
        pass  # the one file is replaced by the next save, never deleted before it


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_atomically(obj: dict, path: str | Path) -> None:
    """``torch.save`` ``obj`` to ``path`` through :class:`AtomicFileSaver` (on the main process)."""
    path = Path(path)
    AtomicFileSaver(path.parent)(obj, path.name)


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

    Every ``interval`` epochs (or iterations with ``epoch_level=False``) and when training ends, the ``save_dict``
    objects (network, optimizer, LR scheduler, …), the trainer's state (epoch, iteration), its ``GradScaler`` and the
    random states (:class:`RandomStates`) are written by Ignite's ``Checkpoint`` through :class:`AtomicFileSaver`:
    atomically, on rank 0 only, a network wrapped in ``DistributedDataParallel`` saved unwrapped. With
    ``resume=True`` they are loaded when the trainer starts (MONAI's ``CheckpointLoader``, ``weights_only=True``),
    and training continues up to the configured number of epochs, drawing the same shuffles and augmentations an
    uninterrupted run would have drawn.

    Args:
        ckpt_dir: folder of the checkpoint.
        save_dict: objects with ``state_dict``/``load_state_dict``; the trainer is added under ``"trainer"``.
        resume: load the checkpoint at start; a missing checkpoint is an error.
        interval: save every this many epochs (or iterations).
        epoch_level: count ``interval`` in epochs (True) or iterations (False).
        filename: checkpoint file name.
        map_location: ``torch.load`` map_location when resuming.
        save: write checkpoints (the main process, rank 0, of a distributed run writes; the others only resume);
            False: only resume.
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
        save: bool = True,
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
        objects = {**self.save_dict, "trainer": engine, "grad_scaler": GradScalerState(engine),
                   "random_states": RandomStates(engine)}
        if self.resume:
            if not self.path.is_file():
                raise FileNotFoundError(
                    f"resume=true but there is no checkpoint {self.path}; start without --resume or set ckpt_dir."
                )
            CheckpointLoader(str(self.path), objects, map_location=self.map_location).attach(engine)
        if self.save:
            # ">=": the end of training saves again at the iteration of the last epoch's save
            writer = Checkpoint(objects, AtomicFileSaver(self.path.parent), filename_pattern=self.path.name,
                                n_saved=1, greater_or_equal=True)
            # Registered when the run starts, i.e. after every other handler, so that a checkpoint holds the state
            # *after* this epoch's LR-scheduler step and validation.
            engine.add_event_handler(Events.STARTED, self._register_saving, writer)

    def _register_saving(self, engine: Engine, writer: Checkpoint) -> None:
        if not engine.has_event_handler(writer, Events.COMPLETED):
            engine.add_event_handler(self.event, writer)
            engine.add_event_handler(Events.COMPLETED, writer)


class BestModelSaver:
    """Attach to an evaluator: write the network's weights to ``<ckpt_dir>/<filename>`` whenever the key metric
    improves (Ignite's ``Checkpoint`` with the metric as its score, through :class:`AtomicFileSaver`: atomically, on
    rank 0, DDP unwrapped). Its ``state_dict`` (best value and epoch) goes into :class:`ResumableCheckpoint`, so a
    resumed run does not overwrite the best model with a worse one.

    Args:
        ckpt_dir: output folder.
        network: the network whose ``state_dict`` is saved.
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
        self.best_epoch = -1
        self.saver = AtomicFileSaver(self.path.parent)
        self.checkpoint = Checkpoint({"model": network}, self.saver, filename_pattern=filename, n_saved=1,
                                     score_function=self._score)

    def _metric_name(self, engine: Engine) -> str:
        return self.metric or engine.state.key_metric_name

    def _score(self, engine: Engine) -> float:
        return self.sign * float(engine.state.metrics[self._metric_name(engine)])

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        before = self.best
        self.checkpoint(engine)  # saves when the score beats the best so far
        if self.best > before:
            self.best_epoch = engine.state.epoch  # MONAI evaluators run with state.epoch = the trainer's epoch
            logger.info("new best %s %.4f: saved %s", self._metric_name(engine), self.sign * self.best, self.path)

    @property
    def best(self) -> float:
        """The best score so far (the metric, negated when smaller is better); -inf before any validation."""
        # [(priority, filename)]; its key differs across Ignite versions
        (saved,) = self.checkpoint.state_dict().values()
        return float(saved[0][0]) if saved else float("-inf")

    @property
    def validated(self) -> bool:
        """Whether a validation result has been recorded (then ``model.pt`` holds the best validated weights)."""
        return self.best_epoch >= 0

    def save(self) -> None:
        """Write the network's current weights (DDP's ``.module`` unwrapped), whatever their score."""
        self.saver(unwrapped(self.network).state_dict(), self.path.name)

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best_epoch = int(state["best_epoch"])
        saved = [(float(state["best"]), self.path.name)] if self.best_epoch >= 0 else []
        (key,) = self.checkpoint.state_dict()
        self.checkpoint.load_state_dict({key: saved})


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
