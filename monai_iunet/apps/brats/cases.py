"""What a case is, as the BraTS application meets it: its name (from a datalist item), the error that names it, the
check that its label map holds BraTS labels, and the keys under which its records travel through the transforms into
the inference report (``CaseKeys``). Pure functions on the facts of ``labels``; no I/O library."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from monai.utils import StrEnum

from .labels import ET_LABEL, label_values, release_of

__all__ = ["CaseKeys", "CaseError", "RESEARCH_USE", "case_name", "check_brats_labels"]

# what every output says of itself (DICOM series descriptions, the SR, the summary page)
RESEARCH_USE = "research use, not for diagnosis"


class CaseKeys(StrEnum):
    """The data keys of a case's records; each is also the record's name in ``inference_report.json``."""

    SOURCES = "image_sources"  # where each modality came from (LoadModalitiesd)
    BRAIN_EXTRACTION = "brain_extraction"  # what brain extraction did (SkullStripd)
    BRAIN_MASK = "brain_mask"  # the brain mask itself (SkullStripd), written on request
    QC = "qc"  # the scan QC (ScanQCd)
    MODALITY_CHECK = "modality_check"  # which contrast each slot holds (ModalityCheckd)
    UNCERTAINTY = "uncertainty"  # the case's uncertainty (CaseUncertaintyd)
    VOLUMES = "volumes_ml"  # the tumour volumes (TumourVolumesd)
    RANO = "rano"  # bidimensional measurements of the enhancing tumour (RanoMeasurementsd)


class CaseError(ValueError):
    """A case that cannot be used; the message names the case and the file."""


def case_name(item: Mapping, key: str = "image") -> str:
    """``item["case"]``; for a study item, the study folder's name; for one multi-channel file, its name without
    extension; otherwise the folder that holds all of the case's images (skipping a ``dicom`` folder level)."""
    if "case" in item:
        return str(item["case"])
    if key not in item and "study" in item:
        return Path(str(item["study"])).resolve().name
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


def check_brats_labels(label, et_label: int, case: str, file: str) -> None:
    """Raise ``CaseError`` unless the label map's values are BraTS labels (``apps.brats.labels.label_values``).
    Without this check, 2023 data with ``et_label`` 4 loses every ET voxel to the background of all three regions,
    silently."""
    values = sorted(int(v) for v in torch.unique(torch.as_tensor(label)).tolist())
    allowed = set(label_values(et_label))
    if set(values) <= allowed:
        return
    (other,) = set(ET_LABEL.values()) - {et_label}
    fix = (f" They are BraTS labels with enhancing tumour = {other}: set et_label {other} ({release_of(other)})."
           if set(values) <= set(label_values(other)) else " It is not a BraTS label map (or not the right file).")
    raise CaseError(f"case {case}: label {file} has values {values}; with et_label {et_label} a BraTS label map "
                    f"holds only {sorted(allowed)}.{fix}")
