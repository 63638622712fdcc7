"""Test and demo data: volumes written as DICOM MR series (pydicom), with geometry consistent with their NIfTI
affines (``geometry.ras_to_lps``), so that readers (ITK, pydicom, highdicom) reconstruct the grid they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from .geometry import ras_to_lps

__all__ = ["SeriesSpec", "write_series", "write_dicom_series", "series_uid", "study_ids", "resample_volume",
           "grid_affine"]


def _uid(*parts: str) -> str:
    return generate_uid(entropy_srcs=list(parts))  # deterministic for the same parts


@dataclass
class SeriesSpec:
    """One MR series: ``volume`` (X, Y, Z, or X, Y, Z, V for V volumes at the same positions) on ``affine``
    (voxel → RAS). Voxel (i, j, k) is pixel (row j, column i) of slice k."""

    description: str
    volume: np.ndarray
    affine: np.ndarray
    acquisition: str = "3D"
    contrast_agent: str = ""
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "OTHER")
    slice_thickness: float | None = None  # default: the slice spacing (no gaps)
    signed: bool = False
    bits_stored: int = 16
    frame_of_reference: str | None = None  # default: the study's
    extra: dict = field(default_factory=dict)  # further attributes written to every instance


def grid_affine(axes: np.ndarray, spacing, centre, shape) -> np.ndarray:
    """Voxel → RAS affine of a grid whose voxel axes point along the columns of ``axes`` (RAS unit vectors), with
    ``spacing`` mm steps, centred on ``centre`` (RAS, mm)."""
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(axes, float) * np.asarray(spacing, float)
    affine[:3, 3] = np.asarray(centre, float) - affine[:3, :3] @ (np.asarray(shape) - 1) / 2
    return affine


def resample_volume(volume: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, shape) -> np.ndarray:
    """``volume`` resampled (trilinear, zeros outside) onto the grid ``target_affine``/``shape``, in world space."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import SpatialResample

    image = MetaTensor(torch.as_tensor(volume, dtype=torch.float32)[None], affine=torch.as_tensor(affine))
    out = SpatialResample(mode="bilinear", padding_mode="zeros")(
        image, dst_affine=torch.as_tensor(target_affine), spatial_size=tuple(int(n) for n in shape)
    )
    return np.asarray(out[0])


def write_series(
    spec: SeriesSpec,
    output: str | Path,
    study: dict,
    series_number: int,
    file_name=None,
    first_instance: int = 0,
) -> list[Path]:
    """Write one series. ``study`` holds ``patient_id``, ``study_uid`` and ``frame_uid``; ``file_name(k)`` names
    the k-th instance's file (default ``0001.dcm``…); instances are numbered from ``first_instance`` (to write a
    series in parts). Returns the files."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    volume = spec.volume if spec.volume.ndim == 4 else spec.volume[..., None]
    affine = ras_to_lps(spec.affine)
    direction = affine[:3, :3]  # columns: LPS step of voxel axes i, j, k
    spacing = np.linalg.norm(direction, axis=0)
    orientation = np.concatenate([direction[:, 0] / spacing[0], direction[:, 1] / spacing[1]])
    uid = series_uid(study, spec, series_number)
    top = (1 << spec.bits_stored) - 1 if not spec.signed else (1 << (spec.bits_stored - 1)) - 1
    slope = max(float(np.abs(volume).max()), 1e-6) / top
    files = []
    for v in range(volume.shape[3]):
        for k in range(volume.shape[2]):
            index = first_instance + v * volume.shape[2] + k
            position = (affine @ np.array([0.0, 0.0, k, 1.0]))[:3]
            ds = _slice_dataset(volume[:, :, k, v].T, slope, spec.signed, spec.bits_stored)
            ds.SOPInstanceUID = _uid(uid, str(index))
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study["study_uid"], uid
            ds.FrameOfReferenceUID = spec.frame_of_reference or study["frame_uid"]
            ds.PatientID, ds.PatientName = study["patient_id"], f"Synthetic^{study['patient_id']}"
            ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", series_number, index + 1
            ds.SeriesDescription = ds.ProtocolName = spec.description
            ds.ImageType = list(spec.image_type)
            ds.MRAcquisitionType = spec.acquisition
            if spec.contrast_agent:
                ds.ContrastBolusAgent = spec.contrast_agent
            ds.ImagePositionPatient = [f"{p:.6f}" for p in position]
            ds.ImageOrientationPatient = [f"{o:.8f}" for o in orientation]
            ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing (along j), column spacing (i)
            ds.SliceThickness = f"{spec.slice_thickness or spacing[2]:.6f}"
            ds.SpacingBetweenSlices = f"{spacing[2]:.6f}"
            for name, value in spec.extra.items():
                setattr(ds, name, value)
            path = output / (file_name(index) if file_name else f"{index + 1:04d}.dcm")
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
    return files


def series_uid(study: dict, spec: SeriesSpec, series_number: int) -> str:
    """The SeriesInstanceUID ``write_series`` gives ``spec`` as series ``series_number`` of ``study``."""
    return _uid(study["patient_id"], spec.description, str(series_number), "series")


def study_ids(patient_id: str) -> dict:
    return {"patient_id": patient_id, "study_uid": _uid(patient_id, "study"), "frame_uid": _uid(patient_id, "frame")}


def write_dicom_series(
    images: dict[str, np.ndarray], affine: np.ndarray, output: str | Path, patient_id: str
) -> dict[str, Path]:
    """Write each ``{modality: (X, Y, Z) volume}`` as an MR series in ``output/<modality>/`` (one study, one frame
    of reference, the grid of ``affine``), so readers (ITK, pydicom, highdicom) reconstruct that grid."""
    study = study_ids(patient_id)
    folders = {}
    for number, (modality, volume) in enumerate(images.items(), start=1):
        folders[modality] = Path(output) / modality
        write_series(SeriesSpec(modality.upper(), volume, affine), folders[modality], study, number)
    return folders


def _slice_dataset(pixels: np.ndarray, slope: float, signed: bool = False, bits_stored: int = 16) -> pydicom.Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.Manufacturer = "monai-iunet synthetic"
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyDate = ds.SeriesDate = "20260101"
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.AccessionNumber = ds.ReferringPhysicianName = ""
    ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions = "GR", "SP", ""
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.RescaleIntercept, ds.RescaleSlope = "0", f"{slope:.8g}"
    stored = np.round(pixels / slope)
    if signed:
        ds.PixelData = np.clip(stored, -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1).astype("<i2").tobytes()
    else:
        ds.PixelData = np.clip(stored, 0, (1 << bits_stored) - 1).astype("<u2").tobytes()
    return ds
