"""Non-finite values never reach the weights; the inversion-drift monitor reports and warns."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.engines import SupervisedTrainer
from monai.losses import DiceLoss
from pydicom.data import get_testdata_file

from monai_iunet import IUNet
from monai_iunet.apps.brats.cases import CaseError
from monai_iunet.apps.brats.transforms import LoadModalitiesd
from monai_iunet.bundle import bundle_parser
from monai_iunet.handlers import InversionDriftMonitor, NonFiniteGuard

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
    assert net.reconstruction_error(x) < 1e-5  # fp32 core: accurate
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
    # a non-invertible network (a bundle's network_def swapped for e.g. DynUNet) has nothing to monitor: no handler
    plain, unused = Engine(lambda engine, batch: None), InversionDriftMonitor(torch.nn.Linear(2, 2), interval=1)
    unused.attach(plain)
    assert is_attached(engine, strict) and not is_attached(plain, unused)


def is_attached(engine: Engine, monitor: InversionDriftMonitor) -> bool:
    return engine.has_event_handler(monitor, Events.ITERATION_COMPLETED)


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

    from ..bundle.conftest import BUNDLE

    parser = bundle_parser(BUNDLE / "configs" / "train.json")
    parser["non_finite"] = action
    loader = parser.get_parsed_content("loading#0")
    index = next(i for i, h in enumerate(parser["train#handlers"]) if h["_target_"].endswith("NonFiniteGuard"))
    guard = parser.get_parsed_content(f"train#handlers#{index}")
    assert isinstance(guard, NonFiniteGuard) and guard.action == action
    # "skip": NaN volumes pass the loader and the guard skips their optimizer step with a warning.
    assert loader.check_finite == (action == "raise")


class _Amplify(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by ``factor`` (to force an fp32 overflow at a known
    gradient scale)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class _AmplifiedLinear(torch.nn.Linear):
    def __init__(self, factor: float):
        super().__init__(4, 1)
        self.factor = factor

    def forward(self, x):
        return _Amplify.apply(super().forward(x), self.factor)


def _scaled_trainer(batches, guard, factor, init_scale, **kwargs):
    """A real ``SupervisedTrainer`` on its ``amp`` path with a real ``GradScaler`` (CPU: MONAI's own scaler is CUDA
    only, so it is replaced by ``torch.amp.GradScaler("cpu")``)."""
    net = _AmplifiedLinear(factor)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=batches, network=net,
        # gradients of ~1e33 (Adam's squared moments would overflow): SGD with a matching learning rate
        optimizer=torch.optim.SGD(net.parameters(), 1e-35), loss_function=lambda pred, label: pred.sum(),
        train_handlers=[guard], amp=True, **kwargs,
    )
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    # Trainer.run() makes its CUDA scaler just before the run starts: put the CPU one in its place then.
    trainer.add_event_handler(Events.STARTED, lambda engine: setattr(engine, "scaler", scaler))
    return trainer, net


def _vector_batch(case, value=0.5):
    return {"image": MetaTensor(torch.full((1, 4), value), meta={"filename_or_obj": [case]}),
            "label": torch.zeros(1, 1)}


@pytest.mark.filterwarnings("ignore:User provided device_type of 'cuda'")
def test_scaled_gradient_overflow_is_left_to_the_grad_scaler():
    """Scale 65536 × 8e33 overflows fp32, 32768 × 8e33 does not: the first step overflows by design."""
    guard = NonFiniteGuard(action="raise")
    trainer, net = _scaled_trainer([_vector_batch("a"), _vector_batch("b")], guard, 8e33, 65536.0)
    before = [p.detach().clone() for p in net.parameters()]
    trainer.run()
    assert guard.scaler_overflows == 1 and trainer.scaler.get_scale() == 32768.0  # the scaler skipped and backed off
    assert all(torch.isfinite(p).all() for p in net.parameters())
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))  # the second step was taken


@pytest.mark.filterwarnings("ignore:User provided device_type of 'cuda'")
def test_gradients_non_finite_without_scaling_are_caught_under_a_scaler():
    guard = NonFiniteGuard(action="raise")
    trainer, net = _scaled_trainer([_vector_batch(f"case{i}") for i in range(6)], guard, float("inf"), 4.0)
    message = r"non-finite gradients at gradient scale <= 1 at epoch 1, iteration 3"
    with pytest.raises(FloatingPointError, match=message):
        trainer.run()  # scale 4 and 2: the scaler's overflow; at scale 1 the unscaled gradient is infinite
    assert guard.scaler_overflows == 2
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.filterwarnings("ignore:User provided device_type of 'cuda'")
def test_non_finite_loss_is_caught_under_a_scaler():
    trainer, _ = _scaled_trainer([_vector_batch("nan_case", float("nan"))], NonFiniteGuard(), 1.0, 65536.0)
    with pytest.raises(FloatingPointError, match="non-finite loss .*nan_case"):
        trainer.run()


def test_skip_keeps_the_gradient_accumulated_before_the_bad_micro_batch():
    """accumulation_steps 2: micro-batch 1 is good, micro-batch 2 is NaN. The step must use micro-batch 1's
    gradient (loss / 2), not drop it."""
    net = torch.nn.Linear(4, 1)
    expected = torch.nn.Linear(4, 1)
    expected.load_state_dict(net.state_dict())
    good = _vector_batch("good")
    (expected(good["image"].as_tensor()).sum() / 2).backward()
    with torch.no_grad():
        for p in expected.parameters():
            p -= 0.1 * p.grad

    guard = NonFiniteGuard(action="skip")
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=1, train_data_loader=[good, _vector_batch("bad", float("nan"))],
        network=net, optimizer=torch.optim.SGD(net.parameters(), 0.1), loss_function=lambda pred, label: pred.sum(),
        train_handlers=[guard], accumulation_steps=2,
    )
    trainer.run()
    assert guard.skipped == 1
    for p, e in zip(net.parameters(), expected.parameters()):
        torch.testing.assert_close(p.detach(), e.detach())


@pytest.mark.filterwarnings("ignore:User provided device_type of 'cuda'")
def test_skip_under_a_grad_scaler_skips_the_step_instead_of_crashing_it():
    """``non_finite: skip`` with AMP: a step whose gradients were all dropped must not reach GradScaler.step without
    inf checks ("No inf checks were recorded for this optimizer"). A NaN batch is skipped, the good one trains."""
    guard = NonFiniteGuard(action="skip")
    trainer, net = _scaled_trainer([_vector_batch("nan_case", float("nan")), _vector_batch("good")], guard, 1e30,
                                   1024.0)  # gradients of ~1e30 against the helper's learning rate of 1e-35
    before = [p.detach().clone() for p in net.parameters()]
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=1), lambda engine: after_first.extend(
        p.detach().clone() for p in net.parameters()))
    after_first: list[torch.Tensor] = []
    trainer.run()
    assert guard.skipped == 1
    for b, p in zip(before, after_first):
        torch.testing.assert_close(p, b)  # the NaN step left the weights alone
    assert trainer.scaler.get_scale() == 512.0  # the scaler skipped it (and backed off)
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters()))  # the good step was taken
    assert all(torch.isfinite(p).all() for p in net.parameters())
