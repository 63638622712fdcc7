"""A picture as a DICOM Secondary Capture image in a series' study (highdicom): the summary page any viewer shows,
even one that reads neither SEG nor SR."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom

from .series import DicomSeries

__all__ = ["write_secondary_capture"]


def write_secondary_capture(
    rgb: np.ndarray,
    source: DicomSeries,
    output: str | Path,
    series_description: str = "AI summary",
    series_number: int = 902,
    manufacturer: str = "monai-iunet",
    software_version: str = "0",
    research: bool = True,
) -> Path:
    """Write an RGB picture (H, W, 3; uint8) as a Secondary Capture image in the study of ``source``.

    The page is a rendering (several planes, text), not one plane of the patient: PatientOrientation is left
    empty, as the IOD allows for such images.

    Args:
        rgb: the picture.
        source: a series of the study the picture belongs to (patient and study are copied from it).
        output: the ``.dcm`` file to write.
        series_description, series_number: of the new series.
        manufacturer, software_version: what made it.
        research: ContentQualification RESEARCH (not for clinical use) rather than PRODUCT.
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an RGB picture (H, W, 3) of uint8, got {rgb.shape} {rgb.dtype}.")
    reference = pydicom.dcmread(source.files[0], stop_before_pixels=True)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=("L", "P"),  # required by highdicom for PATIENT; emptied below (the page has no plane)
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=manufacturer,
        series_description=series_description,
        software_versions=software_version,
        content_qualification="RESEARCH" if research else "PRODUCT",
    )
    image.PatientOrientation = ""
    image.Laterality = ""  # type 2C (paired organs): unknown for a page of several planes
    image.BurnedInAnnotation = "YES"  # the page carries text (volumes, verdicts), no patient identifiers
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    image.save_as(output)
    return output
