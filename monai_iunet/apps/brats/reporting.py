"""What a BraTS case's DICOM measurement report says (``dicom.sr``): per region its volume referencing the SEG's
segments, per enhancing lesion its RANO diameters, and the case's verdicts (scan QC, modality check, uncertainty,
review) as coded evaluations, with the algorithm's name and version and "research use, not for diagnosis".

Codes: SNOMED CT and DICOM where they exist; the verdicts, the bidimensional product and the intended use have none,
so they are in the private scheme ``99IUNET`` (declared in the report's coding schemes).
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ...dicom.series import DicomSeries
from ...dicom.sr import ML, MM, MM2, Measured, MeasurementGroup, write_measurement_report
from .cases import RESEARCH_USE
from .labels import seg_segments

__all__ = ["SCHEME", "measurement_groups", "write_case_report", "RESEARCH_USE"]

SCHEME = hd.coding_schemes.CodingSchemeIdentificationItem(
    designator="99IUNET", name="monai-iunet result codes", responsible_organization="The monai-iunet authors")


def _code(value: str, meaning: str) -> Code:
    return Code(value, SCHEME.CodingSchemeDesignator, meaning)


# the case's verdicts: (record in the report entry, evaluation name)
VERDICTS = (("qc", _code("QC", "Scan quality check")), ("modality_check", _code("MODALITY", "Modality check")),
            ("uncertainty", _code("UNCERTAINTY", "Segmentation uncertainty")))
FLAGGED, PASSED, NOT_RUN = _code("FLAGGED", "Flagged"), _code("PASSED", "Passed"), _code("NOTRUN", "Not run")
REVIEW = _code("REVIEW", "Human review needed")
INTENDED_USE, RESEARCH_ONLY = _code("USE", "Intended use"), _code("RESEARCH", "Research use, not for diagnosis")
PRODUCT = _code("PRODUCT", "Product of perpendicular diameters")
SUM_OF_PRODUCTS = _code("SPD", "Sum of products of perpendicular diameters of measurable lesions")
MEASURABLE = _code("MEASURABLE", "Measurable lesion (RANO)")
MEASURABLE_COUNT = _code("NMEASURABLE", "Number of measurable lesions")
UNCERTAINTY_SCORE = _code("USCORE", "Uncertainty score")
COUNT = Code("1", "UCUM", "no units")

# the regions' findings: the SEG's segments by tracking id (NCR, ED, ET), and the unions tumour core and whole tumour
FINDINGS = {"NCR": codes.SCT.Necrosis, "ED": codes.SCT.Edema, "ET": codes.SCT.Neoplasm,
            "TC": codes.SCT.Neoplasm, "WT": codes.SCT.Neoplasm}
UNIONS = {"TC": ("NCR", "ET"), "WT": ("NCR", "ED", "ET")}


def _verdict(record: dict | None) -> Code:
    if not record or record.get("flagged") is None or ("score" in record and record["score"] is None):
        return NOT_RUN
    return FLAGGED if record["flagged"] else PASSED


def measurement_groups(entry: dict, et_label: int = 4) -> list[MeasurementGroup]:
    """The report's groups for a case's report entry (``BatchSegmentation``'s: ``volumes_ml``, ``rano``, ``qc``,
    ``modality_check``, ``uncertainty``, ``review``), segments numbered as ``labels.seg_segments`` writes them."""
    numbers = {segment.tracking_id: n for n, segment in enumerate(seg_segments(et_label), start=1)}
    volumes = entry.get("volumes_ml") or {}
    groups = []
    for region in ("ET", "NCR", "ED", "TC", "WT"):
        if region not in volumes:
            continue
        parts = UNIONS.get(region, (region,))
        name = region if len(parts) == 1 else f"{region} ({' + '.join(parts)})"
        groups.append(MeasurementGroup(
            name, FINDINGS[region], [Measured(codes.SCT.Volume, volumes[region], ML)],
            segments=tuple(numbers[p] for p in parts), finding_site=codes.SCT.Brain))
    rano = entry.get("rano")
    if rano is not None:
        for k, lesion in enumerate(rano["lesions"], start=1):
            groups.append(MeasurementGroup(
                f"ET lesion {k}", codes.SCT.Neoplasm,
                [Measured(codes.SCT.LongAxis, lesion["longest_mm"], MM),
                 Measured(codes.SCT.PerpendicularAxis, lesion["perpendicular_mm"], MM),
                 Measured(PRODUCT, lesion["product_mm2"], MM2), Measured(codes.SCT.Volume, lesion["volume_ml"], ML)],
                evaluations=[(MEASURABLE, codes.SCT.Yes if lesion["measurable"] else codes.SCT.No)],
                finding_site=codes.SCT.Brain))
        groups.append(MeasurementGroup(
            "RANO", codes.SCT.Neoplasm,
            [Measured(SUM_OF_PRODUCTS, rano["sum_of_products_mm2"], MM2),
             Measured(MEASURABLE_COUNT, rano["measurable"], COUNT)], finding_site=codes.SCT.Brain))
    uncertainty = entry.get("uncertainty") or {}
    review = entry.get("review") or {}
    groups.append(MeasurementGroup(
        "Verdicts", codes.DCM.QualityControl,
        [Measured(UNCERTAINTY_SCORE, uncertainty["score"], COUNT)] if uncertainty.get("score") is not None else [],
        evaluations=[(name, _verdict(entry.get(key))) for key, name in VERDICTS]
        + [(REVIEW, codes.SCT.Yes if review.get("needed") else codes.SCT.No), (INTENDED_USE, RESEARCH_ONLY)]))
    return groups


def write_case_report(entry: dict, seg: str | Path, source: DicomSeries, output: str | Path, et_label: int,
                      algorithm_name: str, algorithm_version: str) -> Path:
    """Write a case's measurement report (Comprehensive SR, TID 1500) about its SEG into the source's study."""
    return write_measurement_report(
        seg, source, measurement_groups(entry, et_label), output, algorithm_name, algorithm_version,
        procedure=codes.LN.BrainMRI, series_description=f"IUNet tumour measurements ({RESEARCH_USE})",
        coding_schemes=[SCHEME])
