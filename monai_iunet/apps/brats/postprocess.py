"""What the BraTS bundle makes of a prediction besides the label map: nnU-Net's small-ET rule, the tumour volumes a
clinician reads, and a per-case uncertainty score that flags likely failures.

- ``SuppressSmallEnhancingd``: all predicted enhancing tumour becomes necrotic core when its total volume is below a
  threshold (nnU-Net's BraTS post-processing; the threshold is chosen on the cross-validation folds and is a fact of
  the model, ``metadata.json``'s plans).
- ``TumourVolumesd``: the volume of each label and region in mL, counted on the label map's own grid.
- ``CaseUncertaintyd``: how unsure the members of ``MirrorEnsemble`` are (their entropy, one pass) or how much
  their mirrored passes disagree, as a fraction of the predicted tumour: ``sum of the voxel-wise map / sum of the
  mean probability`` over the TC, WT and ET channels on the network's grid. The plans name the score that drives
  the flag and its threshold (calibrated out-of-fold, ``calibration``); the others are reported as well.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from .cases import CaseKeys
from .labels import EDEMA, NECROTIC_CORE, REGIONS, region_labels, release_of

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


def uncertainty_score(probabilities: torch.Tensor, voxel_map: torch.Tensor) -> float:
    """``sum(voxel_map) / max(sum(probabilities), 1)`` over all channels and voxels: the uncertainty (a spread or an
    entropy) per voxel of predicted tumour (0: sure everywhere)."""
    return float(voxel_map.float().sum() / probabilities.float().sum().clamp_min(1.0))


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
    """The case's uncertainty from the voxel maps ``MirrorEnsemble.predict_with_uncertainty`` returned, under
    ``output_key``: ``{"score", "kind", "threshold", "flagged", "passes", "entropy_score", "mirror_score",
    "member_score"}``. Runs on the network's grid, after the activation (``keys``: the mean probabilities) and before
    the prediction is inverted. Each map gives one ``uncertainty_score`` (its sum over the predicted tumour's
    probability, over the ``region``'s channel or all channels); ``score`` is the ``kind`` one, the one whose
    threshold was calibrated out-of-fold (the others are reported, not used):

    - ``"entropy"``: each member's own entropy of its probabilities. One pass per member suffices (mirroring off).
    - ``"mirror_spread"``: the disagreement of each member's mirrored passes; needs mirroring (``passes`` > 1).

    The member spread (members disagreeing) is reported only: out-of-fold there is one member per case to calibrate
    on. A score that cannot be measured gives ``"score": None``, nothing flagged, and ``"why"``.

    Args:
        keys: the mean probabilities (C, X, Y, Z).
        threshold: a score above it flags the case as a likely failure (calibrated out-of-fold for ``kind``).
        passes: mirrored passes per member (``len(MirrorEnsemble.passes)``).
        kind: ``"entropy"`` or ``"mirror_spread"``.
        region: the region channel (``labels.REGIONS``: TC, WT, ET) the scores are taken over; None: all three.
        maps: the keys of the voxel maps (``kind``'s among them); they are removed from the data afterwards (they
            are not outputs).
    """

    KINDS = ("entropy", "mirror_spread")

    def __init__(self, keys: KeysCollection, threshold: float, passes: int, kind: str = "entropy",
                 region: str | None = None, maps: tuple[str, ...] = ("entropy", "mirror_spread", "member_spread"),
                 output_key: str = CaseKeys.UNCERTAINTY, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if kind not in self.KINDS:
            raise ValueError(f"kind must be one of {self.KINDS}, got {kind!r}.")
        self.threshold = float(threshold)
        self.passes = int(passes)
        if region is not None and region not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS} or None, got {region!r}.")
        self.kind, self.region = kind, region
        self.channels = slice(None) if region is None else slice(REGIONS.index(region), REGIONS.index(region) + 1)
        self.maps = tuple(maps)
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        maps = {name: d.pop(name) for name in self.maps if name in d}
        if self.passes <= 1:  # one pass per member: its mirror "spread" is zero, not a measurement
            maps.pop("mirror_spread", None)
        for key in self.key_iterator(d):
            scores = {f"{name.split('_')[0]}_score":
                      round(uncertainty_score(d[key][self.channels], value[self.channels]), 5)
                      for name, value in maps.items()}
            entry = {"score": scores.get(f"{self.kind.split('_')[0]}_score"), "kind": self.kind, "region": self.region,
                     "threshold": self.threshold, "passes": self.passes, **scores}
            entry["flagged"] = entry["score"] is not None and entry["score"] > self.threshold
            if entry["score"] is None:
                entry["why"] = ("not measured: mirroring (tta) is off, so there is one pass per member"
                                if self.kind == "mirror_spread" and self.passes <= 1 else
                                "not measured: the network gave no uncertainty maps (not a MirrorEnsemble run with "
                                "uncertainty)")
            d[self.output_key] = entry
        return d
