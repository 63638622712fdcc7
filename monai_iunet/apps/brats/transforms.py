"""MONAI transforms for multi-modal BraTS cases: checked loading of the modalities, the network's input grid and
intensities (``network_input``: the one pre-processing training and inference share), labels from region channels."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    CastToTyped,
    CropForegroundd,
    LoadImage,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    Spacingd,
    Transform,
)

from . import loading
from .cases import CaseError, case_name, check_brats_labels
from .labels import MODALITIES, REGIONS, SERIES_RULES, labels_from_regions, release_of

__all__ = ["LoadModalitiesd", "BratsLabelsFromRegions", "BratsLabelsFromRegionsd", "CheckBratsLabelsd",
           "TolerantSpacingd", "network_input"]



class LoadModalitiesd(MapTransform):
    """Load the modalities of a case as channels on one grid, from any form a datalist may give:

    - one file per modality, e.g. ``{"image": [t1, t1ce, t2, flair]}``, each a NIfTI file or a DICOM series folder;
    - one multi-channel image holding the modalities as channels in ``modalities`` order (a path, or a list of one
      path), e.g. a 4D NIfTI of shape X×Y×Z×4 — the form MONAI Label sends, one image per request;
    - a DICOM study folder, ``{"study": folder, "case": optional name, "series": optional pins, "study_uid":
      optional StudyInstanceUID}``, as a PACS or CD export leaves it: the series of each modality is chosen by
      ``series_rules`` (``dicom.selection``). A folder that holds more than one study or patient is an error
      listing them, unless ``study_uid`` picks one.

    A case is one study of one patient: DICOM series of different patients or studies are never joined (not even by
    ``coregister``).

    Modalities on different grids are resampled in patient coordinates onto the grid of ``reference_modality``, for
    a study and for a list of files or series alike, so a case gets its outputs on the same series' grid whatever
    form its datalist item takes (one multi-channel file has one grid already). DICOM series of one
    study must share a FrameOfReferenceUID, unless ``coregister`` registers them rigidly (elastix) to the reference.
    Every file is checked and loaded on its own, so errors name the case and the file or series: a missing
    modality, a file that does not exist, an empty DICOM folder, an unreadable or truncated file, a multi-volume
    series, a wrong channel count, NaN/Inf voxels, a modality that does not overlap the reference.

    Args:
        keys: keys whose value is the list of modality paths (relative paths were already joined by the datalist);
            for a study item the key is created.
        modalities: names of the expected modalities in channel order, used in messages and to check the count.
        reader: MONAI image reader (name or instance) for image files, e.g. ``"NibabelReader"``; default picks by
            file type. DICOM folders are always read through highdicom (``dicom.series``).
        atol: tolerance (mm) when comparing the modalities' affines (below it, no resampling).
        check_finite: raise when an image holds NaN or Inf voxels.
        reference_modality: the modality whose grid the channels are resampled to (the outputs' grid).
        series_rules: ``{modality: rule}`` overriding ``labels.SERIES_RULES`` for study folders.
        coregister: rigidly co-register every modality to the reference (for patients who moved between series).
        sources_key: if given, ``data[sources_key]`` says per modality where the channel came from (file or series,
            why it was chosen, its grid, whether it was resampled or registered) and which series is the reference;
            its ``reference_series`` entry is the ``DicomSeries`` object a DICOM SEG refers to (None for files).
        min_overlap: the smallest fraction of the reference grid a resampled modality must cover.
    """

    def __init__(
        self,
        keys: KeysCollection,
        modalities: Sequence[str] = MODALITIES,
        reader=None,
        atol: float = 1e-3,
        check_finite: bool = True,
        reference_modality: str = "t1ce",
        series_rules: Mapping[str, Mapping] | None = None,
        coregister: bool = False,
        sources_key: str | None = None,
        min_overlap: float = 0.5,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.modalities = tuple(modalities)
        if reference_modality not in self.modalities:
            raise ValueError(f"reference_modality '{reference_modality}' is not one of {self.modalities}.")
        rules = {**SERIES_RULES, **(series_rules or {})}
        missing = [m for m in self.modalities if m not in rules]
        if missing:
            raise ValueError(f"no series rule for modalities {missing}: give them in series_rules.")
        self.series_rules = {m: rules[m] for m in self.modalities}
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)
        self.check_finite = check_finite
        self.grid = {"coregister": coregister, "atol": atol, "min_overlap": min_overlap}
        self.reference_modality = reference_modality
        self.sources_key = sources_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.keys:
            case = case_name(d, key)
            if key not in d and "study" in d:
                images, sources, unreadable = loading.load_study(case, d, self.series_rules, self.check_finite)
            elif key not in d:
                if self.allow_missing_keys:
                    continue
                raise CaseError(f"case {case}: the datalist item has neither '{key}' nor 'study'.")
            else:
                paths = [str(p) for p in (d[key] if isinstance(d[key], (list, tuple)) else [d[key]])]
                if len(paths) == 1 and len(self.modalities) > 1:
                    d[key], record = loading.load_stacked(case, key, paths[0], self.modalities, self.loader,
                                                          self.check_finite)
                    if self.sources_key:
                        d[self.sources_key] = record
                    continue
                if len(paths) != len(self.modalities):
                    raise CaseError(
                        f"case {case}: expected {len(self.modalities)} modalities {list(self.modalities)} in '{key}' "
                        f"(one file each, or one file with {len(self.modalities)} channels), got {len(paths)}: {paths}."
                    )
                loaded = {m: loading.load_file(case, m, p, self.loader, self.check_finite)
                          for m, p in zip(self.modalities, paths)}
                images, sources = {m: v[0] for m, v in loaded.items()}, {m: v[1] for m, v in loaded.items()}
                unreadable = {}
            reference = self.reference_modality
            d[key] = loading.onto_reference(case, images, sources, reference, self.modalities, **self.grid)
            if self.sources_key:
                d[self.sources_key] = {
                    "reference": reference,
                    "reference_series": sources[reference].get("dicom_series"),
                    "modalities": sources,
                    **({"unreadable": unreadable} if unreadable else {}),
                }
        return d


class CheckBratsLabelsd(MapTransform):
    """:func:`check_brats_labels` on loaded label maps (put it right after loading, before the region channels).

    Args:
        keys: keys of the label maps.
        et_label: label value of enhancing tumour (4 for BraTS 2018-2022, 3 for 2023+).
    """

    def __init__(self, keys: KeysCollection, et_label: int = 4, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.et_label = et_label

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            file = str(getattr(d[key], "meta", {}).get("filename_or_obj", key))
            check_brats_labels(d[key], self.et_label, str(d.get("case") or Path(file).parent.name), file)
        return d


class BratsLabelsFromRegions(Transform):
    """Binary region channels (TC, WT, ET) → one BraTS label map (one channel, uint8; meta data kept):
    :func:`labels.labels_from_regions`, the inverse of ``ConvertToMultiChannelBasedOnBratsClasses``.

    Args:
        et_label: label value of enhancing tumour (4 for BraTS 2018-2022, 3 for 2023+).
    """

    def __init__(self, et_label: int = 4) -> None:
        release_of(et_label)  # checks the value
        self.et_label = et_label

    def __call__(self, regions):
        if regions.shape[0] != len(REGIONS):
            raise ValueError(f"the regions must have {len(REGIONS)} channels ({', '.join(REGIONS)}), got "
                             f"{regions.shape[0]}.")
        label = labels_from_regions(torch.as_tensor(regions), self.et_label).unsqueeze(0)
        if isinstance(regions, MetaTensor):
            label = MetaTensor(label, meta=dict(regions.meta), applied_operations=list(regions.applied_operations))
        return label


class BratsLabelsFromRegionsd(MapTransform):
    """Dictionary-based :class:`BratsLabelsFromRegions`.

    Args:
        keys: keys of the region channels (TC, WT, ET).
        et_label: label value of enhancing tumour (4 for BraTS 2018-2022, 3 for 2023+).
    """

    def __init__(self, keys: KeysCollection, et_label: int = 4, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = BratsLabelsFromRegions(et_label)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class TolerantSpacingd(Spacingd):
    """MONAI's ``Spacingd`` (same arguments, same inverse for ``Invertd``) that tolerates entries named
    ``<key>_<anything>`` which are not meta-data dicts. MONAI's treats every such entry of a NIfTI image as its meta
    dict and calls ``.update`` on it, so it fails on the ``image_path`` string that MONAI Label puts next to
    ``image`` in every request."""

    def __call__(self, data, lazy=None):
        d = dict(data)
        aside = {k: d.pop(k) for k in list(d) if isinstance(k, str) and not isinstance(d[k], Mapping)
                 and any(k.startswith(f"{key}_") for key in self.keys)}
        d = super().__call__(d, lazy)
        d.update(aside)
        return d


def network_input(pixdim: Sequence[float], image_key: str = "image",
                  label_key: str | None = None) -> list[MapTransform]:
    """The deterministic pre-processing between a case's loading and the network, the same for training (with the
    label) and inference (inverted by ``Invertd``): RAS orientation, the plans' grid (``pixdim`` mm; bilinear images,
    nearest-neighbour label), the brain's bounding box (the non-zero voxels of the skull-stripped image), float32, and
    a z-score of each channel over the brain. The bundles' ``train.json`` and ``inference.json`` both build it from
    here, so the network sees at inference what it saw in training."""
    keys = [image_key] if label_key is None else [image_key, label_key]
    modes = ["bilinear"] if label_key is None else ["bilinear", "nearest"]
    return [
        Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        TolerantSpacingd(keys, pixdim=pixdim, mode=modes),
        CropForegroundd(keys, source_key=image_key, allow_smaller=True),
        CastToTyped(image_key, dtype=torch.float32),
        NormalizeIntensityd(image_key, nonzero=True, channel_wise=True),
    ]
