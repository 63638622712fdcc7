"""What a resumed training run continues from: the same augmentation stream and schedule as an uninterrupted run
(random states in the checkpoint), plain network keys whether or not the run was distributed, and checkpoint files
that two writers cannot corrupt."""

from __future__ import annotations

import os
import socket
import sys

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from monai_iunet.bundle import bundle_parser
from monai_iunet.handlers import AtomicFileSaver, save_atomically
from monai_iunet.handlers.checkpoint import _umask

from ..bundle.conftest import BUNDLE, TRAIN_TINY, check, run_bundle

pytestmark = pytest.mark.slow  # trains through the bundle (make test-fast skips it)

# no validation (the stream of training losses is what is compared), on the phantoms' own grid
CONFIG = {**{k: v for k, v in TRAIN_TINY.items() if not k.endswith("roi_size")},
          "roi_size": [16, 16, 16], "val_roi_size": [32, 32, 32], "val_interval": 10, "pixdim": [6.0, 6.0, 6.0]}


def _train(dataset, out, epochs: int, resume: bool = False, stop_after: int | None = None) -> list[float]:
    """train.json in this process as ``monai.bundle run`` runs it (initialize, then the trainer); the loss of every
    iteration. ``stop_after`` ends the run after that epoch, as a kill right after its checkpoint would."""
    parser = bundle_parser(str(BUNDLE / "configs" / "train.json"))
    parser.update({**CONFIG, "bundle_root": str(out), "dataset_dir": str(dataset), "epochs": epochs,
                   "resume": resume, "device": "$torch.device('cpu')"})
    parser.get_parsed_content("initialize")
    trainer = parser.get_parsed_content("train#trainer")
    losses: list[float] = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    if stop_after:
        trainer.add_event_handler(Events.EPOCH_COMPLETED(once=stop_after), lambda e: e.terminate())
    trainer.run()
    return losses


def test_a_resumed_run_continues_the_augmentation_stream_of_an_uninterrupted_one(dataset, tmp_path):
    uninterrupted = _train(dataset, tmp_path / "a", epochs=2)
    first = _train(dataset, tmp_path / "b", epochs=2, stop_after=1)
    resumed = _train(dataset, tmp_path / "b", epochs=2, resume=True)
    assert len(uninterrupted) == 6 and len(first) == 3 and len(resumed) == 3
    assert first == pytest.approx(uninterrupted[:3], rel=1e-5)
    assert resumed == pytest.approx(uninterrupted[3:], rel=1e-4)  # same crops, flips and noise as without the stop
    last = torch.load(tmp_path / "b" / "models" / "resume" / "last.pt", weights_only=True)
    assert {"grad_scaler", "random_states"} <= set(last)


def test_a_distributed_run_resumes(dataset, tmp_path):
    """DDP on 2 CPU processes (gloo): train an epoch, then resume for a second; the checkpoint holds the network's
    own keys (no ``module.``), so it also loads into a single-process run and into the bundle's network_def."""
    def launcher():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(port)]

    configs = ["configs/train.json", "configs/multi_gpu_train.json"]
    tiny = {**TRAIN_TINY, "pixdim": "[6.0,6.0,6.0]", "val_interval": 10}  # training state only: no validation
    check(run_bundle(configs, launcher=launcher(), dataset_dir=dataset, bundle_root=tmp_path, **tiny))
    last = torch.load(tmp_path / "models" / "resume" / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in last["model"])
    check(run_bundle(configs, launcher=launcher(), dataset_dir=dataset, bundle_root=tmp_path, resume=True,
                     **{**tiny, "epochs": 2}))
    last = torch.load(tmp_path / "models" / "resume" / "last.pt", weights_only=True)
    assert last["trainer"]["max_epochs"] == 2 and last["trainer"]["iteration"] == 4  # 2 epochs of 2 per rank
    assert not any(k.startswith("module.") for k in last["model"])
    check(run_bundle(["configs/train.json"], dataset_dir=dataset, bundle_root=tmp_path, resume=True,
                     **{**tiny, "epochs": 3}))  # and a single process takes it over


def test_two_writers_never_share_a_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    names = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (names.append(os.path.basename(src)), real_replace(src, dst)))
    save_atomically({"step": 1}, path)
    save_atomically({"step": 2}, path)
    assert len(set(names)) == 2 and "last.pt" not in names  # each write its own temporary file, renamed over it
    assert torch.load(path, weights_only=True) == {"step": 2} and os.listdir(tmp_path) == ["last.pt"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def test_a_crash_while_saving_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    """Killed while writing, through save_atomically and through Ignite's Checkpoint (which asks its saver to
    remove the previous file of the same name before writing the next): the previous checkpoint is intact."""
    path = tmp_path / "last.pt"
    save_atomically({"step": 1}, path)

    def crash(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt  # killed while writing

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_atomically({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}

    net = torch.nn.Linear(1, 1)
    writer = Checkpoint({"model": net}, AtomicFileSaver(tmp_path), filename_pattern="model.pt", n_saved=1,
                        greater_or_equal=True)
    engine = Engine(lambda engine, batch: None)
    engine.state.iteration = 1
    writer(engine)
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        writer(engine)
    monkeypatch.undo()
    assert torch.load(tmp_path / "model.pt", weights_only=True).keys() == net.state_dict().keys()
    assert sorted(os.listdir(tmp_path)) == ["last.pt", "model.pt"]  # no temporary file left behind
