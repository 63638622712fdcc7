"""DICOM series as a clinical pipeline meets them: index a study folder, tell image volumes from everything else, read
a series as a volume with highdicom's geometry, and hand it to MONAI as a ``MetaTensor``.

A study folder is whatever a PACS or CD export leaves: any nesting, any file names, no extensions, a DICOMDIR or not,
every series mixed together. Files are grouped by SeriesInstanceUID. A series is a *volume candidate* only if it is
one regularly sampled 3D volume of original images: non-image objects (SR, SEG, PR, …), localizers (ImageType
LOCALIZER or more than one slice orientation), derived or secondary images, series with too few slices and
multi-volume series (diffusion, perfusion, repeated positions) are indexed with the reason they are not candidates.
Single-frame and enhanced multi-frame series are both read through highdicom, which sorts the slices and checks their
spacing; orientation jitter in the last decimals (GE) is tolerated up to ``ORIENTATION_TOLERANCE``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

__all__ = [
    "DicomSeries",
    "describe_candidates",
    "describe_studies",
    "group_by_study",
    "one_study",
    "mask_patient_id",
    "SeriesError",
    "index_dicom_files",
    "read_series_volume",
    "ORIENTATION_TOLERANCE",
]

logger = logging.getLogger(__name__)

# 1 - cos(angle) between slice orientations that still count as one orientation: 1e-6 is 0.08°, far above the
# rounding jitter scanners write (GE: 10th decimal) and far below a real change of plane.
ORIENTATION_TOLERANCE = 1e-6
# Positions closer than this (mm) along the slice normal are the same slice position (another volume, echo, b-value).
POSITION_TOLERANCE = 0.01
NON_IMAGE_MODALITIES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTDOSE", "REG", "DOC", "OT"}
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


class SeriesError(ValueError):
    """A DICOM series that cannot be used as a volume; the message names the series."""


@dataclass
class DicomSeries:
    """One series of a study folder: what it is, where its files are and, if it is not a volume candidate, why."""

    uid: str
    files: list[Path]
    modality: str = ""
    number: int | None = None
    description: str = ""
    protocol: str = ""
    sequence: str = ""
    image_type: tuple[str, ...] = ()
    contrast_agent: str = ""
    acquisition_type: str = ""  # MRAcquisitionType: 2D or 3D
    frame_of_reference: str = ""
    patient_id: str = ""
    study_uid: str = ""
    study_date: str = ""
    study_description: str = ""
    rows: int = 0
    columns: int = 0
    pixel_spacing: tuple[float, float] = (0.0, 0.0)
    slice_spacing: float = 0.0
    positions: int = 0  # distinct slice positions
    volumes: int = 0  # images per position
    orientations: int = 0
    multiframe: bool = False
    excluded: str | None = None  # why this series is not a volume candidate
    unreadable: list[str] = field(default_factory=list)  # "file: why" for files of this series that cannot be used

    @property
    def label(self) -> str:
        """How messages name the series."""
        number = f"#{self.number} " if self.number is not None else ""
        return f"series {number}'{self.description or self.protocol or '?'}' ({self.uid})"

    @property
    def text(self) -> str:
        """The free-text fields series rules match against."""
        return " ".join(dict.fromkeys(t for t in (self.description, self.protocol, self.sequence) if t))

    def summary(self) -> dict:
        """What the inference report says about the series."""
        return {
            "series_instance_uid": self.uid,
            "series_number": self.number,
            "description": self.description,
            "protocol": self.protocol,
            "acquisition": self.acquisition_type or None,
            "grid": {
                "slices": self.positions,
                "rows": self.rows,
                "columns": self.columns,
                "spacing_mm": [round(float(s), 4) for s in (*self.pixel_spacing, self.slice_spacing)],
            },
            "files": len(self.files),
            **({"unreadable_files": list(self.unreadable)} if self.unreadable else {}),
        }


def _frame_geometry(ds: pydicom.Dataset) -> tuple[list[np.ndarray], list[np.ndarray], tuple[float, float]]:
    """Per image (frame) position and orientation, and the pixel spacing, for single- and multi-frame datasets."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else pydicom.Dataset()

        def item(frame: pydicom.Dataset, name: str) -> pydicom.Dataset:
            return (frame if name in frame else shared)[name][0]

        frames = ds.PerFrameFunctionalGroupsSequence
        positions = [np.asarray(item(f, "PlanePositionSequence").ImagePositionPatient, float) for f in frames]
        orientations = [np.asarray(item(f, "PlaneOrientationSequence").ImageOrientationPatient, float) for f in frames]
        spacing = item(frames[0], "PixelMeasuresSequence").PixelSpacing
    else:
        positions = [np.asarray(ds.ImagePositionPatient, float)]
        orientations = [np.asarray(ds.ImageOrientationPatient, float)]
        spacing = ds.PixelSpacing
    return positions, orientations, (float(spacing[0]), float(spacing[1]))


def _orientation_groups(orientations: list[np.ndarray]) -> list[np.ndarray]:
    groups: list[np.ndarray] = []
    for o in orientations:
        if not any(o[:3] @ g[:3] >= 1 - ORIENTATION_TOLERANCE and o[3:] @ g[3:] >= 1 - ORIENTATION_TOLERANCE
                   for g in groups):
            groups.append(o)
    return groups


def _truncated(path: Path, ds: pydicom.Dataset) -> str | None:
    """Why the file's (uncompressed) pixel data is cut short, if it is: its element ends beyond the end of the file."""
    raw = ds.get_item("PixelData", keep_deferred=True) if "PixelData" in ds else None
    tell = getattr(raw, "value_tell", None)
    length = getattr(raw, "length", 0xFFFFFFFF)
    if tell is None or length == 0xFFFFFFFF:  # read already, or encapsulated (compressed): checked when decoded
        return None
    size = path.stat().st_size
    return f"truncated: pixel data needs {length} bytes from byte {tell}, the file ends at {size}" \
        if tell + length > size else None


def _missing_slices(along: np.ndarray, files: list[Path]) -> str | None:
    """Where a series of single-frame files skips slice positions: a gap over 1.5 median spacings."""
    if len(along) < 3:
        return None
    order = np.argsort(along)
    steps = np.diff(along[order])
    spacing = float(np.median(steps))
    gaps = np.flatnonzero(steps > 1.5 * spacing)
    if spacing <= POSITION_TOLERANCE or not len(gaps):
        return None
    where = "; ".join(
        f"{along[order][i]:.2f} → {along[order][i + 1]:.2f} mm between {files[order[i]].name} and "
        f"{files[order[i + 1]].name} (~{round(steps[i] / spacing) - 1} slice(s) missing)" for i in gaps[:5])
    return f"slices missing (spacing {spacing:.2f} mm): {where}"


def _summarise(uid: str, entries: list[tuple[Path, pydicom.Dataset]], min_slices: int,
               unreadable: list[str]) -> DicomSeries:
    entries = sorted(entries, key=lambda entry: entry[0])
    files = [path for path, _ in entries]
    first = entries[0][1]
    series = DicomSeries(
        uid=uid,
        files=files,
        modality=str(first.get("Modality", "")),
        number=int(first.SeriesNumber) if first.get("SeriesNumber") not in (None, "") else None,
        description=str(first.get("SeriesDescription", "")),
        protocol=str(first.get("ProtocolName", "")),
        sequence=str(first.get("SequenceName", first.get("PulseSequenceName", ""))),
        image_type=tuple(str(v).upper() for v in (first.get("ImageType") or ())),
        contrast_agent=str(first.get("ContrastBolusAgent", "") or ""),
        acquisition_type=str(first.get("MRAcquisitionType", "") or ""),
        frame_of_reference=str(first.get("FrameOfReferenceUID", "")),
        patient_id=str(first.get("PatientID", "") or ""),
        study_uid=str(first.get("StudyInstanceUID", "") or ""),
        study_date=str(first.get("StudyDate", "") or ""),
        study_description=str(first.get("StudyDescription", "") or ""),
        rows=int(first.get("Rows", 0) or 0),
        columns=int(first.get("Columns", 0) or 0),
        multiframe=int(first.get("NumberOfFrames", 1) or 1) > 1,
        unreadable=list(unreadable),
    )
    if series.unreadable:
        series.excluded = f"{len(series.unreadable)} unreadable file(s): " + "; ".join(series.unreadable[:5])
        return series
    if series.modality in NON_IMAGE_MODALITIES or not all("PixelData" in ds or "FloatPixelData" in ds
                                                           for _, ds in entries):
        series.excluded = f"not an image series (Modality {series.modality or '?'})"
        return series
    try:
        geometry = [_frame_geometry(ds) for _, ds in entries]
    except (AttributeError, KeyError, IndexError, TypeError) as error:
        series.excluded = f"no patient geometry (ImagePositionPatient/ImageOrientationPatient): {error}"
        return series
    positions = [p for g in geometry for p in g[0]]
    orientations = [o for g in geometry for o in g[1]]
    series.pixel_spacing = geometry[0][2]
    groups = _orientation_groups(orientations)
    series.orientations = len(groups)
    normal = np.cross(groups[0][:3], groups[0][3:])
    along = np.sort(np.array([p @ normal for p in positions]))
    distinct = along[np.concatenate([[True], np.diff(along) > POSITION_TOLERANCE])]
    series.positions = len(distinct)
    series.volumes = len(positions) // max(series.positions, 1)
    series.slice_spacing = float(np.median(np.diff(distinct))) if len(distinct) > 1 else 0.0
    if any(t in series.image_type for t in ("LOCALIZER", "SCOUT")):
        series.excluded = "localizer (ImageType LOCALIZER)"
    elif len(groups) > 1:
        series.excluded = f"localizer or mixed planes: slices in {len(groups)} orientations"
    elif series.image_type[:1] == ("DERIVED",) or "SECONDARY" in series.image_type[1:2]:
        series.excluded = "derived or secondary images (ImageType " + "\\".join(series.image_type) + ")"
    elif len(positions) != series.positions:
        series.excluded = (
            f"multi-volume series: {len(positions)} images at {series.positions} slice positions "
            f"({len(positions) / series.positions:g} volumes, e.g. diffusion, perfusion or repeated slices)"
        )
    elif series.positions < min_slices:
        series.excluded = f"only {series.positions} slice(s) (a volume needs at least {min_slices})"
    elif not series.multiframe and (missing := _missing_slices(np.array([p @ normal for p in positions]), files)):
        series.excluded = missing
    return series


def index_dicom_files(folder: str | Path, min_slices: int = 8) -> list[DicomSeries]:
    """Every DICOM series under ``folder`` (recursively, any file names), grouped by SeriesInstanceUID, sorted by
    series number. Files that are not DICOM and DICOMDIR files are skipped; non-candidates carry ``excluded``.
    Nothing is dropped quietly: a file of a series that cannot be used (truncated pixel data) is listed in the
    series' ``unreadable`` and excludes it, as does a gap in its slice positions (naming the files around it).

    Raises:
        SeriesError: the folder does not exist or holds no DICOM file, or a DICOM file in it cannot be read far
            enough to tell its series (a truncated header): it might be a slice of any series.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SeriesError(f"DICOM folder {folder} does not exist or is not a folder.")
    by_series: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    unreadable: dict[str, list[str]] = {}
    skipped = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=False, defer_size="1 KB")
        except InvalidDicomError:  # not a DICOM file (no preamble): a README, a viewer's files
            skipped += 1
            continue
        except (OSError, EOFError, ValueError) as error:
            raise SeriesError(f"DICOM file {path} cannot be read ({type(error).__name__}: {error}); it may belong "
                              "to any series of the study: re-export it or remove it.") from error
        sop_class = str(getattr(ds.get("file_meta", pydicom.Dataset()), "MediaStorageSOPClassUID", ""))
        if sop_class == DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            skipped += 1
            continue
        if "SeriesInstanceUID" not in ds:
            raise SeriesError(f"DICOM file {path} has no SeriesInstanceUID (a truncated header?); it may belong to "
                              "any series of the study: re-export it or remove it.")
        uid = str(ds.SeriesInstanceUID)
        if truncated := _truncated(path, ds):
            unreadable.setdefault(uid, []).append(f"{path.name}: {truncated}")
            logger.warning("%s: %s", path, truncated)
        by_series.setdefault(uid, []).append((path, ds))
    if not by_series:
        raise SeriesError(f"DICOM folder {folder} holds no DICOM files ({skipped} other file(s) skipped).")
    if skipped:
        logger.info("%s: skipped %d file(s) that are not DICOM image objects", folder, skipped)
    series = [_summarise(uid, entries, min_slices, unreadable.get(uid, [])) for uid, entries in by_series.items()]
    return sorted(series, key=lambda s: (s.number if s.number is not None else 1 << 30, s.uid))


def mask_patient_id(patient_id: str) -> str:
    """A patient ID shortened for messages and logs: enough to tell two apart, not enough to identify anyone."""
    return "(none)" if not patient_id else patient_id[:2] + "…" if len(patient_id) > 2 else patient_id[:1] + "…"


def group_by_study(series: list[DicomSeries]) -> dict[tuple[str, str], list[DicomSeries]]:
    """The series by (PatientID, StudyInstanceUID): a case is one study of one patient."""
    groups: dict[tuple[str, str], list[DicomSeries]] = {}
    for s in series:
        groups.setdefault((s.patient_id, s.study_uid), []).append(s)
    return groups


def one_study(series: list[DicomSeries], study_uid: str | None = None, where: str = "the series") -> list[DicomSeries]:
    """The series of the one study of one patient among ``series`` (or of the study ``study_uid``); a
    ``SeriesError`` listing the studies when there are several (series of different patients or studies are never
    joined) or when ``study_uid`` is not among them. ``where`` names the series in the message (e.g. a folder)."""
    groups = group_by_study(series)
    if study_uid:
        chosen = {key: members for key, members in groups.items() if key[1] == str(study_uid)}
        if not chosen:
            raise SeriesError(f"{where}: no StudyInstanceUID {study_uid} among:\n{describe_studies(groups)}")
        groups = chosen
    if len(groups) > 1:
        patients = len({patient for patient, _ in groups})
        raise SeriesError(f"{where}: {len(groups)} studies of {patients} patient(s), expected one study of one "
                          f"patient:\n{describe_studies(groups)}")
    return next(iter(groups.values()), [])


def describe_studies(groups: dict[tuple[str, str], list[DicomSeries]]) -> str:
    """One line per study for messages: StudyInstanceUID, masked patient ID, date, description, series."""
    return "\n".join(
        f"  StudyInstanceUID {study}: patient ID {mask_patient_id(patient)}, date {members[0].study_date or '?'}, "
        f"'{members[0].study_description}', {len(members)} series ("
        + ", ".join(f"#{m.number} '{m.description}'" for m in members[:6]) + ("…" if len(members) > 6 else "") + ")"
        for (patient, study), members in groups.items()
    )


def read_series_volume(series: DicomSeries):
    """The series as a ``highdicom.Volume`` (stored values through the modality transform, float32), slices sorted
    and checked for regular spacing by highdicom.

    Raises:
        SeriesError: naming the series: not a volume candidate (e.g. multi-volume), irregular spacing, undecodable
            pixel data (a compressed transfer syntax without its decoder, a truncated file).
    """
    import highdicom as hd

    if series.excluded:
        raise SeriesError(f"{series.label} cannot be used as a volume: {series.excluded}.")
    try:
        if series.multiframe:
            if len(series.files) != 1:
                raise SeriesError(f"{series.label} has {len(series.files)} multi-frame files; expected one.")
            volume = hd.imread(str(series.files[0])).get_volume(dtype=np.float32)
        else:
            datasets = [pydicom.dcmread(f) for f in series.files]
            volume = hd.get_volume_from_series(
                datasets, dtype=np.float32, orientation_tol=ORIENTATION_TOLERANCE,
                apply_real_world_transform=False,
            )
    except SeriesError:
        raise
    except Exception as error:  # highdicom and the pixel decoders raise many types; name the series whatever they say
        raise SeriesError(
            f"cannot read {series.label} from {series.files[0].parent} as a volume ({type(error).__name__}: {error})"
        ) from error
    return volume


def describe_candidates(series: list[DicomSeries]) -> str:
    """One line per series: number, description, grid and, for non-candidates, why."""
    lines = []
    for s in series:
        grid = f"{s.positions}×{s.rows}×{s.columns}" if s.positions else f"{s.rows}×{s.columns}"
        reason = f" — not a candidate: {s.excluded}" if s.excluded else ""
        lines.append(f"  #{s.number} '{s.description}' [{s.modality}, {s.acquisition_type or '?'}, {grid}]{reason}")
    return "\n".join(lines)
