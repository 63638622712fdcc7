"""Every fact about BraTS data, once: the modalities in channel order, the file names of each release, the label
values and the evaluation regions built from them."""

from __future__ import annotations

__all__ = ["MODALITIES", "NAMING", "ET_LABEL", "NECROTIC_CORE", "EDEMA", "REGIONS", "label_values", "region_labels",
           "release_of"]

# Channel order of the bundle's networks (and of a 4-channel input image).
MODALITIES = ("t1", "t1ce", "t2", "flair")

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
