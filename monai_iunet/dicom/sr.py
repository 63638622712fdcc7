"""DICOM Structured Reports of measurements on a DICOM SEG (TID 1500 Measurement Report, highdicom): what a PACS, a
RIS or a reporting tool reads of an AI result, the numbers beside the segmentation. The groups (which region, which
measurements, which verdicts) are the caller's, e.g. ``apps.brats.reporting``.

A group made of one SEG segment is a TID 1411 volumetric ROI group that references that segment and the source
series; a group made of several segments (a union, such as a tumour core) or of none (a case-level verdict, a
lesion's diameters) is a TID 1501 group naming the segments it is made of in its tracking identifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from .series import DicomSeries

__all__ = ["Measured", "MeasurementGroup", "ML", "MM", "MM2", "write_measurement_report"]

# UCUM units of the measurements written here
ML = Code("mL", "UCUM", "milliliter")
MM = codes.UCUM.Millimeter
MM2 = codes.UCUM.SquareMillimeter


@dataclass(frozen=True)
class Measured:
    """One numeric measurement: what (``name``), how much, in which ``unit``."""

    name: Code
    value: float
    unit: Code


@dataclass(frozen=True)
class MeasurementGroup:
    """One group of a measurement report.

    Args:
        tracking_id: the group's name, unique in the report (e.g. ``"ET"``, ``"ET lesion 1"``).
        finding: what was measured (finding type), e.g. ``codes.SCT.Neoplasm``.
        measurements: its numeric measurements.
        segments: the SEG segment numbers the group is made of: one → the group references that segment (TID 1411).
        evaluations: coded qualitative evaluations ``(name, value)``, e.g. a QC verdict.
        finding_site: where, e.g. ``codes.SCT.Brain``.
    """

    tracking_id: str
    finding: Code
    measurements: Sequence[Measured] = ()
    segments: tuple[int, ...] = ()
    evaluations: Sequence[tuple[Code, Code]] = field(default_factory=tuple)
    finding_site: Code | None = None


def _group(group: MeasurementGroup, seg: pydicom.Dataset, source_series_uid: str,
           algorithm: hd.sr.AlgorithmIdentification):
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=group.tracking_id)
    measurements = [hd.sr.Measurement(name=m.name, value=float(m.value), unit=m.unit, algorithm_id=algorithm)
                    for m in group.measurements]
    evaluations = [hd.sr.QualitativeEvaluation(name, value) for name, value in group.evaluations] or None
    sites = [hd.sr.FindingSite(group.finding_site)] if group.finding_site else None
    common = dict(tracking_identifier=tracking, finding_type=group.finding, algorithm_id=algorithm,
                  finding_sites=sites, measurements=measurements or None, qualitative_evaluations=evaluations)
    if len(group.segments) == 1:
        referenced = hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=group.segments[0],
            source_series=hd.sr.SourceSeriesForSegmentation(source_series_uid),
        )
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=referenced, **common)
    return hd.sr.MeasurementsAndQualitativeEvaluations(**common)


def write_measurement_report(
    seg: str | Path,
    source: DicomSeries,
    groups: Sequence[MeasurementGroup],
    output: str | Path,
    algorithm_name: str,
    algorithm_version: str,
    procedure: Code,
    series_description: str = "AI measurements",
    series_number: int = 901,
    research: bool = True,
    coding_schemes: Sequence[hd.coding_schemes.CodingSchemeIdentificationItem] = (),
) -> Path:
    """Write a TID 1500 measurement report (Comprehensive SR) about a SEG of ``source`` into the source's study.

    Args:
        seg: the DICOM SEG file the groups' segments are numbered in.
        source: the series the SEG was made from (the report's evidence, with the SEG).
        groups: the report's measurement groups, in order.
        output: the ``.dcm`` file to write.
        algorithm_name, algorithm_version: the algorithm identification of every measurement.
        procedure: the procedure reported, e.g. ``codes.LN.BrainMRI``.
        series_description: SeriesDescription of the report, e.g. saying what it may be used for.
        series_number: SeriesNumber of the report.
        research: ContentQualification RESEARCH (not for clinical use) rather than PRODUCT.
        coding_schemes: the private coding schemes the groups' codes use.

    Raises:
        ValueError: no groups, two groups with one tracking id, or a segment number the SEG does not have.
    """
    seg_ds = pydicom.dcmread(seg)
    numbers = {item.SegmentNumber for item in seg_ds.SegmentSequence}
    ids = [g.tracking_id for g in groups]
    if not groups or len(set(ids)) != len(ids):
        raise ValueError(f"a measurement report needs groups with distinct tracking ids, got {ids}.")
    for group in groups:
        missing = sorted(set(group.segments) - numbers)
        if missing:
            raise ValueError(f"group {group.tracking_id!r} names segments {missing} that {seg} does not have "
                             f"(it has {sorted(numbers)}).")
    algorithm = hd.sr.AlgorithmIdentification(name=algorithm_name, version=algorithm_version)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name=algorithm_name, model_name=algorithm_version),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=procedure,
        imaging_measurements=[_group(g, seg_ds, source.uid, algorithm) for g in groups],
    )
    evidence = [seg_ds] + [pydicom.dcmread(f, stop_before_pixels=True) for f in source.files]
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=seg_ds.get("Manufacturer", "monai-iunet"),
        is_complete=True,
        series_description=series_description,
        content_qualification="RESEARCH" if research else "PRODUCT",
        coding_schemes=list(coding_schemes) or None,
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(output)
    return output
