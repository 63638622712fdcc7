"""Watch the invertible core's reconstruction error during training (the memory-efficient gradients rely on it)."""

from __future__ import annotations

import logging
import warnings

import torch
from ignite.engine import Engine, Events

from .utils import batch_dicts, unwrapped

__all__ = ["InversionDriftMonitor"]

logger = logging.getLogger(__name__)


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
        self.network = unwrapped(network)
        self.enabled = callable(getattr(self.network, "reconstruction_error", None))
        self.interval = interval
        self.threshold = threshold
        self.tag = tag
        self.image_key = image_key
        self.log_dir = log_dir
        self._writer = None

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            logger.info("InversionDriftMonitor: %s has no reconstruction_error(x) (not invertible); nothing to "
                        "monitor.", type(self.network).__name__)
            return
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self)

    def __call__(self, engine: Engine) -> None:
        dicts = batch_dicts(engine.state.batch)
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
