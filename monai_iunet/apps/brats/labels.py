"""Every fact about BraTS data, once: the modalities in channel order, the file names of each release, the label
values and the evaluation regions built from them, which DICOM series is which modality, and what the segments of a
DICOM SEG are."""

from __future__ import annotations

from ...dicom.selection import PRE_CONTRAST_TEXT

__all__ = ["MODALITIES", "T1_WEIGHTED", "NAMING", "ET_LABEL", "NECROTIC_CORE", "EDEMA", "REGIONS", "SERIES_RULES",
           "label_values", "region_labels", "release_of", "labels_from_regions", "seg_segments"]

# Channel order of the bundle's networks (and of a 4-channel input image); the T1-weighted ones (brain extraction).
MODALITIES = ("t1", "t1ce", "t2", "flair")
T1_WEIGHTED = ("t1", "t1ce")

# File suffixes of each modality and of the label, per naming convention: BraTS 2018-2022 ("2020":
# ``<case>_t1ce.nii.gz``) and BraTS 2023+ ("2023": ``<case>-t1c.nii.gz``).
NAMING = {
    "2020": {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"},
    "2023": {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"},
}

# The label value of enhancing tumour under each naming convention; the other labels are the same in both.
ET_LABEL = {"2020": 4, "2023": 3}
NECROTIC_CORE, EDEMA = 1, 2

# The evaluation regions, in the order of the networks' output channels.
REGIONS = ("TC", "WT", "ET")


def release_of(et_label: int) -> str:
    """``"BraTS 2018-2022"`` or ``"BraTS 2023+"``: the releases whose label maps use this enhancing-tumour value."""
    if et_label not in ET_LABEL.values():
        raise ValueError(f"et_label must be 4 (BraTS 2018-2022) or 3 (BraTS 2023+), got {et_label}.")
    return "BraTS 2018-2022" if et_label == ET_LABEL["2020"] else "BraTS 2023+"


def label_values(et_label: int) -> tuple[int, ...]:
    """The values a BraTS label map holds: background, necrotic core, edema, enhancing tumour."""
    release_of(et_label)
    return 0, NECROTIC_CORE, EDEMA, et_label


def region_labels(et_label: int) -> dict[str, tuple[int, ...]]:
    """Which labels make up each region: tumour core, whole tumour, enhancing tumour."""
    release_of(et_label)
    return {"TC": (NECROTIC_CORE, et_label), "WT": (NECROTIC_CORE, EDEMA, et_label), "ET": (et_label,)}


def labels_from_regions(regions, et_label: int, threshold: float = 0.5):
    """Region channels (TC, WT, ET; probabilities or binary, in ``REGIONS`` order) → one BraTS label map (uint8,
    without a channel axis): enhancing tumour ``et_label``, the rest of the core ``NECROTIC_CORE``, the rest of the
    whole tumour ``EDEMA``. The inverse of MONAI's ``ConvertToMultiChannelBasedOnBratsClasses``."""
    import torch

    release_of(et_label)
    inside = {region: torch.as_tensor(regions[i]) > threshold for i, region in enumerate(REGIONS)}
    label = torch.zeros_like(inside["WT"], dtype=torch.uint8)
    label[inside["WT"]] = EDEMA
    label[inside["TC"]] = NECROTIC_CORE
    label[inside["ET"]] = et_label
    return label


# Which series of a DICOM study is which modality (``dicom.selection``'s rules: words of SeriesDescription,
# ProtocolName and SequenceName, and the contrast tag); a bundle's ``series_rules`` override them per modality.
_T1 = r"\bt1|mp ?rage|spgr|bravo|\btfl|fl3d|fl2d|\bvibe|\bffe\b|\bse t1"
_T2 = r"\bt2"
_FLAIR = r"flair|dark ?fluid"
_T2_STAR = r"t2 ?\*|t2 ?star|\bswi|\bgre\b|hemo|medic|\bswan"
_DIFFUSION = r"dwi|\bdiff|\badc\b|\btrace|\bdti\b|\bep2d diff|\bb ?\d{3,4}\b"
_PERFUSION = r"perf|\bdsc\b|\bdce\b|\basl\b"
SERIES_RULES: dict[str, dict] = {
    "t1": {"match": [_T1], "exclude": [_FLAIR, _T2, _DIFFUSION, _PERFUSION], "contrast": False},
    "t1ce": {"match": [_T1], "exclude": [_FLAIR, _T2, _DIFFUSION, _PERFUSION, PRE_CONTRAST_TEXT], "contrast": True},
    "t2": {"match": [_T2], "exclude": [_FLAIR, _T2_STAR, _DIFFUSION, _PERFUSION, _T1], "contrast": None},
    "flair": {"match": [_FLAIR], "exclude": [_DIFFUSION, _PERFUSION, _T1 + r"(?! ?flair)"], "contrast": None},
}


def seg_segments(et_label: int) -> list:
    """The segments of a DICOM SEG of a BraTS label map (``dicom.seg.Segment``): necrotic core, edema, enhancing
    tumour, as SNOMED CT morphologies in the brain."""
    from pydicom.sr.codedict import codes

    from ...dicom.seg import Segment

    release_of(et_label)
    brain = codes.SCT.Brain
    return [
        Segment(NECROTIC_CORE, "Necrotic tumor core", codes.SCT.Necrosis, "NCR", anatomic_region=brain),
        Segment(EDEMA, "Peritumoral edema", codes.SCT.Edema, "ED", anatomic_region=brain),
        Segment(et_label, "Enhancing tumor", codes.SCT.Neoplasm, "ET", anatomic_region=brain),
    ]
