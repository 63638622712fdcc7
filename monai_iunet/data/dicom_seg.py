"""DICOM Segmentation objects (highdicom) for BraTS label maps predicted on a DICOM series.

The geometry is highdicom's: the label map becomes a ``highdicom.Volume`` (its RAS affine converted to LPS) and is
matched to the source series' volume (``Volume.match_geometry``: axis permutations and flips only, so a label map
on any other grid is an error, never a silent resampling). Single-frame and enhanced multi-frame sources, orientation
jitter and slice gaps are handled by highdicom's volume reading (``dicom_series.read_series_volume``).
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from .dicom import RAS_TO_LPS
from .dicom_series import DicomSeries, SeriesError, index_dicom_files, read_series_volume

__all__ = ["write_dicom_seg", "reference_series", "BRATS_SEGMENTS"]

# (label name, SNOMED CT property type, tracking id); segment numbers are 1, 2, 3 in this order.
BRATS_SEGMENTS = (
    ("Necrotic tumor core", codes.SCT.Necrosis, "NCR"),
    ("Peritumoral edema", codes.SCT.Edema, "ED"),
    ("Enhancing tumor", codes.SCT.Neoplasm, "ET"),
)


def reference_series(source: str | Path | DicomSeries) -> DicomSeries:
    """The series a SEG refers to: given directly, or the one volume candidate of a series folder."""
    if isinstance(source, DicomSeries):
        return source
    candidates = [s for s in index_dicom_files(source) if not s.excluded]
    if len(candidates) != 1:
        raise SeriesError(f"DICOM folder {source} holds {len(candidates)} volume series; expected one.")
    return candidates[0]


def _source_datasets(series: DicomSeries) -> list[pydicom.Dataset]:
    """The source instances as highdicom's SEG constructor needs them (in memory only; the files are untouched):

    - one ImageOrientationPatient for all slices: highdicom compares them exactly, and scanners write rounding jitter
      (GE: the 10th decimal). The series was indexed as one orientation within ``ORIENTATION_TOLERANCE``, and the SEG
      takes its plane orientation from the label volume, so this only lets the check pass;
    - enhanced multi-frame: pixel measures and plane orientation in the shared functional groups, where highdicom
      looks for them (Siemens XA writes them per frame; the index checked that all frames share one orientation);
    - no empty sequences in the patient and study modules (e.g. Philips' empty ProcedureCodeSequence): highdicom
      copies them and ``dciodvfy`` rejects them in a SEG.
    """
    datasets = [pydicom.dcmread(f) for f in series.files]
    for ds in datasets:
        if "PerFrameFunctionalGroupsSequence" in ds:
            shared = ds.SharedFunctionalGroupsSequence[0]
            for name in ("PixelMeasuresSequence", "PlaneOrientationSequence"):
                if name not in shared:
                    setattr(shared, name, ds.PerFrameFunctionalGroupsSequence[0][name].value)
        if "ImageOrientationPatient" in ds:
            ds.ImageOrientationPatient = datasets[0].ImageOrientationPatient
        for element in list(ds):
            if element.VR == "SQ" and len(element.value) == 0 and element.tag.group in (0x0008, 0x0010, 0x0032):
                del ds[element.tag]
    return datasets


def _check_same_grid(label_affine: np.ndarray, shape, reference) -> None:
    """The label map's voxels must be the reference's voxels up to axis order and direction. ``match_geometry``
    would otherwise pad/crop a label map on another lattice (even another spacing) into place without a word."""
    to_reference = np.linalg.inv(np.asarray(reference.affine)) @ label_affine
    steps = to_reference[:3, :3]
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij")).reshape(3, -1)
    mapped = np.rint(steps @ corners + to_reference[:3, 3:4]).astype(int)
    permutation = np.allclose(np.abs(steps) @ np.ones(3), 1, atol=1e-3) and np.allclose(np.abs(steps), np.rint(
        np.abs(steps)), atol=1e-3)
    if not (permutation and np.allclose(to_reference[:3, 3], np.rint(to_reference[:3, 3]), atol=1e-2)
            and mapped.min(1).tolist() == [0, 0, 0] and (mapped.max(1) + 1).tolist() == list(reference.spatial_shape)):
        raise ValueError(
            f"the label map ({list(shape)} voxels) is not on the source series' grid ({list(reference.spatial_shape)}"
            f" voxels): label voxel -> series voxel map {np.round(to_reference, 3).tolist()}. Write the SEG from a "
            "label map on the series' own grid (e.g. after Invertd)."
        )


def write_dicom_seg(
    label: np.ndarray,
    affine: np.ndarray,
    source: str | Path | DicomSeries,
    output: str | Path,
    et_label: int = 4,
    software_version: str = "0",
) -> Path:
    """Write a BraTS label map (1 necrotic core, 2 edema, ``et_label`` enhancing) as a DICOM SEG of a series.

    Args:
        label: ``(X, Y, Z)`` label map on the series' grid, in any axis order or direction.
        affine: voxel → RAS (mm) affine of ``label``.
        source: the series (or a folder holding just that series) the label map was predicted on.
        output: the ``.dcm`` file to write.
        et_label: label of enhancing tumour in ``label``.
        software_version: written to the SEG's algorithm identification and SoftwareVersions.

    Raises:
        SeriesError: the source is not a readable volume series.
        ValueError: the label map is not on the series' grid.
    """
    series = reference_series(source)
    reference = read_series_volume(series)
    segment_numbers = np.zeros(np.shape(label), dtype=np.uint8)
    for number, value in enumerate((1, 2, et_label), start=1):
        segment_numbers[np.asarray(label) == value] = number
    lps = np.eye(4)
    lps[:3] = np.asarray(affine, dtype=np.float64)[:3]
    lps[:3] = RAS_TO_LPS @ lps[:3]
    _check_same_grid(lps, segment_numbers.shape, reference)
    label_volume = hd.Volume(
        segment_numbers, lps, coordinate_system="PATIENT", frame_of_reference_uid=reference.frame_of_reference_uid
    ).match_geometry(reference, tol=1e-3)
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
            tracking_uid=hd.UID(),
            tracking_id=tracking_id,
            anatomic_regions=[codes.SCT.Brain],
        )
        for number, (name, code, tracking_id) in enumerate(BRATS_SEGMENTS, start=1)
    ]
    sources = _source_datasets(series)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=label_volume,
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

