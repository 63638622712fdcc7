"""What the BraTS bundle makes of a prediction besides the label map: nnU-Net's small-ET rule, the tumour volumes a
clinician reads, and a per-case uncertainty score that flags likely failures.

- ``SuppressSmallEnhancingd``: all predicted enhancing tumour becomes necrotic core when its total volume is below a
  threshold (nnU-Net's BraTS post-processing; the threshold is chosen on the cross-validation folds and is a fact of
  the model, ``metadata.json``'s plans).
- ``TumourVolumesd``: the volume of each label and region in mL, counted on the label map's own grid.
- ``CaseUncertaintyd``: how much the mirrored passes (and the members) of ``MirrorEnsemble`` disagree, as a
  fraction of the predicted tumour: ``sum of the voxel-wise spread / sum of the mean probability`` over the TC, WT
  and ET channels on the network's grid. The mirror score drives the flag (its threshold is calibrated
  out-of-fold); the member score is reported as well.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .cases import CaseKeys
from .labels import EDEMA, NECROTIC_CORE, region_labels, release_of

__all__ = ["voxel_volume_ml", "tumour_volumes", "uncertainty_score", "SuppressSmallEnhancingd", "TumourVolumesd",
           "CaseUncertaintyd"]


def voxel_volume_ml(image: MetaTensor) -> float:
    """The volume of one voxel of ``image`` in mL, from its affine (mm)."""
    return abs(float(np.linalg.det(np.asarray(image.affine, dtype=float)[:3, :3]))) / 1000.0


def tumour_volumes(label: MetaTensor, et_label: int = 4) -> dict[str, float]:
    """mL of each label (``NCR`` necrotic core, ``ED`` edema, ``ET`` enhancing) and region (``TC``, ``WT``) of a
    BraTS label map (1, X, Y, Z) on its own grid."""
    voxel = voxel_volume_ml(label)
    values = torch.as_tensor(label)
    count = lambda labels: int(sum(int((values == v).sum()) for v in labels))  # noqa: E731
    regions = region_labels(et_label)
    volumes = {"ET": count(regions["ET"]), "NCR": count((NECROTIC_CORE,)), "ED": count((EDEMA,)),
               "TC": count(regions["TC"]), "WT": count(regions["WT"])}
    return {name: round(n * voxel, 3) for name, n in volumes.items()}


def uncertainty_score(probabilities: torch.Tensor, spread: torch.Tensor) -> float:
    """``sum(spread) / max(sum(probabilities), 1)`` over all channels and voxels: the disagreement between passes
    per voxel of predicted tumour (0: every pass agrees everywhere)."""
    return float(spread.float().sum() / probabilities.float().sum().clamp_min(1.0))


class SuppressSmallEnhancingd(MapTransform):
    """Relabel all enhancing tumour of a BraTS label map as necrotic core when its total volume is below
    ``min_volume_ml`` (nnU-Net's BraTS post-processing: a few false-positive ET voxels in a case without enhancement
    cost the whole ET score). 0 turns it off.

    Args:
        keys: label maps (1, X, Y, Z) with their affine.
        et_label: the enhancing-tumour label (4 or 3).
        min_volume_ml: below this total ET volume, ET becomes necrotic core.
    """

    def __init__(self, keys: KeysCollection, et_label: int = 4, min_volume_ml: float = 0.0,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        release_of(et_label)
        if min_volume_ml < 0:
            raise ValueError(f"min_volume_ml must be >= 0, got {min_volume_ml}.")
        self.et_label = et_label
        self.min_volume_ml = min_volume_ml

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            et = label == self.et_label
            if 0 < float(et.sum()) * voxel_volume_ml(label) < self.min_volume_ml:
                label = label.clone()
                label[et] = NECROTIC_CORE
                d[key] = label
        return d


class TumourVolumesd(MapTransform):
    """Put ``tumour_volumes`` of the label map under ``volumes_key`` (the batch runner reports it)."""

    def __init__(self, keys: KeysCollection, et_label: int = 4, volumes_key: str = CaseKeys.VOLUMES,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        release_of(et_label)
        self.et_label = et_label
        self.volumes_key = volumes_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.volumes_key] = tumour_volumes(d[key], self.et_label)
        return d


class CaseUncertaintyd(MapTransform):
    """The case's uncertainty from the spreads ``MirrorEnsemble.predict_with_uncertainty`` returned, under
    ``output_key``: ``{"score", "threshold", "flagged", "member_score", "passes"}``. Runs on the network's grid,
    after the activation (``keys``: the mean probabilities) and before the prediction is inverted.

    Without mirroring there is one pass per member and no mirror spread: the score is ``None`` and nothing is
    flagged (``"why"`` says so).

    Args:
        keys: the mean probabilities (C, X, Y, Z).
        threshold: a mirror score above it flags the case as a likely failure (calibrated out-of-fold).
        spread_key, member_spread_key: the voxel-wise spreads; they are removed from the data afterwards (they are
            not outputs).
        passes: mirrored passes per member (``len(MirrorEnsemble.passes)``).
    """

    def __init__(self, keys: KeysCollection, threshold: float, passes: int, spread_key: str = "mirror_spread",
                 member_spread_key: str = "member_spread", output_key: str = CaseKeys.UNCERTAINTY,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.threshold = float(threshold)
        self.passes = int(passes)
        self.spread_key = spread_key
        self.member_spread_key = member_spread_key
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        spread, member_spread = d.pop(self.spread_key, None), d.pop(self.member_spread_key, None)
        for key in self.key_iterator(d):
            if self.passes <= 1:
                d[self.output_key] = {"score": None, "flagged": False, "passes": self.passes,
                                      "why": "not measured: mirroring (tta) is off, so there is one pass per member"}
                continue
            if spread is None:
                d[self.output_key] = {"score": None, "flagged": False,
                                      "why": "not measured: the network gave no spreads (not a MirrorEnsemble run "
                                             "with uncertainty)"}
                continue
            entry = {"score": round(uncertainty_score(d[key], spread), 5), "threshold": self.threshold,
                     "passes": self.passes, "member_score": round(uncertainty_score(d[key], member_spread), 5)
                     if member_spread is not None else None}
            entry["flagged"] = entry["score"] > self.threshold
            d[self.output_key] = entry
        return d
