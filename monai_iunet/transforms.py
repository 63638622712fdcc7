"""MONAI transforms for multi-modal BraTS cases: checked loading of the modalities, labels from region channels."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform

from .data.synthetic import MODALITIES as BRATS_MODALITIES

__all__ = ["LoadModalitiesd", "BratsLabelsFromRegionsd", "CaseError", "case_name"]


class CaseError(ValueError):
    """A case that cannot be used; the message names the case and the file."""


def case_name(item: Mapping, key: str = "image") -> str:
    """``item["case"]``; for one multi-channel file, its name without extension; otherwise the folder that holds all
    of the case's images (skipping a ``dicom`` folder level)."""
    if "case" in item:
        return str(item["case"])
    paths = [str(p) for p in (item[key] if isinstance(item[key], (list, tuple)) else [item[key]])]
    if not paths:
        return "<unnamed>"
    if len(paths) == 1 and not Path(paths[0]).is_dir():
        # MONAI Label and other stacked-image datalists keep every case's file in one folder: name by the file.
        return _strip_image_extension(Path(paths[0]).name)
    try:
        folder = Path(os.path.commonpath(paths)) if len(paths) > 1 else Path(paths[0]).parent
    except ValueError:  # a mix of absolute and relative paths
        folder = Path(paths[0]).parent
    if folder.name.lower() == "dicom":
        folder = folder.parent
    return folder.name or Path(paths[0]).stem


def _strip_image_extension(name: str) -> str:
    for extension in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.lower().endswith(extension):
            return name[: -len(extension)]
    return name


class LoadModalitiesd(MapTransform):
    """Load the modalities of a case and stack them as channels, from either form a datalist may give:

    - one file per modality (each a NIfTI file or a DICOM series folder), e.g. ``[t1, t1ce, t2, flair]``;
    - one multi-channel image holding the modalities as channels in ``modalities`` order (a path, or a list of one
      path), e.g. a 4D NIfTI of shape X×Y×Z×4 — the form MONAI Label sends, one image per request.

    Unlike ``LoadImaged`` with a list of files, every file is checked and loaded on its own, so errors name the case
    and the file: a missing modality, a file that does not exist, an empty DICOM folder, an unreadable or truncated
    file, a wrong channel count, or modalities on different grids (shape or affine).

    Args:
        keys: keys whose value is the list of modality paths (relative paths were already joined by the datalist).
        modalities: names of the expected modalities in channel order, used in messages and to check the count.
        reader: MONAI image reader (name or instance), e.g. ``"ITKReader"``; default picks by file type.
        atol: tolerance (mm) when comparing the modalities' affines.
        check_finite: raise when an image holds NaN or Inf voxels.
    """

    def __init__(
        self,
        keys: KeysCollection,
        modalities: Sequence[str] = BRATS_MODALITIES,
        reader=None,
        atol: float = 1e-3,
        check_finite: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.check_finite = check_finite
        self.modalities = tuple(modalities)
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)
        self.atol = atol

    def _load(self, case: str, modality: str, path: str) -> MetaTensor:
        file = Path(path)
        if not file.exists():
            raise CaseError(f"case {case}: {modality} file {file} does not exist.")
        if file.is_dir() and not any(p.is_file() for p in file.iterdir()):
            raise CaseError(f"case {case}: {modality} DICOM folder {file} is empty.")
        try:
            image = self.loader(str(file))
        except Exception as error:  # readers raise many types; name the file whatever they raise
            raise CaseError(f"case {case}: cannot read {modality} file {file} ({type(error).__name__}: {error})") from error
        # NIfTI writers put vector data in the 5th dimension (X×Y×Z×1×C): drop the singleton time axis.
        spatial_dims = len(image.meta.get("spatial_shape", image.shape[1:]))
        while image.ndim > spatial_dims + 1 and image.shape[-1] == 1:
            image = image.squeeze(-1)
        if self.check_finite:
            bad = int((~torch.isfinite(torch.as_tensor(image))).sum())
            if bad:
                raise CaseError(f"case {case}: {modality} file {file} has {bad} NaN/Inf voxel(s).")
        return image

    def _load_stacked(self, case: str, key: str, path: str) -> MetaTensor:
        image = self._load(case, "/".join(self.modalities), path)
        if image.shape[0] != len(self.modalities):
            raise CaseError(
                f"case {case}: '{key}' is one file, {path}, with {image.shape[0]} channel(s); expected either "
                f"{len(self.modalities)} channels ({', '.join(self.modalities)}, in this order) in one file or "
                f"{len(self.modalities)} files, one per modality."
            )
        return image

    def _load_separate(self, case: str, paths: list[str]) -> MetaTensor:
        images = [self._load(case, m, p) for m, p in zip(self.modalities, paths)]
        first = images[0]
        for modality, path, image in zip(self.modalities, paths, images):
            if image.shape[0] != 1:
                raise CaseError(f"case {case}: {modality} file {path} has {image.shape[0]} channels, expected 1.")
            if image.shape[1:] != first.shape[1:] or not np.allclose(image.affine, first.affine, atol=self.atol):
                raise CaseError(
                    f"case {case}: {modality} file {path} is on a different grid than {self.modalities[0]} "
                    f"({list(image.shape[1:])} vs {list(first.shape[1:])} voxels, affines "
                    f"{np.round(np.asarray(image.affine), 3).tolist()} vs "
                    f"{np.round(np.asarray(first.affine), 3).tolist()}); resample the modalities to one grid."
                )
        stacked = torch.cat([torch.as_tensor(image) for image in images], dim=0)
        return MetaTensor(stacked, affine=first.affine, meta=dict(first.meta))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            paths = [str(p) for p in (d[key] if isinstance(d[key], (list, tuple)) else [d[key]])]
            case = case_name(d, key)
            if len(paths) == 1 and len(self.modalities) > 1:
                d[key] = self._load_stacked(case, key, paths[0])
            elif len(paths) == len(self.modalities):
                d[key] = self._load_separate(case, paths)
            else:
                raise CaseError(
                    f"case {case}: expected {len(self.modalities)} modalities {list(self.modalities)} in '{key}' "
                    f"(one file each, or one file with {len(self.modalities)} channels), got {len(paths)}: {paths}."
                )
        return d


class BratsLabelsFromRegionsd(MapTransform):
    """Binary region channels (TC, WT, ET) → one BraTS label map: 1 necrotic core, 2 edema, ``et_label`` enhancing.

    The inverse of ``ConvertToMultiChannelBasedOnBratsClassesd``: ET → ``et_label`` (4 for BraTS 2018-2022, 3 for
    2023+), TC without ET → 1, WT without TC → 2. Output: one channel, uint8.
    """

    def __init__(self, keys: KeysCollection, et_label: int = 4, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if et_label not in (3, 4):
            raise ValueError(f"et_label must be 4 (BraTS 2018-2022) or 3 (BraTS 2023+), got {et_label}.")
        self.et_label = et_label

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            regions = d[key]
            if regions.shape[0] != 3:
                raise ValueError(f"{key} must have 3 channels (TC, WT, ET), got {regions.shape[0]}.")
            tc, wt, et = (regions[i] > 0.5 for i in range(3))
            label = torch.zeros_like(torch.as_tensor(tc), dtype=torch.uint8)
            label[wt] = 2
            label[tc] = 1
            label[et] = self.et_label
            label = label.unsqueeze(0)
            if isinstance(regions, MetaTensor):
                label = MetaTensor(label, meta=dict(regions.meta), applied_operations=list(regions.applied_operations))
            d[key] = label
        return d
