"""Brain extraction for raw head MRI, so that a scanner study looks like what a BraTS model was trained on
(skull-stripped by the BraTS organisers).

The tool is deepbet (MIT, PyTorch, its model inside the wheel; CPU in seconds), chosen by measurement on the real
T1 series of the project's data against ROBEX (``docs/benchmarks/brain_extraction.md``). It is trained on
T1-weighted images, so the mask is computed on one T1-type channel (after the channels were brought onto one grid,
and co-registered where asked) and applied to every channel: outside the brain every channel is exactly zero, as in
BraTS files, and a ``nonzero`` intensity normalisation then runs over the brain.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Mapping, Sequence
from functools import lru_cache
from importlib.metadata import version

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from .cases import CaseError, CaseKeys, case_name
from .labels import MODALITIES, T1_WEIGHTED

__all__ = ["SkullStripd", "looks_skull_stripped", "extract_brain"]

TOOL = "deepbet"


def voxel_ml(affine) -> float:
    return float(abs(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0


def looks_skull_stripped(
    image, affine, max_brain_ml: float = 2500.0, min_zero_fraction: float = 0.2
) -> tuple[bool, str]:
    """Whether a channel is already skull-stripped: its background is exactly zero and what is not zero is no
    bigger than a brain. BraTS files have 80-87 % zero voxels and 1.2-1.8 L non-zero (all 24 real cases here); raw
    heads have noise in the air (5-7 % exact zeros) or, zero-filled, a head of 4 L or more (and a slab that covers
    part of a head has no zero background)."""
    image = np.asarray(image)
    zero_fraction = float(np.mean(image == 0))
    nonzero_ml = float(np.count_nonzero(image)) * voxel_ml(affine)
    stripped = zero_fraction >= min_zero_fraction and nonzero_ml <= max_brain_ml
    return stripped, (f"{zero_fraction:.0%} of the voxels are exactly zero and "
                      f"{nonzero_ml:.0f} mL are not; an already stripped image has at least {min_zero_fraction:.0%} "
                      f"zero voxels and at most {max_brain_ml:.0f} mL non-zero")


@lru_cache(maxsize=2)
def _deepbet(device: str):
    try:
        from deepbet import BrainExtraction
    except ImportError as missing:  # a declared dependency; only a hand-pruned environment lacks it
        raise ImportError("brain extraction needs deepbet: pip install deepbet (or set skull_strip: false for "
                          "inputs that are already skull-stripped).") from missing
    return BrainExtraction(no_gpu=device != "cuda")


def extract_brain(image, affine, device: str = "cpu", threshold: float = 0.5) -> np.ndarray:
    """deepbet's brain mask (bool, the input's grid) of one 3D T1-weighted image with a RAS ``affine``. deepbet
    reorients to RAS itself, keeps the largest component and fills holes."""
    import nibabel as nib

    volume = nib.Nifti1Image(np.asarray(image, np.float32), np.asarray(affine, float))
    with torch.no_grad():
        _, mask, _ = _deepbet(device).run(volume, threshold=threshold)
    return np.asarray(mask.dataobj) > 0


class SkullStripd(MapTransform):
    """Skull-strip a multi-channel head image: deepbet's brain mask of one T1-type channel, applied to all channels.

    Put it after the channels are on one grid (``LoadModalitiesd``, which also co-registers them when asked) and
    before orientation, spacing and a ``nonzero`` intensity normalisation. It changes voxel values only (no grid
    change), so ``Invertd`` of the later transforms is unaffected.

    Args:
        keys: keys of the channel-first images (all channels on one grid, RAS affine as MONAI loads it).
        mode: ``"auto"`` strips unless the channel already looks stripped (:func:`looks_skull_stripped`: BraTS
            files pass through untouched), ``"true"`` always strips, ``"false"`` never does. Booleans work too.
        modality: the channel the mask is computed on, by name in ``modalities``; deepbet is made for T1-weighted
            images, so it must be ``t1`` or ``t1ce``.
        modalities: channel names in order.
        brain_ml_range: a mask outside this volume (mL) is a ``CaseError``: the series is not a brain MRI or the
            extraction failed, and a wrong mask must not silently cut the tumour away.
        record_key: ``data[record_key]`` records what was done (applied or not and why, tool, version, modality,
            mask volume in mL, seconds), for the inference report.
        mask_key: if given, ``data[mask_key]`` is the mask (uint8 MetaTensor on the image's grid), e.g. to write it.
        device: device deepbet runs on (``"cpu"`` or ``"cuda"``).
    """

    def __init__(
        self,
        keys: KeysCollection,
        mode: str | bool = "auto",
        modality: str = "t1ce",
        modalities: Sequence[str] = MODALITIES,
        brain_ml_range: Sequence[float] = (700.0, 2500.0),
        record_key: str = CaseKeys.BRAIN_EXTRACTION,
        mask_key: str | None = None,
        device: str | torch.device = "cpu",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mode = {True: "true", False: "false"}.get(mode, str(mode).lower())
        if self.mode not in ("auto", "true", "false"):
            raise ValueError(f"skull_strip must be 'auto', 'true' or 'false', got {mode!r}.")
        if modality not in T1_WEIGHTED:
            raise ValueError(f"brain extraction runs on a T1-weighted channel {T1_WEIGHTED}, got {modality!r}.")
        if modality not in modalities:
            raise ValueError(f"modality {modality!r} is not one of {list(modalities)}.")
        self.channel = list(modalities).index(modality)
        self.modality = modality
        self.brain_ml_range = tuple(float(v) for v in brain_ml_range)
        self.record_key = record_key
        self.mask_key = mask_key
        self.device = torch.device(device).type

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            channel = convert_to_numpy(image[self.channel])
            affine = convert_to_numpy(image.affine) if isinstance(image, MetaTensor) else np.eye(4)
            record = {"mode": self.mode, "modality": self.modality}
            if self.mode == "false":
                d[self.record_key] = {**record, "applied": False, "why": "skull_strip: false"}
                continue
            if self.mode == "auto":
                stripped, why = looks_skull_stripped(channel, affine)
                if stripped:
                    d[self.record_key] = {**record, "applied": False, "why": why}
                    continue
                record["why"] = why
            start = time.perf_counter()
            mask = extract_brain(channel, affine, self.device)
            seconds = time.perf_counter() - start
            brain_ml = float(mask.sum()) * voxel_ml(affine)
            low, high = self.brain_ml_range
            # deepbet returns a "brain" even for a phantom; a brain is brighter than the air that most of the rest is
            darker = mask.any() and (~mask).any() and channel[mask].mean() <= channel[~mask].mean()
            if not low <= brain_ml <= high or darker:
                found = (f"{brain_ml:.0f} mL, outside the plausible {low:.0f}-{high:.0f} mL" if not darker else
                         "a mask darker on average than the rest of the image")
                raise CaseError(
                    f"case {case_name(d, key)}: brain extraction on {self.modality} gave {found}: the series is not a "
                    f"whole-brain T1-weighted head MRI, or the extraction failed. Check the {self.modality} series; "
                    f"if the images are already skull-stripped, set skull_strip: false."
                )
            inside = torch.as_tensor(mask, device=torch.as_tensor(image).device)
            d[key] = image * inside.to(image.dtype)  # MetaTensor arithmetic keeps meta and applied operations
            d[self.record_key] = {**record, "applied": True, "tool": TOOL, "version": version(TOOL),
                                  "brain_ml": round(brain_ml, 1), "seconds": round(seconds, 1)}
            if self.mask_key:
                mask_image = inside.to(torch.uint8)[None]
                d[self.mask_key] = (MetaTensor(mask_image, meta=dict(image.meta))
                                    if isinstance(image, MetaTensor) else mask_image)
        return d
