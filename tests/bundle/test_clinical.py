"""The bundle's inference on clinical DICOM: a known object at a known patient position through the whole
``inference.json`` pipeline, real scanner series, and the one-command ``python -m monai_iunet.apps.brats.segment``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest

from monai_iunet.apps.brats.data.synthetic import make_case, write_pacs_study
from monai_iunet.dicom.geometry import volume_to_metatensor
from monai_iunet.dicom.series import index_dicom_files, read_series_volume

from ..utils import (
    CENTRE,
    RADIUS,
    REAL,
    assert_dicom_valid,
    bundle_runner,
    centroid_ras,
    needs_data,
    seg_centroid_ras,
    sphere,
    tiny_network_config,
)
from .conftest import TINY, check, run_bundle, write_json

pytestmark = pytest.mark.slow  # runs the bundle and the segment command (make test-fast skips it)

SEGMENT = [sys.executable, "-m", "monai_iunet.apps.brats.segment"]  # the monai-iunet-segment command


def test_known_sphere_lands_at_its_patient_position_in_nifti_and_seg(sphere_study, tmp_path):
    report = bundle_runner(sphere_study, "sphere", tmp_path).run()
    case = report["cases"]["sphere"]
    assert case["status"] == "ok" and case["inputs"]["t1ce"]["description"] == "AX T1 POST GAD"
    (t1ce,) = [s for s in index_dicom_files(sphere_study) if s.description == "AX T1 POST GAD"]
    reference = volume_to_metatensor(read_series_volume(t1ce), "t1ce")
    nifti = nib.load(tmp_path / "sphere_seg.nii.gz")
    assert nifti.shape == tuple(reference.shape[1:])  # the reference series' own grid
    np.testing.assert_allclose(nifti.affine, reference.affine.numpy(), atol=1e-3)
    label = np.asarray(nifti.dataobj)
    assert set(np.unique(label)) == {0, 4}
    voxel = np.linalg.norm(nifti.affine[:3, :3], axis=0)  # 1.6, 2.0, 5.0 mm
    assert np.all(np.abs(centroid_ras(label > 0, nifti.affine) - CENTRE) < voxel)
    expected = sphere(nifti.affine, nifti.shape, CENTRE, RADIUS)
    assert (expected == (label > 0)).mean() > 0.98
    seg = tmp_path / "sphere_seg.dcm"
    assert np.all(np.abs(seg_centroid_ras(seg) - CENTRE) < voxel)
    assert_dicom_valid(seg)


@needs_data
def test_raw_heads_are_skull_stripped_and_the_mask_written_on_the_reference_grid(tmp_path):
    """A real raw head (each of its series as all four modalities) with skull_strip auto: deepbet runs, the report
    says what it did, the mask lands next to the outputs on the series' grid; the QA phantom in the same batch is
    refused with the reason and does not stop the others."""
    cases = [{"image": [str(REAL[name])] * 4, "case": name} for name in ("siemens_enhanced", "ge_oblique")]
    runner = bundle_runner(None, "", tmp_path, cases, skull_strip="auto", write_brain_mask=True)
    with pytest.raises(RuntimeError, match="1 of 2 case"):
        runner.run()
    report = json.loads((tmp_path / "inference_report.json").read_text())
    head, phantom = report["cases"]["siemens_enhanced"], report["cases"]["ge_oblique"]
    assert head["status"] == "ok" and phantom["status"] == "failed"
    assert "brain extraction on t1ce gave a mask darker" in phantom["error"] and "skull_strip" in phantom["error"]
    extraction = head["brain_extraction"]
    assert extraction["applied"] and extraction["tool"] == "deepbet" and extraction["modality"] == "t1ce"
    assert 1100 < extraction["brain_ml"] < 1900 and extraction["seconds"] > 0
    (series,) = index_dicom_files(REAL["siemens_enhanced"])
    grid = volume_to_metatensor(read_series_volume(series), "t1ce")
    mask_file = Path(head["outputs"]["brain_mask"]["path"])
    assert mask_file.name == "siemens_enhanced_brain_mask.nii.gz" and mask_file.parent == tmp_path
    mask, label = nib.load(mask_file), nib.load(head["outputs"]["nifti"]["path"])
    np.testing.assert_allclose(mask.affine, grid.affine.numpy(), atol=1e-3)
    np.testing.assert_allclose(label.affine, grid.affine.numpy(), atol=1e-3)
    inside = np.asarray(mask.dataobj) > 0
    voxel_ml = abs(np.linalg.det(mask.affine[:3, :3])) / 1000
    assert inside.sum() * voxel_ml == pytest.approx(extraction["brain_ml"], rel=1e-3)
    assert not np.asarray(label.dataobj)[~inside].any()  # the network saw nothing outside the brain
    assert_dicom_valid(Path(head["outputs"]["dicom_seg"]["path"]))


def test_brain_mask_output_is_skipped_with_the_reason_when_nothing_was_stripped(sphere_study, tmp_path):
    report = bundle_runner(sphere_study, "sphere", tmp_path, write_brain_mask=True).run()
    case = report["cases"]["sphere"]
    assert case["brain_extraction"]["applied"] is False
    assert case["outputs"]["brain_mask"] == {"status": "skipped",
                                             "reason": "no brain extraction ran: skull_strip: false"}


def test_output_names_keep_dotted_and_unicode_case_names_and_never_collide(sphere_study, tmp_path):
    """PACS exports name cases by UID: SaveImage would cut '.55' off as an extension. Equal names get a suffix."""
    names = ["1.2.840.113619.2.55", "Doe.J", "Müller-Lüdenscheidt", "Doe.J"]
    runner = bundle_runner(sphere_study, "", tmp_path, [{"study": str(sphere_study), "case": n} for n in names])
    report = runner.run()
    assert list(report["cases"]) == ["1.2.840.113619.2.55", "Doe.J", "Müller-Lüdenscheidt", "Doe.J_2"]
    assert report["cases"]["Doe.J_2"]["given_name"] == "Doe.J"
    written = {p.name for p in tmp_path.iterdir()}
    for name, case in report["cases"].items():
        nifti, seg = Path(case["outputs"]["nifti"]["path"]), Path(case["outputs"]["dicom_seg"]["path"])
        assert nifti.name == f"{name}_seg.nii.gz" and seg.name == f"{name}_seg.dcm"
        assert nifti.name in written and seg.name in written  # the report lists what is on disk


def test_unreadable_files_of_an_unused_series_are_listed_in_the_report(pacs_study, tmp_path):
    """A truncated diffusion file: the case is segmented from the other series, and the report says what was not
    readable, per series."""
    study = tmp_path / "study"
    shutil.copytree(pacs_study, study)
    dwi = next(f for f in sorted(study.iterdir())
               if pydicom.dcmread(f, stop_before_pixels=True).SeriesDescription == "AX DWI B0 B1000")
    dwi.write_bytes(dwi.read_bytes()[:-200])
    report = bundle_runner(study, "A", tmp_path / "out").run()
    case = report["cases"]["A"]
    assert case["status"] == "ok"
    ((series, problems),) = case["unreadable_files"].items()
    assert "AX DWI B0 B1000" in series and problems[0].startswith(f"{dwi.name}: truncated")


def test_a_failed_dicom_seg_does_not_hide_the_written_nifti(sphere_study, tmp_path, monkeypatch):
    import monai_iunet.dicom.seg as dicom_seg

    def broken(*args, **kwargs):
        raise ValueError("Source images must have a shared orientation.")

    monkeypatch.setattr(dicom_seg, "write_dicom_seg", broken)
    runner = bundle_runner(sphere_study, "s", tmp_path)
    with pytest.raises(RuntimeError, match=r"1 of 1 case\(s\) have failed outputs \(s\)"):
        runner.run()
    report = json.loads((tmp_path / "inference_report.json").read_text())
    outputs = report["cases"]["s"]["outputs"]
    assert report["summary"]["partial"] == ["s"] and report["cases"]["s"]["status"] == "partial"
    assert outputs["nifti"] == {"status": "written", "path": str(tmp_path / "s_seg.nii.gz")}
    assert (tmp_path / "s_seg.nii.gz").is_file()
    assert outputs["dicom_seg"]["status"] == "failed" and "shared orientation" in outputs["dicom_seg"]["error"]


@pytest.fixture(scope="module")
def pacs_study(tmp_path_factory) -> Path:
    case = make_case(np.random.default_rng(4), shape=(24, 24, 24), spacing=8.0)
    folder = tmp_path_factory.mktemp("pacs") / "PATIENT_A" / "STUDY_20260101"
    write_pacs_study(case.images, case.affine, folder, "A", seed=2)
    return folder


def test_segment_command_on_a_pacs_study(trained, pacs_study, tmp_path):
    def segment(study: Path, output: Path, *options: str):
        command = [*SEGMENT, str(study), "--output", str(output), "--ckpt", str(trained / "models" / "model.pt"),
                   "--config", str(tiny_network_config(tmp_path)), "--device", "cpu", "--case", "A", *options]
        return subprocess.run(command, capture_output=True, text=True, timeout=600)

    output = check(segment(pacs_study.parent, tmp_path / "out", "--overview"))  # a folder above the study is fine too
    for line in ("case A: ok", "t1ce   series #3 'AX T1 POST GAD'", "(reference grid)",
                 "flair  series #5 'COR T2 FLAIR'", "ContrastBolusAgent 'Gadobutrol'", "nifti: written",
                 "dicom_seg: written", "overview: written", "tumour volumes: WT ", "uncertainty: ", "review: ",
                 "modality check: "):
        assert line in output, output[-3000:]
    for noise in ("nvImageCodec", "Orientationd.__init__"):  # a clinician's run prints no library notices
        assert noise not in output, output[-3000:]
    report = json.loads((tmp_path / "out" / "inference_report.json").read_text())
    assert report["summary"] == {"ok": ["A"], "partial": [], "failed": []}
    assert (tmp_path / "out" / "A_overview.png").read_bytes()[:4] == b"\x89PNG"
    # the shipped default: one pass per member, and an uncertainty score that needs no more
    uncertainty = report["cases"]["A"]["uncertainty"]
    assert uncertainty["passes"] == 1 and uncertainty["kind"] == "entropy" and uncertainty["score"] is not None
    assert report["cases"]["A"]["volumes_ml"]["WT"] >= 0 and "not measured" not in output
    # with mirroring: 8 passes, and their spread reported beside the score
    output = check(segment(pacs_study.parent, tmp_path / "tta", "--tta"))
    mirrored = json.loads((tmp_path / "tta" / "inference_report.json").read_text())["cases"]["A"]["uncertainty"]
    assert mirrored["passes"] == 8 and mirrored["mirror_score"] >= 0 and "uncertainty: " in output
    assert report["cases"]["A"]["inputs"]["t2"]["resampled"] is True
    assert_dicom_valid(tmp_path / "out" / "A_seg.dcm")
    # a study without a FLAIR: the command fails, saying which series it saw
    no_flair = tmp_path / "no_flair"
    no_flair.mkdir()
    for file in pacs_study.iterdir():
        if "FLAIR" not in str(pydicom.dcmread(file, stop_before_pixels=True).SeriesDescription):
            (no_flair / file.name).symlink_to(file)
    result = segment(no_flair, tmp_path / "out2")
    assert result.returncode == 1
    assert "no series for flair" in result.stdout and "'AX DWI B0 B1000'" in result.stdout


def test_segment_command_with_two_studies_in_the_folder_and_study_to_choose(trained, pacs_study, tmp_path):
    """A CD with a prior exam of another patient: refused, listing both; --study picks one and it is segmented."""
    folder = tmp_path / "CD"
    shutil.copytree(pacs_study, folder / "A")
    case = make_case(np.random.default_rng(5), shape=(24, 24, 24), spacing=8.0)
    uids = write_pacs_study(case.images, case.affine, folder / "B", "B", seed=3)
    command = [*SEGMENT, str(folder), "--ckpt", str(trained / "models" / "model.pt"), "--config",
               str(tiny_network_config(tmp_path)), "--device", "cpu", "--case", "cd"]
    result = subprocess.run(command + ["--output", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 1 and "2 studies of 2 patient(s), expected one study of one patient" in output
    study_b = str(pydicom.dcmread(next((folder / "B").iterdir()), stop_before_pixels=True).StudyInstanceUID)
    output = check(subprocess.run(command + ["--output", str(tmp_path / "out_b"), "--study", study_b],
                                  capture_output=True, text=True, timeout=600))
    assert "case cd: ok" in output and uids["t1ce"] in output


def test_segment_command_without_weights_says_what_to_do(pacs_study, tmp_path):
    result = subprocess.run([*SEGMENT, str(pacs_study), "--output", str(tmp_path), "--ckpt", str(tmp_path / "none.pt")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "no trained weights" in result.stderr and "--ckpt" in result.stderr


@needs_data
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_series_through_inference_json(trained, name, tmp_path):
    """Each real series as all four modalities through the bundle: NIfTI on the series' grid, a valid SEG."""
    series = str(REAL[name])
    datalist = write_json(tmp_path / "list.json", {"testing": [{"image": [series] * 4, "case": name}]})
    check(run_bundle(["configs/inference.json", str(tiny_network_config(tmp_path))], data_list_file_path=datalist,
                     dataset_dir=tmp_path, ckpt_path=trained / "models" / "model.pt", output_dir=tmp_path / "out",
                     **{k: v for k, v in TINY.items() if not k.startswith("network_def") and k != "roi_size"}))
    report = json.loads((tmp_path / "out" / "inference_report.json").read_text())
    assert report["cases"][name]["status"] == "ok", report
    (found,) = index_dicom_files(series)
    grid = volume_to_metatensor(read_series_volume(found), name)
    nifti = nib.load(tmp_path / "out" / f"{name}_seg.nii.gz")
    assert nifti.shape == tuple(grid.shape[1:])
    np.testing.assert_allclose(nifti.affine, grid.affine.numpy(), atol=1e-3)
    assert_dicom_valid(tmp_path / "out" / f"{name}_seg.dcm")


def _sr_groups(path: Path) -> dict[str, dict]:
    """A TID 1500 report's measurement groups by tracking identifier: measurements by concept meaning, qualitative
    evaluations by concept meaning, and the referenced segment number (TID 1411) if any."""
    report = hd.sr.srread(path)
    groups = {}
    content = report.content
    for group in [*content.get_volumetric_roi_measurement_groups(), *content.get_image_measurement_groups()]:
        groups[group.tracking_identifier] = {
            "measurements": {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()},
            "evaluations": {e.name.meaning: e.value.meaning for e in group.get_qualitative_evaluations()},
            "segment": (tuple(group.referenced_segment.referenced_segment_numbers),
                        group.referenced_segment.source_series_for_segmentation.value)
            if getattr(group, "referenced_segment", None) else None,
        }
    return groups


def test_measurement_report_and_summary_page_go_into_the_study(sphere_study, tmp_path):
    """The SEG, a TID 1500 report whose volumes are the SEG's voxels times the voxel volume (per segment and for
    the unions TC and WT), with the RANO lesion and the verdicts, and a summary page; all in the source study, all
    valid by dciodvfy."""
    report = bundle_runner(sphere_study, "sphere", tmp_path).run()
    case = report["cases"]["sphere"]
    outputs = case["outputs"]
    assert {outputs[k]["status"] for k in ("dicom_seg", "dicom_sr", "dicom_summary")} == {"written"}
    seg = hd.seg.segread(outputs["dicom_seg"]["path"])
    sr, summary = (pydicom.dcmread(outputs[k]["path"]) for k in ("dicom_sr", "dicom_summary"))
    (t1ce,) = [s for s in index_dicom_files(sphere_study) if s.description == "AX T1 POST GAD"]
    source = pydicom.dcmread(t1ce.files[0], stop_before_pixels=True)
    for ds in (seg, sr, summary):
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
    assert sr.ContentQualification == summary.ContentQualification == "RESEARCH"
    assert "research use, not for diagnosis" in sr.SeriesDescription
    for kind in ("dicom_seg", "dicom_sr", "dicom_summary"):
        assert_dicom_valid(Path(outputs[kind]["path"]))
    # volumes: the SEG's voxels of each segment times the voxel volume (from the SEG's own frame positions: the
    # T1ce's slices are 3 mm thick every 5 mm), in mL
    volume = seg.get_volume(combine_segments=False)
    voxel_ml = abs(np.linalg.det(volume.affine[:3, :3])) / 1000
    counts = dict(zip(range(1, volume.array.shape[-1] + 1), volume.array.sum(axis=(0, 1, 2)).tolist()))
    numbers = {item.SegmentLabel: int(item.SegmentNumber) for item in seg.SegmentSequence}
    groups = _sr_groups(Path(outputs["dicom_sr"]["path"]))
    parts = {"ET": ["Enhancing tumor"], "NCR": ["Necrotic tumor core"], "ED": ["Peritumoral edema"]}
    parts |= {"TC": parts["NCR"] + parts["ET"], "WT": parts["NCR"] + parts["ED"] + parts["ET"]}
    for region, labels in parts.items():
        (name,) = [n for n in groups if n == region or n.startswith(f"{region} (")]
        volume, unit = groups[name]["measurements"]["Volume"]
        assert unit == "mL"
        assert float(volume) == pytest.approx(sum(counts[numbers[label]] for label in labels) * voxel_ml, abs=2e-3)
        assert float(volume) == pytest.approx(case["volumes_ml"][region], abs=1e-3)
        if len(labels) == 1:  # one segment: the group references it and the source series
            assert groups[name]["segment"] == ((numbers[labels[0]],), t1ce.uid)
    assert counts[numbers["Enhancing tumor"]] > 0
    # RANO: the sphere (radius 14 mm) is one measurable lesion of about 28 x 28 mm on the in-plane grid
    (lesion,) = case["rano"]["lesions"]
    assert lesion["longest_mm"] == pytest.approx(28, abs=4) and lesion["measurable"]
    measured = groups["ET lesion 1"]["measurements"]
    assert float(measured["Long axis"][0]) == lesion["longest_mm"]
    assert float(measured["Perpendicular Axis"][0]) == lesion["perpendicular_mm"]
    assert float(groups["RANO"]["measurements"]["Sum of products of perpendicular diameters of measurable lesions"][0]
                 ) == pytest.approx(case["rano"]["sum_of_products_mm2"])
    verdicts = groups["Verdicts"]["evaluations"]
    assert verdicts["Intended use"] == "Research use, not for diagnosis"
    assert verdicts["Scan quality check"] in ("Flagged", "Passed") and verdicts["Segmentation uncertainty"] == "Not run"
    assert verdicts["Human review needed"] == ("Yes" if case["review"]["needed"] else "No")
    assert summary.Modality == "OT" and summary.PhotometricInterpretation == "RGB" and summary.Rows > 200
