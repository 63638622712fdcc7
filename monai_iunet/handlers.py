"""Ignite handlers for bundle configs: resumable, atomically written training checkpoints."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointLoader

__all__ = ["ResumableCheckpoint", "save_atomically"]


def save_atomically(obj: dict, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, flush it to disk, then rename over ``path``: a crash
    at any moment leaves either the old or the new checkpoint, never a truncated one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class ResumableCheckpoint:
    """Keep ``<ckpt_dir>/<filename>`` up to date with everything needed to resume training, and resume from it.

    Every ``interval`` epochs (or iterations with ``epoch_level=False``) the ``save_dict`` objects (network,
    optimizer, LR scheduler, …) and the trainer's state (epoch, iteration) are written atomically. With
    ``resume=True`` they are loaded when the trainer starts (MONAI's ``CheckpointLoader``, ``weights_only=True``),
    and training continues up to the configured number of epochs.

    Args:
        ckpt_dir: folder of the checkpoint.
        save_dict: objects with ``state_dict``/``load_state_dict``; the trainer is added under ``"trainer"``.
        resume: load the checkpoint at start; a missing checkpoint is an error.
        interval: save every this many epochs (or iterations).
        epoch_level: count ``interval`` in epochs (True) or iterations (False).
        filename: checkpoint file name.
        map_location: ``torch.load`` map_location when resuming.
        save: write checkpoints (False on the non-zero ranks of a distributed run, which only resume).
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
        objects = {**self.save_dict, "trainer": engine}
        if self.resume:
            if not self.path.is_file():
                raise FileNotFoundError(
                    f"resume=true but there is no checkpoint {self.path}; start without --resume or set ckpt_dir."
                )
            CheckpointLoader(str(self.path), objects, map_location=self.map_location).attach(engine)
        if self.save:
            engine.add_event_handler(self.event, self._save, objects)
            engine.add_event_handler(Events.COMPLETED, self._save, objects)

    def _save(self, engine: Engine, objects: dict) -> None:
        save_atomically({name: obj.state_dict() for name, obj in objects.items()}, self.path)
