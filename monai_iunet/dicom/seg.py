"""DICOM Segmentation objects (highdicom) for label maps predicted on a DICOM series; the segments (which label
value is what) are the caller's, e.g. ``apps.brats.labels.seg_segments``.

The geometry is highdicom's: the label map becomes a ``highdicom.Volume`` (``geometry.array_to_volume``) and is
matched to the source series' volume (``Volume.match_geometry``). A label map on any other grid is refused first
(``_check_same_grid``: axis permutations and flips of the series' own voxels only), because ``match_geometry`` would
pad or crop it into place without a word; it is never resampled. Single-frame and enhanced multi-frame sources,
orientation jitter and slice gaps are handled by highdicom's volume reading (``series.read_series_volume``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .geometry import array_to_volume
from .series import DicomSeries, SeriesError, index_dicom_files, read_series_volume

__all__ = ["Segment", "write_dicom_seg", "reference_series"]


@dataclass(frozen=True)
class Segment:
    """One segment of a SEG: the voxels of the label map equal to ``value``.

    Args:
        value: label value in the label map.
        label: the segment's label (SegmentLabel).
        property_type: what it is (SegmentedPropertyTypeCodeSequence), e.g. ``codes.SCT.Edema``.
        tracking_id: short name tracked across objects (TrackingID).
        property_category: SegmentedPropertyCategoryCodeSequence.
        anatomic_region: where it is (AnatomicRegionSequence), if given.
    """

    value: int
    label: str
    property_type: Code
    tracking_id: str
    property_category: Code = codes.SCT.MorphologicallyAbnormalStructure
    anatomic_region: Code | None = None


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
    segments: Sequence[Segment],
    software_version: str = "0",
    algorithm_name: str = "monai-iunet IUNet",
    model_name: str = "IUNet segmentation",
    series_description: str = "IUNet segmentation",
) -> Path:
    """Write a label map as a DICOM SEG of a series, one segment per entry of ``segments`` (numbered from 1 in
    their order); label values not in ``segments`` are background.

    Args:
        label: ``(X, Y, Z)`` label map on the series' grid, in any axis order or direction.
        affine: voxel → RAS (mm) affine of ``label``.
        source: the series (or a folder holding just that series) the label map was predicted on.
        output: the ``.dcm`` file to write.
        segments: what each label value is.
        software_version: written to the SEG's algorithm identification and SoftwareVersions.
        algorithm_name: the algorithm identification's name.
        model_name: ManufacturerModelName.
        series_description: SeriesDescription of the SEG.

    Raises:
        SeriesError: the source is not a readable volume series.
        ValueError: the label map is not on the series' grid.
    """
    series = reference_series(source)
    reference = read_series_volume(series)
    if not segments or len({s.value for s in segments}) != len(segments):
        raise ValueError(f"segments must be given, each label value once; got values {[s.value for s in segments]}.")
    segment_numbers = np.zeros(np.shape(label), dtype=np.uint8)
    for number, segment in enumerate(segments, start=1):
        segment_numbers[np.asarray(label) == segment.value] = number
    label_volume = array_to_volume(segment_numbers, affine, reference.frame_of_reference_uid)
    _check_same_grid(label_volume.affine, segment_numbers.shape, reference)
    label_volume = label_volume.match_geometry(reference, tol=1e-3)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=software_version, family=codes.DCM.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=segment.label,
            segmented_property_category=segment.property_category,
            segmented_property_type=segment.property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=segment.tracking_id,
            anatomic_regions=[segment.anatomic_region] if segment.anatomic_region else None,
        )
        for number, segment in enumerate(segments, start=1)
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
        manufacturer_model_name=model_name,
        software_versions=software_version,
        device_serial_number="0",
        series_description=series_description,
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(output)
    return output

