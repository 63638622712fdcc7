"""Non-finite values never reach the weights; the inversion-drift monitor reports and warns."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.losses import DiceLoss
from pydicom.data import get_testdata_file

from monai_iunet import IUNet
from monai_iunet.handlers import InversionDriftMonitor, NonFiniteGuard
from monai_iunet.transforms import CaseError, LoadModalitiesd

from ..conftest import perturb


def _batch(case: str, poison: bool = False) -> dict:
    image = torch.randn(1, 4, 8, 8, 8)
    if poison:
        image[0, 1, 2, 3, 4] = float("nan")
    label = (torch.rand(1, 3, 8, 8, 8) > 0.5).float()
    return {"image": MetaTensor(image, meta={"filename_or_obj": [case]}), "label": label}


def _trainer(batches, guard):
    net = IUNet(3, 4, 3, channels=4, num_levels=2, blocks_per_level=1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=batches, network=net,
        optimizer=torch.optim.Adam(net.parameters(), 1e-2), loss_function=DiceLoss(sigmoid=True),
        train_handlers=[guard],
    )
    return trainer, net


def test_non_finite_loss_raises_naming_the_case():
    trainer, net = _trainer([_batch("good_case"), _batch("bad_case_007", poison=True)], NonFiniteGuard())
    with pytest.raises(FloatingPointError, match="bad_case_007"):
        trainer.run()
    assert all(torch.isfinite(p).all() for p in net.parameters())


def test_non_finite_batch_skipped_leaves_weights_alone():
    guard = NonFiniteGuard(action="skip")
    trainer, net = _trainer([_batch("bad", poison=True)], guard)
    before = [p.detach().clone() for p in net.parameters()]
    trainer.run()
    assert guard.skipped == 1
    for b, p in zip(before, net.parameters()):
        torch.testing.assert_close(p.detach(), b)
    with pytest.raises(ValueError, match="action"):
        NonFiniteGuard(action="ignore")


def test_inversion_drift_monitor_logs_and_warns(tmp_path):
    net = perturb(IUNet(3, 4, 3, channels=4, num_levels=2), 0.1)
    x = torch.randn(1, 4, 8, 8, 8)
    monitor = InversionDriftMonitor(net, interval=1, threshold=1e-3, log_dir=str(tmp_path))
    assert monitor.error(x) < 1e-5  # fp32 core: accurate
    engine = Engine(lambda engine, batch: None)
    monitor.attach(engine)
    engine.run([[{"image": x[0]}]], max_epochs=1)  # as MONAI engines leave it: decollated samples
    assert engine.state.inversion_error < 1e-5
    assert any(p.name.startswith("events.out") for p in tmp_path.iterdir())

    strict = InversionDriftMonitor(net, interval=1, threshold=0.0)  # any error is "too large"
    engine = Engine(lambda engine, batch: None)
    strict.attach(engine)
    with pytest.warns(RuntimeWarning, match="lower the learning rate"):
        engine.run([{"image": x}], max_epochs=1)
    with pytest.raises(ValueError, match="IUNet"):
        InversionDriftMonitor(torch.nn.Linear(2, 2))


def test_nan_in_an_input_volume_names_the_file(tmp_path):
    import nibabel as nib

    volume = np.ones((8, 8, 8), np.float32)
    paths = []
    for m in ("t1", "t1ce", "t2", "flair"):
        data = volume.copy()
        if m == "t2":
            data[1, 2, 3] = np.inf
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / f"{m}.nii.gz")
        paths.append(str(tmp_path / f"{m}.nii.gz"))
    with pytest.raises(CaseError, match=r"t2 file .*t2.nii.gz has 1 NaN/Inf"):
        LoadModalitiesd("image")({"image": paths, "case": "c1"})


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "no_meta.dcm", "rtplan.dcm", "meta_missing_tsyntax.dcm"])
def test_odd_dicom_files_give_clear_errors(tmp_path, name):
    source = get_testdata_file(name, download=False)
    if source is None:
        pytest.skip(f"pydicom test file {name} not shipped")
    series = tmp_path / "odd_series"
    series.mkdir()
    shutil.copy(source, series / name)
    import nibabel as nib

    others = []
    for m in ("t1ce", "t2", "flair"):
        nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)), tmp_path / f"{m}.nii.gz")
        others.append(str(tmp_path / f"{m}.nii.gz"))
    with pytest.raises(CaseError, match="case odd: .*odd_series"):
        LoadModalitiesd("image")({"image": [str(series)] + others, "case": "odd"})


def test_best_model_saver_keeps_the_best_across_a_restart(tmp_path):
    from monai_iunet.handlers import BestModelSaver

    net = torch.nn.Linear(2, 2)
    saver = BestModelSaver(str(tmp_path), net, metric="dice")
    engine = Engine(lambda engine, batch: None)
    for epoch, dice in ((1, 0.5), (2, 0.7), (3, 0.6)):
        engine.state.epoch, engine.state.metrics = epoch, {"dice": dice}
        with torch.no_grad():
            net.weight.fill_(dice)
        saver(engine)
    assert saver.state_dict() == {"best": 0.7, "best_epoch": 2}
    restarted = BestModelSaver(str(tmp_path), net, metric="dice")
    restarted.load_state_dict(saver.state_dict())
    engine.state.epoch, engine.state.metrics = 4, {"dice": 0.65}
    restarted(engine)  # worse than the best before the restart: model.pt untouched
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.testing.assert_close(saved["weight"], torch.full((2, 2), 0.7))


@pytest.mark.parametrize("action", ["raise", "skip"])
def test_bundle_non_finite_setting_reaches_loader_and_guard(action):
    from monai.bundle import ConfigParser

    from ..bundle.conftest import BUNDLE

    parser = ConfigParser()
    parser.read_config(BUNDLE / "configs" / "train.json")
    parser["non_finite"] = action
    loader = parser.get_parsed_content("load_transforms#0")
    index = next(i for i, h in enumerate(parser["train#handlers"]) if h["_target_"].endswith("NonFiniteGuard"))
    guard = parser.get_parsed_content(f"train#handlers#{index}")
    assert isinstance(guard, NonFiniteGuard) and guard.action == action
    # "skip": NaN volumes pass the loader and the guard skips their optimizer step with a warning.
    assert loader.check_finite == (action == "raise")
