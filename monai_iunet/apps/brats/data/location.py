"""Where the project's real development data are (the real BraTS cases and scanner series its tests, trainings and
reports use): ``$MONAI_IUNET_DATA``, else ``../shared/data`` beside the checkout. The one place that says so."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_ENV", "real_data"]

DATA_ENV = "MONAI_IUNET_DATA"


def real_data() -> Path:
    """The real data folder (it may not exist: tests then skip, scripts say so)."""
    configured = os.environ.get(DATA_ENV)
    return Path(configured) if configured else Path(__file__).resolve().parents[4].parent / "shared" / "data"
