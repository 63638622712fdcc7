"""Loading a BraTS case's modalities as channels on one grid: the functions ``LoadModalitiesd`` is made of. Each
checks what it loads and raises ``CaseError`` naming the case and the file or series."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import ResampleToMatch

from ...dicom.geometry import volume_to_metatensor
from ...dicom.selection import SelectionError, select_series
from ...dicom.series import (
    DicomSeries,
    SeriesError,
    describe_candidates,
    index_dicom_files,
    one_study,
    read_series_volume,
)
from .cases import CaseError
from .registration import register_rigid

__all__ = ["check_finite", "choose_series", "load_file", "load_series", "load_series_folder", "load_stacked",
           "load_study", "onto_reference"]

logger = logging.getLogger(__name__)


def check_finite(case: str, what: str, image: MetaTensor) -> MetaTensor:
    """``image``, or a ``CaseError`` when it holds NaN or Inf voxels."""
    bad = int((~torch.isfinite(torch.as_tensor(image))).sum())
    if bad:
        raise CaseError(f"case {case}: {what} has {bad} NaN/Inf voxel(s).")
    return image


def load_file(case: str, modality: str, path: str, loader: Callable, finite: bool = True) -> tuple[MetaTensor, dict]:
    """One modality from an image file (read by ``loader``, a MONAI ``LoadImage``) or a DICOM series folder; the
    image (channel first) and where it came from."""
    file = Path(path)
    if not file.exists():
        raise CaseError(f"case {case}: {modality} file {file} does not exist.")
    if file.is_dir():
        return load_series_folder(case, modality, file, finite)
    try:
        image = loader(str(file))
    except Exception as error:  # readers raise many types; name the file whatever they raise
        raise CaseError(
            f"case {case}: cannot read {modality} file {file} ({type(error).__name__}: {error})") from error
    # NIfTI writers put vector data in the 5th dimension (X×Y×Z×1×C): drop the singleton time axis.
    spatial_dims = len(image.meta.get("spatial_shape", image.shape[1:]))
    while image.ndim > spatial_dims + 1 and image.shape[-1] == 1:
        image = image.squeeze(-1)
    if finite:
        check_finite(case, f"{modality} file {file}", image)
    return image, {"file": str(file)}


def load_series_folder(case: str, modality: str, folder: Path, finite: bool = True) -> tuple[MetaTensor, dict]:
    """One modality from a folder that holds exactly one usable DICOM volume series."""
    if not any(p.is_file() for p in folder.rglob("*")):
        raise CaseError(f"case {case}: {modality} DICOM folder {folder} is empty.")
    try:
        series = index_dicom_files(folder)
    except SeriesError as error:
        raise CaseError(f"case {case}: {modality}: {error}") from error
    candidates = [s for s in series if not s.excluded]
    if len(candidates) != 1:
        raise CaseError(
            f"case {case}: {modality} DICOM folder {folder} holds {len(candidates)} usable volume series, "
            f"expected one:\n{describe_candidates(series)}"
        )
    image = load_series(case, modality, candidates[0], finite)
    return image, {"folder": str(folder), "dicom_series": candidates[0]}


def load_series(case: str, modality: str, series: DicomSeries, finite: bool = True) -> MetaTensor:
    """One modality from a DICOM series (highdicom's volume, as a MetaTensor in RAS)."""
    try:
        image = volume_to_metatensor(read_series_volume(series), str(series.files[0].parent))
    except SeriesError as error:
        raise CaseError(f"case {case}: {modality}: {error}") from error
    return check_finite(case, f"{modality} {series.label}", image) if finite else image


def load_stacked(case: str, key: str, path: str, modalities: Sequence[str], loader: Callable,
                 finite: bool = True) -> tuple[MetaTensor, dict]:
    """All modalities from one multi-channel image (channels in ``modalities`` order); the image and its record."""
    image, source = load_file(case, "/".join(modalities), path, loader, finite)
    if image.shape[0] != len(modalities):
        raise CaseError(
            f"case {case}: '{key}' is one file, {path}, with {image.shape[0]} channel(s); expected either "
            f"{len(modalities)} channels ({', '.join(modalities)}, in this order) in one file or "
            f"{len(modalities)} files, one per modality."
        )
    return image, {"reference": modalities[0], "reference_series": None,
                   "modalities": {m: dict(source, channel=i) for i, m in enumerate(modalities)}}


HOW_TO_PIN = ('Pin one with "series": {{"{modality}": "<SeriesInstanceUID or SeriesNumber>"}} in the datalist item '
              "(monai-iunet-segment: --series {modality}=<SeriesNumber>)")


def choose_series(case: str, item: Mapping, series_rules: Mapping[str, Mapping],
                  how_to_pin: str = HOW_TO_PIN) -> tuple[list, dict]:
    """The series of the one study in ``item["study"]`` (a folder; ``item["study_uid"]`` picks one study of several)
    and the series chosen per modality by ``series_rules`` (``item["series"]`` pins): ``(series, {modality:
    SeriesChoice})``. A ``CaseError`` naming the case and folder when there is no single study or a modality has no
    series (or more than one equally good), saying what to do (``how_to_pin``: the caller's way)."""
    folder = Path(str(item["study"]))
    try:
        series = index_dicom_files(folder)
        try:
            series = one_study(series, item.get("study_uid"), where=f"the study folder {folder}")
        except SeriesError as error:  # a case is one study: say how to choose one
            raise SeriesError(f"{error}\nChoose one with \"study_uid\": \"<StudyInstanceUID>\" in the datalist "
                              "item (monai-iunet-segment: --study UID).") from error
        return series, select_series(series, series_rules, item.get("series"), how_to_pin)
    except (SeriesError, SelectionError) as error:
        raise CaseError(f"case {case}: study {folder}: {error}") from error


def load_study(case: str, item: Mapping, series_rules: Mapping[str, Mapping], finite: bool = True):
    """The modalities of a DICOM study folder (``item["study"]``), a series per modality chosen by
    ``series_rules`` (``choose_series``): the images, where each came from, and the series of the study that could
    not be read (by label)."""
    series, chosen = choose_series(case, item, series_rules)
    images = {m: load_series(case, m, c.series, finite) for m, c in chosen.items()}
    sources = {m: {"study": str(item["study"]), **c.report(), "dicom_series": c.series} for m, c in chosen.items()}
    return images, sources, {s.label: list(s.unreadable) for s in series if s.unreadable}


def onto_reference(case: str, images: dict[str, MetaTensor], sources: dict[str, dict], reference: str,
                   modalities: Sequence[str], coregister: bool = False, atol: float = 1e-3,
                   min_overlap: float = 0.5) -> MetaTensor:
    """Every modality on the reference's grid, stacked as channels in ``modalities`` order: one study of one patient,
    frames of reference checked (or the modalities co-registered rigidly with ``coregister``), then resampled in
    patient coordinates where the grids differ (by more than ``atol`` mm) and cover at least ``min_overlap`` of the
    reference grid. ``sources`` records what was done to each."""
    target = images[reference]
    dicom = {m: s["dicom_series"] for m, s in sources.items() if s.get("dicom_series")}
    try:
        one_study(list(dicom.values()), where="its DICOM series")
    except SeriesError as error:
        raise CaseError(f"case {case}: {error}") from error
    frames = {m: s.frame_of_reference for m, s in dicom.items()}
    stacked = []
    for modality in modalities:
        image, source = images[modality], sources[modality]
        if image.shape[0] != 1:
            raise CaseError(f"case {case}: {modality} {_where(source)} has {image.shape[0]} channels, "
                            "expected 1 (a 4D image given as one modality?).")
        if modality != reference and coregister:
            registration = register_rigid(target, image)
            image = MetaTensor(image.as_tensor(), affine=torch.as_tensor(registration.aligned_affine(image.affine)))
            source["registration"] = registration.report()
        elif modality in frames and reference in frames and frames[modality] != frames[reference]:
            raise CaseError(
                f"case {case}: {modality} {_where(source)} and {reference} {_where(sources[reference])} "
                f"have different FrameOfReferenceUIDs ({frames[modality]} vs {frames[reference]}): they are not "
                "aligned by the scanner. Set coregister: true to register them rigidly."
            )
        same_grid = image.shape[1:] == target.shape[1:] and np.allclose(image.affine, target.affine, atol=atol)
        source["resampled"] = not same_grid
        if not same_grid:
            image = _resample(case, modality, source, image, target, min_overlap)
        stacked.append(image.as_tensor())
    sources[reference]["reference"] = True
    meta = {k: v for k, v in target.meta.items() if k != "affine"}
    return MetaTensor(torch.cat(stacked, dim=0), affine=target.affine, meta=meta)


def _resample(case: str, modality: str, source: dict, image: MetaTensor, target: MetaTensor,
              min_overlap: float) -> MetaTensor:
    resample = ResampleToMatch(mode="bilinear", padding_mode="zeros")
    coverage = resample(MetaTensor(torch.ones_like(image.as_tensor()), affine=image.affine), target, mode="nearest")
    covered = float(torch.as_tensor(coverage).mean())
    source["reference_grid_covered"] = round(covered, 4)
    if covered < min_overlap:
        raise CaseError(
            f"case {case}: {modality} {_where(source)} covers only {covered:.0%} of the reference grid in "
            "patient coordinates: the modalities do not show the same region (different sessions or a wrong "
            "affine?)."
        )
    logger.info("case %s: %s resampled onto the reference grid (%.0f%% covered)", case, modality, 100 * covered)
    return MetaTensor(resample(image, target).as_tensor(), affine=target.affine)


def _where(source: dict) -> str:
    if source.get("dicom_series") is not None:
        return source["dicom_series"].label
    return str(source.get("file") or source.get("folder"))
