"""Writing a volume as a DICOM MR series (pydicom), with geometry consistent with its NIfTI affine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

__all__ = ["write_dicom_series", "RAS_TO_LPS"]

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


def _uid(*parts: str) -> str:
    return generate_uid(entropy_srcs=list(parts))  # deterministic for the same parts


def write_dicom_series(
    images: dict[str, np.ndarray], affine: np.ndarray, output: str | Path, patient_id: str
) -> dict[str, Path]:
    """Write each ``{modality: (X, Y, Z) volume}`` as an axial MR series in ``output/<modality>/``.

    All series share the study and the FrameOfReferenceUID; voxel (i, j, k) of the volume is pixel (row j, column i)
    of slice k, and ImagePositionPatient/ImageOrientationPatient/PixelSpacing follow from ``affine`` (voxel → RAS),
    so readers (ITK, pydicom via MONAI) reconstruct the same grid. Intensities are stored as uint16 with a rescale
    slope. Returns the series folders.
    """
    output = Path(output)
    study_uid, frame_uid = _uid(patient_id, "study"), _uid(patient_id, "frame")
    direction = RAS_TO_LPS @ affine[:3, :3]  # columns: LPS step of voxel axes i, j, k
    spacing = np.linalg.norm(direction, axis=0)
    orientation = np.concatenate([direction[:, 0] / spacing[0], direction[:, 1] / spacing[1]])
    folders = {}
    for series_number, (modality, volume) in enumerate(images.items(), start=1):
        folder = output / modality
        folder.mkdir(parents=True, exist_ok=True)
        series_uid = _uid(patient_id, modality, "series")
        slope = max(float(volume.max()), 1e-6) / 4095.0
        for k in range(volume.shape[2]):
            position = RAS_TO_LPS @ (affine[:3, :3] @ np.array([0.0, 0.0, k]) + affine[:3, 3])
            ds = _slice_dataset(volume[:, :, k].T, slope)
            ds.SOPInstanceUID = _uid(patient_id, modality, str(k))
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
            ds.PatientID, ds.PatientName = patient_id, f"Synthetic^{patient_id}"
            ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", series_number, k + 1
            ds.SeriesDescription = modality.upper()
            ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
            ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing (along j), column spacing (i)
            ds.SliceThickness = f"{spacing[2]:.6f}"
            ds.SliceLocation = f"{position[2]:.6f}"
            ds.save_as(folder / f"{k + 1:04d}.dcm", enforce_file_format=True)
        folders[modality] = folder
    return folders


def _slice_dataset(pixels: np.ndarray, slope: float) -> pydicom.Dataset:
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
    ds.ImageType = ["ORIGINAL", "PRIMARY", "OTHER"]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope = "0", f"{slope:.8g}"
    ds.PixelData = np.clip(np.round(pixels / slope), 0, 65535).astype(np.uint16).tobytes()
    return ds
