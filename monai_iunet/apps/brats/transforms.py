"""MONAI transforms for multi-modal BraTS cases: checked loading of the modalities, labels from region channels."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform, ResampleToMatch, Spacingd

from ...dicom.geometry import volume_to_metatensor
from ...dicom.selection import SelectionError, select_series
from ...dicom.series import (
    DicomSeries,
    SeriesError,
    describe_candidates,
    index_dicom_files,
    one_study,
    read_series_volume,
)
from .cases import CaseError, case_name, check_brats_labels
from .labels import MODALITIES, REGIONS, SERIES_RULES, labels_from_regions, release_of
from .registration import register_rigid

__all__ = ["LoadModalitiesd", "BratsLabelsFromRegionsd", "CheckBratsLabelsd", "TolerantSpacingd"]


logger = logging.getLogger(__name__)


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
        self.check_finite = check_finite
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)
        self.atol = atol
        self.reference_modality = reference_modality
        rules = {**SERIES_RULES, **(series_rules or {})}
        missing = [m for m in self.modalities if m not in rules]
        if missing:
            raise ValueError(f"no series rule for modalities {missing}: give them in series_rules.")
        self.series_rules = {m: rules[m] for m in self.modalities}
        self.coregister = coregister
        self.sources_key = sources_key
        self.min_overlap = min_overlap

    def _check_finite(self, case: str, what: str, image: MetaTensor) -> MetaTensor:
        if self.check_finite:
            bad = int((~torch.isfinite(torch.as_tensor(image))).sum())
            if bad:
                raise CaseError(f"case {case}: {what} has {bad} NaN/Inf voxel(s).")
        return image

    def _load_file(self, case: str, modality: str, path: str) -> tuple[MetaTensor, dict]:
        file = Path(path)
        if not file.exists():
            raise CaseError(f"case {case}: {modality} file {file} does not exist.")
        if file.is_dir():
            return self._load_series_folder(case, modality, file)
        try:
            image = self.loader(str(file))
        except Exception as error:  # readers raise many types; name the file whatever they raise
            raise CaseError(
                f"case {case}: cannot read {modality} file {file} ({type(error).__name__}: {error})") from error
        # NIfTI writers put vector data in the 5th dimension (X×Y×Z×1×C): drop the singleton time axis.
        spatial_dims = len(image.meta.get("spatial_shape", image.shape[1:]))
        while image.ndim > spatial_dims + 1 and image.shape[-1] == 1:
            image = image.squeeze(-1)
        return self._check_finite(case, f"{modality} file {file}", image), {"file": str(file)}

    def _load_series_folder(self, case: str, modality: str, folder: Path) -> tuple[MetaTensor, dict]:
        if not any(p.is_file() for p in folder.rglob("*")):
            raise CaseError(f"case {case}: {modality} DICOM folder {folder} is empty.")
        try:
            series = index_dicom_files(folder)
        except SeriesError as error:
            raise CaseError(f"case {case}: {modality}: {error}") from error
        candidates = [s for s in series if not s.excluded]
        if len(candidates) != 1:
            raise CaseError(
                f"case {case}: {modality} DICOM folder {folder} holds {len(candidates)} usable volume series, "
                f"expected one:\n{describe_candidates(series)}"
            )
        return self._load_series(case, modality, candidates[0]), {"folder": str(folder), "dicom_series": candidates[0]}

    def _load_series(self, case: str, modality: str, series: DicomSeries) -> MetaTensor:
        try:
            image = volume_to_metatensor(read_series_volume(series), str(series.files[0].parent))
        except SeriesError as error:
            raise CaseError(f"case {case}: {modality}: {error}") from error
        return self._check_finite(case, f"{modality} {series.label}", image)

    def _load_stacked(self, case: str, key: str, path: str) -> tuple[MetaTensor, dict]:
        image, source = self._load_file(case, "/".join(self.modalities), path)
        if image.shape[0] != len(self.modalities):
            raise CaseError(
                f"case {case}: '{key}' is one file, {path}, with {image.shape[0]} channel(s); expected either "
                f"{len(self.modalities)} channels ({', '.join(self.modalities)}, in this order) in one file or "
                f"{len(self.modalities)} files, one per modality."
            )
        return image, {"reference": self.modalities[0], "reference_series": None,
                       "modalities": {m: dict(source, channel=i) for i, m in enumerate(self.modalities)}}

    def _load_study(self, case: str, item: Mapping) -> tuple[dict[str, MetaTensor], dict[str, dict]]:
        folder = Path(str(item["study"]))
        try:
            series = index_dicom_files(folder)
            try:
                series = one_study(series, item.get("study_uid"), where=f"the study folder {folder}")
            except SeriesError as error:  # a case is one study: say how to choose one
                raise SeriesError(f"{error}\nChoose one with \"study_uid\": \"<StudyInstanceUID>\" in the datalist "
                                  "item (monai-iunet-segment: --study UID).") from error
            chosen = select_series(series, self.series_rules, item.get("series"))
        except (SeriesError, SelectionError) as error:
            raise CaseError(f"case {case}: study {folder}: {error}") from error
        images = {m: self._load_series(case, m, c.series) for m, c in chosen.items()}
        sources = {m: {"study": str(folder), **c.report(), "dicom_series": c.series} for m, c in chosen.items()}
        return images, sources, {s.label: list(s.unreadable) for s in series if s.unreadable}

    def _onto_reference(self, case: str, images: dict[str, MetaTensor], sources: dict[str, dict], reference: str):
        """Every modality on the reference's grid: frames of reference checked, optionally co-registered, then
        resampled in patient coordinates where the grids differ."""
        target = images[reference]
        dicom = {m: s["dicom_series"] for m, s in sources.items() if s.get("dicom_series")}
        try:
            one_study(list(dicom.values()), where="its DICOM series")
        except SeriesError as error:
            raise CaseError(f"case {case}: {error}") from error
        frames = {m: s.frame_of_reference for m, s in dicom.items()}
        stacked = []
        for modality in self.modalities:
            image, source = images[modality], sources[modality]
            if image.shape[0] != 1:
                raise CaseError(f"case {case}: {modality} {self._where(source)} has {image.shape[0]} channels, "
                                "expected 1 (a 4D image given as one modality?).")
            if modality != reference and self.coregister:
                registration = register_rigid(target, image)
                image = MetaTensor(image.as_tensor(), affine=torch.as_tensor(registration.aligned_affine(image.affine)))
                source["registration"] = registration.report()
            elif modality in frames and reference in frames and frames[modality] != frames[reference]:
                raise CaseError(
                    f"case {case}: {modality} {self._where(source)} and {reference} {self._where(sources[reference])} "
                    f"have different FrameOfReferenceUIDs ({frames[modality]} vs {frames[reference]}): they are not "
                    "aligned by the scanner. Set coregister: true to register them rigidly."
                )
            same_grid = image.shape[1:] == target.shape[1:] and np.allclose(image.affine, target.affine, atol=self.atol)
            source["resampled"] = not same_grid
            if not same_grid:
                image = self._resample(case, modality, source, image, target)
            stacked.append(image.as_tensor())
        sources[reference]["reference"] = True
        meta = {k: v for k, v in target.meta.items() if k != "affine"}
        return MetaTensor(torch.cat(stacked, dim=0), affine=target.affine, meta=meta)

    def _resample(self, case: str, modality: str, source: dict, image: MetaTensor, target: MetaTensor) -> torch.Tensor:
        resample = ResampleToMatch(mode="bilinear", padding_mode="zeros")
        coverage = resample(MetaTensor(torch.ones_like(image.as_tensor()), affine=image.affine), target, mode="nearest")
        covered = float(torch.as_tensor(coverage).mean())
        source["reference_grid_covered"] = round(covered, 4)
        if covered < self.min_overlap:
            raise CaseError(
                f"case {case}: {modality} {self._where(source)} covers only {covered:.0%} of the reference grid in "
                "patient coordinates: the modalities do not show the same region (different sessions or a wrong "
                "affine?)."
            )
        logger.info("case %s: %s resampled onto the reference grid (%.0f%% covered)", case, modality, 100 * covered)
        return MetaTensor(resample(image, target).as_tensor(), affine=target.affine)

    @staticmethod
    def _where(source: dict) -> str:
        if source.get("dicom_series") is not None:
            return source["dicom_series"].label
        return str(source.get("file") or source.get("folder"))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.keys:
            case = case_name(d, key)
            if key not in d and "study" in d:
                images, sources, unreadable = self._load_study(case, d)
                reference = self.reference_modality
            elif key not in d:
                if self.allow_missing_keys:
                    continue
                raise CaseError(f"case {case}: the datalist item has neither '{key}' nor 'study'.")
            else:
                paths = [str(p) for p in (d[key] if isinstance(d[key], (list, tuple)) else [d[key]])]
                if len(paths) == 1 and len(self.modalities) > 1:
                    d[key], record = self._load_stacked(case, key, paths[0])
                    if self.sources_key:
                        d[self.sources_key] = record
                    continue
                if len(paths) != len(self.modalities):
                    raise CaseError(
                        f"case {case}: expected {len(self.modalities)} modalities {list(self.modalities)} in '{key}' "
                        f"(one file each, or one file with {len(self.modalities)} channels), got {len(paths)}: {paths}."
                    )
                loaded = {m: self._load_file(case, m, p) for m, p in zip(self.modalities, paths)}
                unreadable = {}
                images, sources = {m: v[0] for m, v in loaded.items()}, {m: v[1] for m, v in loaded.items()}
                reference = self.reference_modality
            d[key] = self._onto_reference(case, images, sources, reference)
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


class BratsLabelsFromRegionsd(MapTransform):
    """Binary region channels (TC, WT, ET) → one BraTS label map: 1 necrotic core, 2 edema, ``et_label`` enhancing.

    The inverse of ``ConvertToMultiChannelBasedOnBratsClassesd``: ET → ``et_label`` (4 for BraTS 2018-2022, 3 for
    2023+), TC without ET → 1, WT without TC → 2. Output: one channel, uint8.
    """

    def __init__(self, keys: KeysCollection, et_label: int = 4, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        release_of(et_label)  # checks the value
        self.et_label = et_label

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            regions = d[key]
            if regions.shape[0] != len(REGIONS):
                raise ValueError(f"{key} must have {len(REGIONS)} channels ({', '.join(REGIONS)}), got "
                                 f"{regions.shape[0]}.")
            label = labels_from_regions(torch.as_tensor(regions), self.et_label).unsqueeze(0)
            if isinstance(regions, MetaTensor):
                label = MetaTensor(label, meta=dict(regions.meta), applied_operations=list(regions.applied_operations))
            d[key] = label
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
