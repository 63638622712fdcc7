"""The real bundle configs end-to-end through ``python -m monai.bundle`` with tiny overrides."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from monai_iunet import IUNet
from monai_iunet.bundle import bundle_parser
from monai_iunet.networks import load_weights

from ..utils import BUNDLE, CT_BUNDLE, SCHEMA, TINY, TRAIN_TINY, assert_dicom_valid, check, run_bundle, write_json

pytestmark = pytest.mark.slow  # trains and runs the BraTS bundle (make test-fast skips it)


def test_train_writes_best_and_last_checkpoints(trained):
    assert (trained / "models" / "model.pt").is_file()
    last = torch.load(trained / "models" / "resume" / "last.pt", weights_only=True)
    assert set(last) == {"model", "optimizer", "lr_scheduler", "best_model", "trainer", "grad_scaler", "random_states"}
    assert last["trainer"]["iteration"] == 3 and last["trainer"]["epoch_length"] == 3  # one epoch of 3 cases
    assert any(p.name.startswith("events.out.tfevents") for p in (trained / "eval").iterdir())  # TensorBoard


def test_resume_continues_from_last_checkpoint(trained, dataset, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(trained, out)
    output = check(run_bundle(["configs/train.json"], dataset_dir=dataset, bundle_root=out, resume=True,
                              **{**TRAIN_TINY, "epochs": 2}))
    assert "Epoch: 1/2" not in output and "Epoch: 2/2" in output  # epoch 1 was not repeated
    last = torch.load(out / "models" / "resume" / "last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 6 and last["trainer"]["max_epochs"] == 2
    assert last["optimizer"]["state"][0]["step"] == 6  # optimizer state carried over
    assert last["lr_scheduler"]["training_time"] > 0  # the LR schedule's clock carried over


def test_disk_cache_is_filled_once_and_gives_the_same_training(trained, dataset, tmp_path):
    """``cache_dir``: the first run writes each case once (train and validation), a second run reads them back and
    writes nothing; both train exactly as the run without a disk cache (same seed, same crops, same weights)."""
    cache = tmp_path / "cache"
    weights = []
    for run in ("first", "again"):
        out = tmp_path / run
        check(run_bundle(["configs/train.json"], dataset_dir=dataset, bundle_root=out, cache_dir=cache, **TRAIN_TINY))
        files = {p.name: p.stat().st_mtime_ns for p in cache.glob("*.pt")}
        if run == "first":
            written = files
        weights.append(torch.load(out / "models" / "resume" / "last.pt", weights_only=True)["model"])
    datalist = json.loads((dataset / "datalist.json").read_text())
    assert len(written) == len(datalist["training"]) + len(datalist["validation"])
    assert files == written  # read back, not rewritten
    reference = torch.load(trained / "models" / "resume" / "last.pt", weights_only=True)["model"]
    for state in weights:
        for key, value in reference.items():
            torch.testing.assert_close(state[key], value, msg=key)


def test_resume_without_checkpoint_is_a_clear_error(dataset, tmp_path):
    result = run_bundle(["configs/train.json"], dataset_dir=dataset, bundle_root=tmp_path, resume=True, **TRAIN_TINY)
    assert result.returncode != 0 and "no checkpoint" in result.stderr + result.stdout


def test_evaluate_scores_what_inference_writes(trained, dataset, tmp_path):
    """evaluate.json on inference.json: the label maps the inference writes on each case's grid, scored per region
    with Dice and HD95; the scores equal scoring those files by hand."""
    from monai_iunet.apps.brats.metrics import score_case

    out = tmp_path / "eval"
    check(run_bundle(["configs/inference.json", "configs/evaluate.json"], dataset_dir=dataset,
                     ckpt_path=trained / "models" / "model.pt", output_dir=out, **TINY))
    metrics = dict(line.split(",") for line in (out / "metrics.csv").read_text().splitlines())
    assert set(metrics) == {"n_cases", "mean_dice", "tc_dice", "wt_dice", "et_dice", "tc_hd95", "wt_hd95", "et_hd95"}
    assert int(metrics["n_cases"]) == 2 and all(0.0 <= float(metrics[f"{r}_dice"]) <= 1.0 for r in ("tc", "wt", "et"))
    scores = json.loads((out / "metrics.json").read_text())
    validation = json.loads((dataset / "datalist.json").read_text())["validation"]
    for item in validation:
        case = Path(item["label"]).parent.name
        assert scores["cases"][case] == score_case(out / f"{case}_seg.nii.gz", dataset / item["label"])
    assert scores["failed"] == {} and len((out / "metrics_per_case.csv").read_text().splitlines()) == 1 + 2 * 3


def test_inference_on_nifti_and_dicom(trained, dataset, tmp_path):
    datalist = write_json(tmp_path / "list.json", {
        "testing": [{"image": [f"BraTS20_Training_002/BraTS20_Training_002_{m}.nii.gz"
                               for m in ("t1", "t1ce", "t2", "flair")]}],
        "testing_dicom": [{"image": [f"BraTS20_Training_001/dicom/{m}" for m in ("t1", "t1ce", "t2", "flair")]}],
    })
    for key in ("testing", "testing_dicom"):
        check(run_bundle(["configs/inference.json"], dataset_dir=dataset, data_list_file_path=datalist,
                         data_list_key=key, ckpt_path=trained / "models" / "model.pt", output_dir=tmp_path / key,
                         **TINY))
    for case, key in (("BraTS20_Training_002", "testing"), ("BraTS20_Training_001", "testing_dicom")):
        source = nib.load(dataset / case / f"{case}_t1.nii.gz")
        output = nib.load(tmp_path / key / f"{case}_seg.nii.gz")
        assert output.shape == source.shape
        np.testing.assert_allclose(output.affine, source.affine, atol=1e-4)
        assert set(np.unique(np.asarray(output.dataobj))) <= {0, 1, 2, 4}

    seg = hd.seg.segread(tmp_path / "testing_dicom" / "BraTS20_Training_001_seg.dcm")
    # the reference_modality's series (T1ce), whatever the datalist form (here: one series folder per modality)
    source = pydicom.dcmread(sorted((dataset / "BraTS20_Training_001" / "dicom" / "t1ce").iterdir())[0])
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    assert seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["Necrotic tumor core", "Peritumoral edema",
                                                             "Enhancing tumor"]
    assert_dicom_valid(tmp_path / "testing_dicom" / "BraTS20_Training_001_seg.dcm")


def test_inference_reports_bad_cases_and_writes_the_others(trained, dataset, tmp_path):
    good = [f"BraTS20_Training_002/BraTS20_Training_002_{m}.nii.gz" for m in ("t1", "t1ce", "t2", "flair")]
    truncated = tmp_path / "truncated_t1.nii.gz"
    truncated.write_bytes((dataset / good[0]).read_bytes()[:2000])
    other_grid = tmp_path / "small_t2.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 16), np.float32), np.eye(4)), other_grid)
    empty = tmp_path / "empty_dicom"
    empty.mkdir()
    datalist = write_json(tmp_path / "list.json", {"testing": [
        {"case": "missing_modality", "image": good[:3]},
        {"case": "no_such_file", "image": good[:3] + ["nowhere/flair.nii.gz"]},
        {"case": "truncated", "image": [str(truncated)] + good[1:]},
        {"case": "other_grid", "image": good[:2] + [str(other_grid)] + good[3:]},
        {"case": "empty_dicom", "image": [str(empty)] + good[1:]},
        {"case": "good", "image": good},
    ]})
    result = run_bundle(["configs/inference.json"], dataset_dir=dataset, data_list_file_path=datalist,
                        ckpt_path=trained / "models" / "model.pt", output_dir=tmp_path / "out", **TINY)
    assert result.returncode != 0
    assert (tmp_path / "out" / "good_seg.nii.gz").is_file()
    report = (tmp_path / "out" / "inference_report.json").read_text()
    for case, words in {
        "missing_modality": "expected 4 modalities",
        "no_such_file": "nowhere/flair.nii.gz",
        "truncated": "truncated_t1.nii.gz",
        "other_grid": "small_t2.nii.gz",
        "empty_dicom": "empty_dicom",
    }.items():
        assert case in report and words in report, (case, report)
    assert "5 of 6 case(s) have failed outputs" in result.stderr + result.stdout
    cases = json.loads(report)["cases"]
    assert cases["good"]["status"] == "ok" and cases["good"]["outputs"]["nifti"]["status"] == "written"
    assert cases["good"]["outputs"]["dicom_seg"] == {"status": "skipped", "reason": "the reference image is not DICOM"}
    assert all(cases[c]["status"] == "failed" and not cases[c]["outputs"] for c in cases if c != "good")


@pytest.mark.skipif(not SCHEMA.is_file(), reason="MONAI metadata schema copy not present")
@pytest.mark.parametrize("bundle", [BUNDLE, CT_BUNDLE], ids=lambda b: b.name)
def test_metadata_is_valid_against_the_official_schema(bundle):
    out = _bundle_command("verify_metadata", "--meta_file", "configs/metadata.json", "--filepath", str(SCHEMA),
                          bundle=bundle)
    assert out.returncode == 0 and "verified with no error" in out.stdout + out.stderr, out.stderr[-2000:]


def _bundle_command(*args: str, bundle: Path = BUNDLE):
    return subprocess.run([sys.executable, "-m", "monai.bundle", *args], cwd=bundle, capture_output=True, text=True,
                          timeout=300)


def test_verify_net_in_out():
    out = _bundle_command("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                          "--config_file", "configs/inference.json", "--n", "1", "--any", "1", "--device", "cpu",
                          "--_meta_#plans#network_def#channels", "4", "--_meta_#plans#network_def#num_levels", "2")
    assert out.returncode == 0 and "verified with no error" in out.stdout + out.stderr, out.stderr[-2000:]


def test_ckpt_export_without_tracing_matches_eager(trained, tmp_path):
    ts = tmp_path / "model.ts"
    out = _bundle_command("ckpt_export", "network_def", "--filepath", str(ts), "--ckpt_file",
                          str(trained / "models" / "model.pt"), "--meta_file", "configs/metadata.json",
                          "--config_file", "configs/inference.json", "--num_members", "1", "--tta", "False",
                          "--_meta_#plans#network_def#channels", "4", "--_meta_#plans#network_def#num_levels", "2",
                          "--_meta_#plans#network_def#blocks_per_level", "1")
    assert out.returncode == 0, out.stderr[-2000:]
    exported = torch.jit.load(ts)
    eager = load_weights(IUNet(3, 4, 3, channels=4, num_levels=2, blocks_per_level=1, split_fraction=0.25),
                         str(trained / "models" / "model.pt")).eval()
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), eager(x))


def test_load_weights_lists_mismatched_keys(trained):
    with pytest.raises(ValueError, match="does not match the network.*missing"):
        load_weights(IUNet(3, 4, 3, channels=4, num_levels=3), str(trained / "models" / "model.pt"))


def test_multi_gpu_config_on_two_cpu_processes(dataset, tmp_path):
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(port)]
    output = check(run_bundle(["configs/train.json", "configs/multi_gpu_train.json"], launcher=launcher,
                              dataset_dir=dataset, bundle_root=tmp_path, **TRAIN_TINY))
    assert "val_mean_dice" in output
    last = torch.load(tmp_path / "models" / "resume" / "last.pt", weights_only=True)
    assert last["trainer"]["iteration"] == 2  # 3 training cases split over 2 ranks (evenly divisible → 2 each)


@pytest.mark.skipif(not SCHEMA.is_file(), reason="MONAI metadata schema copy not present")
@pytest.mark.parametrize("source", [BUNDLE, CT_BUNDLE], ids=lambda b: b.name)
def test_model_zoo_checker_steps(source, tmp_path):
    """The steps of the model zoo's ``ci/verify_bundle.py -m full``, offline, on a copy laid out as the zoo does:
    required files, version in changelog, metadata against ``eval/schema.json``, ``verify_net_in_out`` and
    ``ckpt_export`` with ``bundle_root`` (weights made from the config, as the zoo's CI does)."""
    import json

    from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out

    models = tmp_path / "models"
    bundle = models / source.name
    shutil.copytree(source, bundle, ignore=shutil.ignore_patterns("eval", "*.pt", "*.ts"))
    (models / "model_info.json").write_text("{}")
    (bundle / "eval").mkdir()
    shutil.copy(SCHEMA, bundle / "eval" / "schema.json")
    parser = bundle_parser(bundle / "configs" / "inference.json")
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")

    for required in ("configs/metadata.json", "LICENSE", "models/model.pt", "configs/inference.json"):
        assert (bundle / required).is_file(), required
    metadata = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert metadata["version"] in metadata["changelog"]
    meta, config = str(bundle / "configs" / "metadata.json"), str(bundle / "configs" / "inference.json")
    verify_metadata(meta_file=meta, filepath=str(bundle / "eval" / "schema.json"))
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, bundle_root=str(bundle))
    ckpt_export(net_id="network_def", filepath=str(bundle / "models" / "verify_model.ts"),
                ckpt_file=str(bundle / "models" / "model.pt"), meta_file=meta, config_file=config,
                bundle_root=str(bundle))
    torch.jit.load(bundle / "models" / "verify_model.ts")


@pytest.mark.parametrize(
    "item,expected",
    [
        ({"image": ["/d/BraTS20_001/BraTS20_001_t1.nii.gz", "/d/BraTS20_001/BraTS20_001_t2.nii.gz"]}, "BraTS20_001"),
        ({"image": ["/d/case9/dicom/t1", "/d/case9/dicom/t2"]}, "case9"),
        ({"image": "/studies/BraTS_003.nii.gz"}, "BraTS_003"),  # one 4-channel file: MONAI Label's studies folder
        ({"image": ["/studies/BraTS_004.nii"]}, "BraTS_004"),
        ({"case": "named", "image": ["/x/t1.nii.gz"]}, "named"),
    ],
)
def test_case_names(item, expected):
    from monai_iunet.apps.brats.cases import case_name

    assert case_name(item) == expected


def test_per_region_dice_of_train_json_on_a_known_case():
    """The config's validation post-processing (sigmoid, threshold, SplitDimd into the regions) and per-region
    metrics against a prediction whose Dice per region is known: TC exact (1), WT half covered (2/3), ET missed (0).
    A swapped channel would change these numbers."""
    from ignite.engine import Engine

    parser = bundle_parser(str(BUNDLE / "configs" / "train.json"))
    parser.update({"bundle_root": str(BUNDLE)})
    label = torch.zeros(3, 4, 4, 4)
    label[0, :2], label[1, :], label[2, 0] = 1, 1, 1  # TC: half the volume, WT: all of it, ET: a quarter
    pred = label.clone()
    pred[1, 2:] = 0  # WT: half of it
    pred[2] = 0  # ET: nothing
    postprocessing = parser.get_parsed_content("validate#postprocessing")
    logits = 20 * pred - 10
    engine = Engine(lambda engine, batch: [postprocessing({"pred": logits, "label": label})])
    metrics = parser.get_parsed_content("validate#additional_metrics")
    for name, metric in metrics.items():
        metric.attach(engine, name)
    engine.run([0], max_epochs=1)
    assert engine.state.metrics["val_tc_dice"] == pytest.approx(1.0)
    assert engine.state.metrics["val_wt_dice"] == pytest.approx(2 / 3)
    assert engine.state.metrics["val_et_dice"] == pytest.approx(0.0)
