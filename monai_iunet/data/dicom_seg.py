"""DICOM Segmentation objects (highdicom) for BraTS label maps predicted on a DICOM series."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from .dicom import RAS_TO_LPS

__all__ = ["read_series", "labels_on_series_frames", "write_dicom_seg", "BRATS_SEGMENTS"]

# (label name, SNOMED property type); segment numbers are 1, 2, 3 in this order.
BRATS_SEGMENTS = (
    ("Necrotic tumor core", codes.SCT.Necrosis),
    ("Peritumoral edema", codes.SCT.Edema),
    ("Enhancing tumor", codes.SCT.Neoplasm),
)


def read_series(folder: str | Path) -> list[pydicom.Dataset]:
    """The image slices of a DICOM series folder, sorted along the slice normal."""
    folder = Path(folder)
    slices = []
    for file in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            ds = pydicom.dcmread(file)
        except pydicom.errors.InvalidDicomError as error:
            raise ValueError(f"{file} in series {folder} is not a DICOM file: {error}") from error
        if "ImagePositionPatient" in ds and "PixelData" in ds:
            slices.append(ds)
    if not slices:
        raise ValueError(f"DICOM folder {folder} holds no image slices.")
    normal = np.cross(*np.asarray(slices[0].ImageOrientationPatient, dtype=float).reshape(2, 3))
    return sorted(slices, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))))


def labels_on_series_frames(label: np.ndarray, affine: np.ndarray, slices: list[pydicom.Dataset]) -> np.ndarray:
    """Sample a label volume (voxel → RAS ``affine``) at every pixel of the series: ``(frames, rows, columns)``.

    Works from the DICOM geometry tags alone, so it does not depend on how a reader ordered the volume's axes.
    Pixels outside the volume get 0.
    """
    to_voxel = np.linalg.inv(affine)
    frames = np.zeros((len(slices), slices[0].Rows, slices[0].Columns), dtype=label.dtype)
    rows, columns = np.meshgrid(np.arange(slices[0].Rows), np.arange(slices[0].Columns), indexing="ij")
    for f, ds in enumerate(slices):
        orientation = np.asarray(ds.ImageOrientationPatient, dtype=float).reshape(2, 3)
        row_spacing, column_spacing = (float(v) for v in ds.PixelSpacing)
        lps = (
            np.asarray(ds.ImagePositionPatient, dtype=float)[:, None, None]
            + orientation[0][:, None, None] * columns * column_spacing
            + orientation[1][:, None, None] * rows * row_spacing
        )
        ras = np.tensordot(RAS_TO_LPS, lps, axes=1)  # the flip is its own inverse
        voxel = np.rint(np.tensordot(to_voxel[:3, :3], ras, axes=1) + to_voxel[:3, 3][:, None, None]).astype(int)
        inside = np.all((voxel >= 0) & (voxel < np.array(label.shape)[:, None, None]), axis=0)
        frames[f][inside] = label[voxel[0][inside], voxel[1][inside], voxel[2][inside]]
    return frames


def write_dicom_seg(
    label: np.ndarray,
    affine: np.ndarray,
    source_folder: str | Path,
    output: str | Path,
    et_label: int = 4,
    software_version: str = "0",
) -> Path:
    """Write a BraTS label map (1 necrotic core, 2 edema, ``et_label`` enhancing) as a DICOM SEG of the series in
    ``source_folder``: one binary segment per class, referencing every source slice, same frame of reference."""
    slices = read_series(source_folder)
    frames = labels_on_series_frames(np.asarray(label), np.asarray(affine), slices)
    segment_map = np.zeros_like(frames, dtype=np.uint8)
    for number, value in enumerate((1, 2, et_label), start=1):
        segment_map[frames == value] = number
    algorithm = hd.AlgorithmIdentificationSequence(
        name="monai-iunet IUNet", version=software_version, family=codes.DCM.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=code,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for number, (name, code) in enumerate(BRATS_SEGMENTS, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=slices,
        pixel_array=segment_map,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=900,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="monai-iunet",
        manufacturer_model_name="IUNet BraTS segmentation",
        software_versions=software_version,
        device_serial_number="0",
        series_description="IUNet tumour segmentation",
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(output)
    return output
