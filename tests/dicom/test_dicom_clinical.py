"""The clinical DICOM path on real scanner series (../shared/data) and on synthetic studies made here: reading,
series selection, mixed grids, compressed transfer syntaxes, DICOM SEG geometry checked in world coordinates."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from monai_iunet.apps.brats.cases import CaseError
from monai_iunet.apps.brats.data.synthetic import make_case, write_pacs_study
from monai_iunet.apps.brats.labels import SERIES_RULES, seg_segments
from monai_iunet.apps.brats.transforms import LoadModalitiesd
from monai_iunet.dicom.geometry import volume_to_metatensor
from monai_iunet.dicom.seg import write_dicom_seg
from monai_iunet.dicom.selection import SelectionError, select_series
from monai_iunet.dicom.series import SeriesError, index_dicom_files, mask_patient_id, read_series_volume
from monai_iunet.dicom.synthetic import SeriesSpec, grid_affine, study_ids, write_series

from ..utils import DATA, REAL, assert_dicom_valid, needs_data, seg_centroid_ras, sphere

ROOT = Path(__file__).resolve().parents[2]
needs_dcmtk = pytest.mark.skipif(shutil.which("dcmcjpeg") is None and not os.environ.get("CI"),
                                 reason="dcmtk not installed (apt-get install dcmtk)")


@needs_data
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_series_are_one_volume_each_and_seg_is_valid_and_in_place(name, tmp_path):
    """Each real series reads as one volume; a sphere drawn at a known patient position on its grid comes back from
    the DICOM SEG (read by highdicom) at that position, and dciodvfy finds no error in the SEG."""
    (series,) = index_dicom_files(REAL[name])
    assert series.excluded is None and series.volumes == 1
    volume = volume_to_metatensor(read_series_volume(series), name)
    affine, shape = volume.affine.numpy(), volume.shape[1:]
    centre = affine[:3, :3] @ ((np.array(shape) - 1) * [0.5, 0.4, 0.6]) + affine[:3, 3]
    mask = sphere(affine, shape, centre, 15.0)
    output = write_dicom_seg(np.where(mask, 4, 0), affine, series, tmp_path / "seg.dcm", seg_segments(4))
    voxel = np.linalg.norm(affine[:3, :3], axis=0).max()
    assert np.linalg.norm(seg_centroid_ras(output) - centre) < voxel / 2
    seg = pydicom.dcmread(output)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series.uid
    assert seg.FrameOfReferenceUID == series.frame_of_reference
    assert_dicom_valid(output)


@needs_data
def test_enhanced_multiframe_matches_dcm2niix_in_world_coordinates():
    (series,) = index_dicom_files(REAL["siemens_enhanced"])
    assert series.multiframe and series.positions == 96
    ours = volume_to_metatensor(read_series_volume(series), "xa30")
    reference = nib.load(DATA / "dicom_ref" / "enhanced_siemens_xa30_t1w_tfl" / "5_anat-T1w_acq-tfl.nii")
    ref_data = np.asarray(reference.dataobj, dtype=np.float32)
    rng = np.random.default_rng(0)
    for index in rng.integers(0, ours.shape[1:], size=(50, 3)):
        world = ours.affine.numpy() @ np.append(index, 1.0)
        ref_index = np.linalg.inv(reference.affine) @ world
        np.testing.assert_allclose(ref_index[:3], np.rint(ref_index[:3]), atol=1e-3)  # same grid
        assert float(ours[0][tuple(index)]) == pytest.approx(float(ref_data[tuple(np.rint(ref_index[:3]).astype(int))]))


@needs_data
def test_ge_orientation_jitter_and_2d_gaps_are_read_with_the_right_spacing():
    (ge,) = index_dicom_files(REAL["ge_oblique"])
    orientations = {tuple(pydicom.dcmread(f, stop_before_pixels=True).ImageOrientationPatient) for f in ge.files}
    assert len(orientations) > 1 and ge.orientations == 1  # jitter in the last decimals is one orientation
    (sag,) = index_dicom_files(REAL["siemens_2d_gaps"])
    thickness = float(pydicom.dcmread(sag.files[0], stop_before_pixels=True).SliceThickness)
    assert thickness == pytest.approx(4.0) and sag.slice_spacing == pytest.approx(4.8, abs=1e-3)
    affine = volume_to_metatensor(read_series_volume(sag), "sag").affine.numpy()
    assert sorted(np.round(np.linalg.norm(affine[:3, :3], axis=0), 3)) == pytest.approx([1.016, 1.016, 4.8], abs=1e-3)


@pytest.mark.slow
@needs_data
@needs_dcmtk
@pytest.mark.parametrize("syntax", ["jpeg-lossless", "jpeg-ls", "rle", "jpeg2000", "big-endian"])
def test_compressed_and_big_endian_series_read_like_the_original(syntax, tmp_path):
    """The Siemens 2D series recompressed (dcmtk; JPEG 2000 lossless with pydicom + OpenJPEG): same voxels."""
    original = REAL["siemens_2d_gaps"]
    folder = tmp_path / syntax
    folder.mkdir()
    tools = {"jpeg-lossless": ["dcmcjpeg", "+e1"], "jpeg-ls": ["dcmcjpls", "+el"], "rle": ["dcmcrle"],
             "big-endian": ["dcmconv", "+tb"]}
    for file in sorted(original.iterdir()):
        if syntax == "jpeg2000":
            ds = pydicom.dcmread(file)
            ds.compress(pydicom.uid.JPEG2000Lossless)
            ds.save_as(folder / file.name)
        else:
            subprocess.run(tools[syntax] + [str(file), str(folder / file.name)], check=True, capture_output=True)
    (compressed,) = index_dicom_files(folder)
    assert pydicom.dcmread(compressed.files[0]).file_meta.TransferSyntaxUID != pydicom.uid.ExplicitVRLittleEndian
    expected = read_series_volume(index_dicom_files(original)[0])
    got = read_series_volume(compressed)
    np.testing.assert_array_equal(got.array, expected.array)
    np.testing.assert_allclose(got.affine, expected.affine)


@pytest.fixture(scope="module")
def case():
    return make_case(np.random.default_rng(3), shape=(24, 24, 24), spacing=8.0)


@pytest.fixture(scope="module")
def pacs_study(case, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pacs") / "STUDY1"
    uids = write_pacs_study(case.images, case.affine, folder, "P1", seed=1)
    (folder / "DICOMDIR_README.txt").write_text("not DICOM")
    return folder, uids


def test_pacs_study_picks_the_right_series_and_says_why(pacs_study):
    folder, uids = pacs_study
    assert not any("." in p.name for p in folder.iterdir() if p.suffix != ".txt")  # random names, no extensions
    series = index_dicom_files(folder)
    excluded = {s.description: s.excluded for s in series if s.excluded}
    assert "orientations" in excluded["3-PLANE LOC"]
    assert "2 volumes" in excluded["AX DWI B0 B1000"]
    assert "derived" in excluded["AX ADC"]
    chosen = select_series(series, SERIES_RULES)
    assert {m: c.series.uid for m, c in chosen.items()} == uids
    assert "ContrastBolusAgent 'Gadobutrol'" in chosen["t1ce"].reason
    assert "pre-contrast" in chosen["t1"].reason


def test_study_loads_on_the_reference_grid_and_records_sources(pacs_study, case):
    folder, uids = pacs_study
    data = LoadModalitiesd("image", sources_key="sources")({"study": str(folder), "case": "c1"})
    sources = data["sources"]
    assert sources["reference"] == "t1ce" and sources["reference_series"].uid == uids["t1ce"]
    reference = volume_to_metatensor(read_series_volume(sources["reference_series"]), "t1ce")
    assert data["image"].shape[1:] == reference.shape[1:]
    np.testing.assert_allclose(data["image"].affine.numpy(), reference.affine.numpy())
    modalities = sources["modalities"]
    assert not modalities["t1ce"]["resampled"] and all(modalities[m]["resampled"] for m in ("t1", "t2", "flair"))
    # every channel shows the same anatomy at the same place: compare with the source volume in world space
    source_to_voxel = np.linalg.inv(case.affine)
    for channel, modality in enumerate(("t1", "t1ce", "t2", "flair")):
        image = data["image"][channel].numpy()
        index = np.argwhere(image > 0)[:: 97][:40]
        world = index @ data["image"].affine.numpy()[:3, :3].T + data["image"].affine.numpy()[:3, 3]
        src = np.rint(world @ source_to_voxel[:3, :3].T + source_to_voxel[:3, 3]).astype(int)
        inside = np.all((src >= 0) & (src < 24), axis=1)
        corr = np.corrcoef(image[tuple(index[inside].T)], case.images[modality][tuple(src[inside].T)])[0, 1]
        assert corr > 0.7, (modality, corr)  # misplaced anatomy gives ~0


def test_missing_and_ambiguous_modalities_list_the_candidates(pacs_study, case, tmp_path):
    folder, uids = pacs_study
    series = index_dicom_files(folder)
    without_flair = [s for s in series if s.description != "COR T2 FLAIR"]
    with pytest.raises(SelectionError, match=r"(?s)no series for flair.*'AX T2 FSE'.*'AX DWI B0 B1000'.*2 volumes"):
        select_series(without_flair, SERIES_RULES)
    # what to do is the front end's own way: the datalist by default, another where the caller has another
    with pytest.raises(SelectionError, match=r'Pin one with "series": \{"flair": .* in the datalist item'):
        select_series(without_flair, SERIES_RULES)
    with pytest.raises(SelectionError, match="send a FLAIR for flair, or adjust series_rules"):
        select_series(without_flair, SERIES_RULES, how_to_pin="send a FLAIR for {modality}")
    twin = shutil.copytree(folder, tmp_path / "twin")
    spec = SeriesSpec("AX T1 +C", case.images["t1ce"], case.affine, "3D", contrast_agent="Gadobutrol")
    write_series(spec, twin, study_ids("P1"), 20, lambda k: f"x{k}")
    data = LoadModalitiesd("image", sources_key="s")({"study": str(twin)})
    assert data["s"]["modalities"]["t1ce"]["series_instance_uid"] == uids["t1ce"]  # 3 mm slices beat 8 mm
    assert "preferred (3D, then thinner slices) over #20 'AX T1 +C'" in data["s"]["modalities"]["t1ce"]["why"]
    data = LoadModalitiesd("image", sources_key="s")({"study": str(twin), "series": {"t1ce": "20"}})
    assert data["s"]["modalities"]["t1ce"]["why"] == "pinned by the datalist"


def test_ambiguous_t1ce_is_an_error(case, tmp_path):
    study = study_ids("P2")
    axes = np.eye(3)
    for number, description in ((1, "AX T1 POST GAD"), (2, "T1 +C AXIAL")):
        affine = grid_affine(axes, (8.0, 8.0, 8.0), (0, 0, 0), (24, 24, 24))
        write_series(SeriesSpec(description, case.images["t1ce"], affine, "3D"), tmp_path, study, number,
                     lambda k, n=number: f"s{n}_{k}")
    for number, (description, modality) in enumerate((("SAG T1 MPRAGE", "t1"), ("AX T2 FSE", "t2"),
                                                     ("COR T2 FLAIR", "flair")), start=3):
        write_series(SeriesSpec(description, case.images[modality], case.affine, "3D"), tmp_path, study, number,
                     lambda k, n=number: f"s{n}_{k}")
    ambiguous = r"(?s)case amb: .*t1ce is ambiguous: 2 series.*'AX T1 POST GAD'.*'T1 \+C AXIAL'"
    with pytest.raises(CaseError, match=ambiguous):
        LoadModalitiesd("image")({"study": str(tmp_path), "case": "amb"})


def test_multi_volume_series_given_as_a_modality_is_named(pacs_study, case, tmp_path):
    dwi = tmp_path / "dwi"
    spec = SeriesSpec("ep2d_diff_3scan_trace", np.stack([case.images["t2"]] * 3, -1), case.affine, "2D")
    write_series(spec, dwi, study_ids("P3"), 7)
    others = []
    for modality in ("t1ce", "t2", "flair"):
        others.append(str(tmp_path / modality))
        write_series(SeriesSpec(modality, case.images[modality], case.affine), tmp_path / modality, study_ids("P3"), 8)
    with pytest.raises(CaseError, match=r"(?s)case dti: t1 DICOM folder .*dwi holds 0 usable volume series.*"
                                        r"'ep2d_diff_3scan_trace'.*72 images at 24 slice positions \(3 volumes"):
        LoadModalitiesd("image")({"image": [str(dwi)] + others, "case": "dti"})


def test_frames_of_reference_must_match_unless_coregistered(case, tmp_path):
    """A FLAIR from another frame of reference, shifted 6 mm: an error without co-registration; with it, elastix
    recovers the shift and the FLAIR lands where the T1ce is."""
    study = study_ids("P4")
    shifted = case.affine.copy()
    shifted[:3, 3] += [6.0, -4.0, 0.0]  # the patient moved: same anatomy, other scanner coordinates
    folders = []
    for number, modality in enumerate(("t1", "t1ce", "t2", "flair"), start=1):
        moved = modality == "flair"
        spec = SeriesSpec(modality.upper(), case.images[modality], shifted if moved else case.affine,
                          frame_of_reference=pydicom.uid.generate_uid() if moved else None)
        folders.append(str(tmp_path / modality))
        write_series(spec, tmp_path / modality, study, number)
    with pytest.raises(CaseError, match="different FrameOfReferenceUIDs.*coregister: true"):
        LoadModalitiesd("image")({"image": folders, "case": "moved"})
    data = LoadModalitiesd("image", coregister=True, sources_key="s")({"image": folders, "case": "moved"})
    registration = data["s"]["modalities"]["flair"]["registration"]
    assert registration["translation_mm"] == pytest.approx(np.hypot(6.0, 4.0), abs=1.0)
    assert registration["final_metric_value"] is not None
    aligned = data["image"][3].numpy()
    flair = volume_to_metatensor(read_series_volume(index_dicom_files(tmp_path / "flair")[0]), "f")
    assert np.abs(aligned - np.asarray(flair[0])).mean() < 0.1 * np.abs(np.asarray(flair[0])).mean()


def test_signed_12_bit_series_and_empty_study_sequences_give_a_valid_seg(case, tmp_path):
    """Signed 12-bit pixels read back to the written values; an empty ProcedureCodeSequence in the source (as
    Philips writes it) does not end up in the SEG, which dciodvfy accepts."""
    oblique = np.linalg.qr(np.random.default_rng(5).normal(size=(3, 3)))[0]
    affine = grid_affine(oblique, (2.0, 2.5, 6.0), (10.0, -20.0, 15.0), (40, 32, 12))
    values = sphere(affine, (40, 32, 12), (10.0, -20.0, 15.0), 12.0) * 900.0 - 300.0
    spec = SeriesSpec("t1 oblique", values, affine, "2D", slice_thickness=4.0, signed=True, bits_stored=12,
                      extra={"ProcedureCodeSequence": pydicom.Sequence()})
    write_series(spec, tmp_path / "series", study_ids("P5"), 3)
    (series,) = index_dicom_files(tmp_path / "series")
    volume = volume_to_metatensor(read_series_volume(series), "s")
    assert float(volume.min()) == pytest.approx(-300.0, rel=1e-3) and float(volume.max()) == pytest.approx(600.0,
                                                                                                          rel=1e-3)
    output = write_dicom_seg(np.where(values > 0, 1, 0), affine, series, tmp_path / "seg.dcm", seg_segments(4))
    assert "ProcedureCodeSequence" not in pydicom.dcmread(output)
    assert np.linalg.norm(seg_centroid_ras(output) - [10.0, -20.0, 15.0]) < 1.0
    assert_dicom_valid(output)


def test_seg_refuses_a_label_map_on_another_grid(case, tmp_path):
    write_series(SeriesSpec("T1", case.images["t1"], case.affine), tmp_path / "t1", study_ids("P6"), 1)
    (series,) = index_dicom_files(tmp_path / "t1")
    with pytest.raises(ValueError, match=r"label map \(\[12, 12, 12\] voxels\) is not on the source series' grid"):
        write_dicom_seg(np.ones((12, 12, 12), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]), series, tmp_path / "x.dcm",
                        seg_segments(4))
    shifted = case.affine.copy()
    shifted[:3, 3] += 4.0  # half a voxel off the lattice
    with pytest.raises(ValueError, match="not on the source series' grid"):
        write_dicom_seg(case.label, shifted, series, tmp_path / "x.dcm", seg_segments(4))
    reversed_first_axis = np.array([[-1, 0, 0, 23], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], float)
    # the same grid with the first axis reversed is fine
    write_dicom_seg(case.label[::-1], case.affine @ reversed_first_axis, series, tmp_path / "ok.dcm", seg_segments(4))


@pytest.mark.parametrize("description, expected", [
    ("SAG T1 MPRAGE", "t1"), ("AX T1 POST GAD", "t1ce"), ("T1 +C", "t1ce"), ("AX T2 FSE", "t2"),
    ("COR T2 FLAIR", "flair"), ("t2_tirm_tra_dark-fluid", "flair"), ("t1_mprage_sag_p2_iso", "t1"),
    ("T1W_3D_TFE post", "t1ce"), ("AX T2* GRE", None), ("ep2d_diff_3scan_trace", None), ("AX T1 pre", "t1"),
])
def test_default_rules_on_common_vendor_names(description, expected):
    from monai_iunet.dicom.selection import _matches
    from monai_iunet.dicom.series import DicomSeries

    series = DicomSeries(uid="1", files=[], description=description)
    matched = [m for m, rule in SERIES_RULES.items() if _matches(rule, series)]
    assert matched == ([expected] if expected else [])


def test_metatensor_of_a_series_feeds_monai_orientation(case, tmp_path):
    from monai.transforms import Orientation

    write_series(SeriesSpec("T1", case.images["t1"], case.affine), tmp_path / "t1", study_ids("P7"), 1)
    image = volume_to_metatensor(read_series_volume(index_dicom_files(tmp_path / "t1")[0]), "t1")
    ras = Orientation(axcodes="RAS", labels=None)(image)
    flipped = np.asarray(case.images["t1"])[::-1, ::-1, :]  # case.affine is LAS-like (-x, -y): RAS flips both
    np.testing.assert_allclose(np.asarray(ras[0]), flipped, atol=float(flipped.max()) / 4000)
    assert torch.is_tensor(ras)


@needs_data
def test_enhanced_multiframe_with_several_volumes_is_refused_with_its_volume_count(tmp_path):
    """Like a Canon multi-frame DTI (positions × volumes in one file): the real XA30 file with every frame twice."""
    import copy

    ds = pydicom.dcmread(next(REAL["siemens_enhanced"].iterdir()))
    frames = ds.PerFrameFunctionalGroupsSequence
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence([copy.deepcopy(f) for f in frames] * 2)
    ds.NumberOfFrames = 2 * int(ds.NumberOfFrames)
    ds.PixelData = ds.PixelData * 2
    (tmp_path / "dti").mkdir()
    ds.save_as(tmp_path / "dti" / "IM0001")
    (series,) = index_dicom_files(tmp_path / "dti")
    assert series.excluded.startswith("multi-volume series: 192 images at 96 slice positions (2 volumes")
    with pytest.raises(CaseError, match=r"(?s)case dti: t1 DICOM folder .*dti holds 0 usable volume series.*2 volumes"):
        LoadModalitiesd("image")({"image": [str(tmp_path / "dti")] * 4, "case": "dti"})


@needs_data
def test_a_folder_with_two_patients_is_refused_listing_both_and_one_can_be_chosen(tmp_path):
    """Real series of two different subjects (GE and Siemens exports) in one folder, as a CD with a second patient."""
    folder = tmp_path / "EXPORT"
    for name in ("ge_oblique", "siemens_2d_gaps"):
        shutil.copytree(REAL[name], folder / name)
    ge, sag = (index_dicom_files(REAL[n])[0] for n in ("ge_oblique", "siemens_2d_gaps"))
    loader = LoadModalitiesd("image")
    with pytest.raises(CaseError, match=r"study folder .*: 2 studies of 2 patient\(s\)") as error:
        loader({"study": str(folder), "case": "cd"})
    message = str(error.value)
    for series in (ge, sag):
        assert series.study_uid in message
        assert series.patient_id not in message and mask_patient_id(series.patient_id) in message
    assert '"study_uid"' in message and "--study" in message
    # the chosen study's own series only: the selection then fails on the modalities it lacks, naming only GE's series
    with pytest.raises(CaseError, match="no series for") as error:
        loader({"study": str(folder), "case": "cd", "study_uid": ge.study_uid})
    assert f"'{ge.description}'" in str(error.value) and f"'{sag.description}'" not in str(error.value)
    with pytest.raises(CaseError, match="no StudyInstanceUID 1.2.3"):
        loader({"study": str(folder), "case": "cd", "study_uid": "1.2.3"})


@needs_data
@pytest.mark.parametrize("coregister", [False, True])
def test_series_folders_of_two_patients_are_never_joined(tmp_path, coregister):
    """Four series folders given as one case, from two subjects: refused before any resampling or registration."""
    folders = [REAL["ge_oblique"], REAL["ge_oblique"], REAL["siemens_2d_gaps"], REAL["ge_oblique"]]
    with pytest.raises(CaseError, match="its DICOM series: 2 studies of 2 patient"):
        LoadModalitiesd("image", coregister=coregister)({"image": [str(f) for f in folders], "case": "mixed"})


def _slice_order(series_files):
    """The files of a single-frame series in slice order (along the slice normal)."""
    def along(path):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        row, col = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
        return float(np.cross(row, col) @ np.array(ds.ImagePositionPatient, float))
    return sorted(series_files, key=along)


@needs_data
def test_truncated_and_lost_slices_are_never_dropped_quietly(tmp_path):
    """The real GE series with one file cut short, with one slice missing, and with a truncated header."""
    files = _slice_order(sorted(REAL["ge_oblique"].iterdir()))
    truncated = tmp_path / "truncated"
    shutil.copytree(REAL["ge_oblique"], truncated)
    victim = truncated / files[60].name
    victim.write_bytes(victim.read_bytes()[:100_000])
    (series,) = index_dicom_files(truncated)
    assert series.excluded and files[60].name in series.excluded and "truncated" in series.excluded
    assert series.summary()["unreadable_files"] == series.unreadable and len(series.unreadable) == 1
    with pytest.raises(CaseError, match=rf"(?s)t1 DICOM folder .*{files[60].name}: truncated"):
        LoadModalitiesd("image")({"image": [str(truncated)] + [str(REAL["ge_oblique"])] * 3, "case": "c"})

    lost = tmp_path / "lost"
    shutil.copytree(REAL["ge_oblique"], lost)
    (lost / files[60].name).unlink()
    (series,) = index_dicom_files(lost)
    assert series.excluded.startswith("slices missing (spacing 1.20 mm)")
    assert f"between {files[59].name} and {files[61].name} (~1 slice(s) missing)" in series.excluded

    header = tmp_path / "header"
    shutil.copytree(REAL["ge_oblique"], header)
    (header / files[10].name).write_bytes((header / files[10].name).read_bytes()[:600])
    with pytest.raises(SeriesError, match=rf"{files[10].name} has no SeriesInstanceUID"):
        index_dicom_files(header)
