"""The bundle run the way MONAI Label 0.8.5 runs it: one 4-channel image per request, ``preprocessing`` →
``inferer`` → ``postprocessing`` from ``inference.json`` without the bundle's runner, and ``train.json`` with MONAI
Label's overrides (its ``CheckpointLoader`` inserted at ``train#handlers`` position 0, an empty validation list).

MONAI Label itself cannot be installed beside this project's CPU build of PyTorch (it imports torchvision at module
level, whose PyPI wheel does not load with it), so these tests replay what its ``BundleInferTask`` and
``BundleTrainTask`` do with the same MONAI calls; the bundle README says how to run the real server.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_iunet.apps.brats.data.location import real_data
from monai_iunet.apps.brats.data.studies import stack_modalities, write_studies
from monai_iunet.apps.brats.labels import MODALITIES
from monai_iunet.bundle import bundle_parser

from ..utils import monai_label_infer
from .conftest import BUNDLE, TINY, check, run_bundle, write_json

pytestmark = pytest.mark.slow  # runs the bundle as MONAI Label does (make test-fast skips it)

# MONAI Label sets overrides as Python values, not command-line strings.
TINY_VALUES = {k: json.loads(v) if isinstance(v, str) else v for k, v in TINY.items()}
REAL_BRATS = real_data() / "brats" / "Brats18_2013_2_1"


def _case_files(dataset: Path, case: str) -> list[Path]:
    return [dataset / case / f"{case}_{m}.nii.gz" for m in MODALITIES]


def _label_values() -> set[int]:
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    return {int(k) for k in metadata["network_data_format"]["outputs"]["pred"]["channel_def"]}


def test_channel_def_describes_the_label_map_monai_label_shows():
    """MONAI Label reads ``outputs.pred.channel_def`` as ``{name: label value}``, background excluded."""
    metadata = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    channel_def = metadata["network_data_format"]["outputs"]["pred"]["channel_def"]
    labels = {v.lower(): int(k) for k, v in channel_def.items() if v.lower() != "background"}
    assert labels == {"necrotic tumor core": 1, "peritumoral edema": 2, "enhancing tumor": 4}
    inputs = metadata["network_data_format"]["inputs"]["image"]["channel_def"]
    assert [inputs[str(i)].lower() for i in range(4)] == list(MODALITIES)


def test_inference_on_one_four_channel_file_equals_the_bundle_runner(trained, dataset, tmp_path):
    case = "BraTS20_Training_002"
    stacked = stack_modalities(_case_files(dataset, case), tmp_path / f"{case}.nii.gz")
    data = monai_label_infer(stacked, trained / "models" / "model.pt", **TINY_VALUES)
    label = data["pred"]
    source = nib.load(stacked)
    assert tuple(label.shape) == (1, *source.shape[:3])
    np.testing.assert_allclose(label.affine.numpy(), source.affine, atol=1e-5)
    assert set(np.unique(label.numpy())) <= _label_values()

    # The bundle's own runner on the 4 separate files writes the same label map.
    files = [str(p) for p in _case_files(dataset, case)]
    datalist = write_json(tmp_path / "list.json", {"testing": [{"image": files}]})
    check(run_bundle(["configs/inference.json"], dataset_dir=dataset, data_list_file_path=datalist,
                     ckpt_path=trained / "models" / "model.pt", output_dir=tmp_path / "runner", **TINY))
    written = np.asarray(nib.load(tmp_path / "runner" / f"{case}_seg.nii.gz").dataobj)
    np.testing.assert_array_equal(label[0].numpy(), written)


@pytest.mark.skipif(not REAL_BRATS.is_dir(), reason="../shared/data (real BraTS case) not present")
def test_real_brats_case_as_one_four_channel_file(trained, tmp_path):
    images = [REAL_BRATS / f"{REAL_BRATS.name}_{m}.nii.gz" for m in MODALITIES]
    stacked = stack_modalities(images, tmp_path / f"{REAL_BRATS.name}.nii.gz")
    data = monai_label_infer(stacked, trained / "models" / "model.pt", **{**TINY_VALUES, "roi_size": [128, 128, 96]})
    label, source = data["pred"], nib.load(images[0])
    assert tuple(label.shape) == (1, 240, 240, 155) == (1, *source.shape)
    np.testing.assert_allclose(label.affine.numpy(), source.affine, atol=1e-4)  # LPS on disk, restored from RAS
    assert set(np.unique(label.numpy())) <= _label_values()


_MONAI_LABEL_TRAIN = """
import json, sys
import monai.bundle
args = json.load(open(sys.argv[1]))
# BundleTrainTask.run_single_gpu
monai.bundle.run(run_id="run", init_id=None, final_id=None, meta_file=args["meta_file"],
                 config_file=args["config_file"], **args["overrides"])
"""


def monai_label_train(app_bundle: Path, datalist: list[dict], overrides: dict, tmp_path: Path):
    """What ``BundleTrainTask`` does for a training request with ``val_split`` 0 and a pretrained ``model.pt``."""
    parser = bundle_parser(app_bundle / "configs" / "train.json")
    handlers = parser.get("train#handlers", [])
    assert all(isinstance(h, dict) for h in handlers)  # MONAI Label calls h.get("_target_") on every entry
    handlers.insert(0, {"_target_": "CheckpointLoader", "load_path": str(app_bundle / "models" / "model.pt"),
                        "load_dict": {"model": "$@network"}, "strict": False})
    args = {
        "meta_file": str(app_bundle / "configs" / "metadata.json"),
        "config_file": str(app_bundle / "configs" / "train.json"),
        "overrides": {"bundle_root": str(app_bundle), "train#trainer#max_epochs": 1, "train#dataset#data": datalist,
                      "device": "cpu", "train#handlers": handlers, "validate#dataset#data": [], **overrides},
    }
    script, arguments = tmp_path / "monai_label_train.py", write_json(tmp_path / "args.json", args)
    script.write_text(_MONAI_LABEL_TRAIN)
    return subprocess.run([sys.executable, str(script), str(arguments)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)


def test_fine_tuning_on_four_channel_files_without_validation(trained, dataset, tmp_path):
    app_bundle = tmp_path / "app" / "model" / BUNDLE.name
    shutil.copytree(BUNDLE, app_bundle, ignore=shutil.ignore_patterns("eval", "models"))
    (app_bundle / "models").mkdir()
    shutil.copy(trained / "models" / "model.pt", app_bundle / "models" / "model.pt")
    pretrained = torch.load(app_bundle / "models" / "model.pt", weights_only=True)

    studies = tmp_path / "studies"
    images = write_studies(dataset, studies)
    datalist = [{"image": str(p), "label": str(studies / "labels" / "final" / p.name)} for p in images]
    assert len(datalist) == 5 and all(Path(d["label"]).is_file() for d in datalist)

    output = check(monai_label_train(app_bundle, datalist, {**TINY_VALUES, "cache_rate": 0}, tmp_path))
    assert "train_loss" in output
    # model.pt is written without validation, and it is the fine-tuned model, not the pretrained one.
    tuned = torch.load(app_bundle / "models" / "model.pt", weights_only=True)
    assert tuned.keys() == pretrained.keys()
    assert any(not torch.equal(tuned[k], pretrained[k]) for k in tuned)
    # MONAI Label lists models/*.pt (shortest name first) as the checkpoints it can serve: only model.pt.
    assert sorted(p.name for p in (app_bundle / "models").glob("*.pt")) == ["model.pt"]
    assert (app_bundle / "models" / "resume" / "last.pt").is_file()


def test_a_tumour_free_crop_still_teaches(tmp_path):
    """Half of ``RandCropByPosNegLabeld(pos=1, neg=1)``'s crops hold no tumour: the training loss must give them a
    gradient (a Dice loss with ``smooth_nr=0`` is constant 1 there), and it must be smaller for a better guess."""
    from monai.losses import DiceLoss

    parser = bundle_parser(BUNDLE / "configs" / "train.json")
    parser.update({**TINY, "device": "cpu"})
    loss_function, network = parser.get_parsed_content("loss"), parser.get_parsed_content("network_def")
    image, empty = torch.randn(1, 4, 16, 16, 16), torch.zeros(1, 3, 16, 16, 16)

    loss = loss_function(network(image), empty)
    loss.backward()
    gradient = torch.cat([p.grad.flatten() for p in network.parameters()])
    assert gradient.abs().max() > 0 and torch.isfinite(gradient).all()
    assert loss_function(torch.full_like(empty, -5.0), empty) < loss_function(torch.full_like(empty, 5.0), empty)

    logits = torch.randn(1, 3, 16, 16, 16, requires_grad=True)  # the old loss, for contrast
    DiceLoss(sigmoid=True, smooth_nr=0, smooth_dr=1e-5, squared_pred=True)(logits, empty).backward()
    assert logits.grad.abs().max() == 0
