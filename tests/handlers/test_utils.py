"""What the handlers share and what bundle configs use to put handlers together."""

from __future__ import annotations

import torch

from monai_iunet.bundle import bundle_parser, bundle_path
from monai_iunet.handlers import existing, handlers_for_rank, unwrapped
from monai_iunet.handlers.utils import batch_cases

BUNDLE = bundle_path("brats_iunet_segmentation")


def test_distributed_handler_selection_survives_an_inserted_handler():
    """``multi_gpu_train.json`` picks the handlers of a rank by type: a handler MONAI Label inserts at position 0
    neither shifts nor drops the others, and no config refers to a handler by its list position."""
    from ignite.handlers import ProgressBar
    from monai.handlers import CheckpointLoader, LrScheduleHandler, StatsHandler, TensorBoardStatsHandler

    parser = bundle_parser([BUNDLE / "configs" / "train.json", BUNDLE / "configs" / "multi_gpu_train.json"])
    for key in parser.get():
        assert not key.startswith("train#handlers#"), key
    schedule = torch.optim.lr_scheduler.StepLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1), 1)
    handlers = [CheckpointLoader("model.pt", {"model": torch.nn.Linear(1, 1)}), ProgressBar(),
                LrScheduleHandler(schedule), StatsHandler(), TensorBoardStatsHandler()]
    assert handlers_for_rank(handlers, 0) == handlers
    assert handlers_for_rank(handlers, 1) == [handlers[0], handlers[2]]


def test_existing_is_the_object_itself_so_the_checkpoint_and_the_trainer_share_it():
    parser = bundle_parser(BUNDLE / "configs" / "train.json")
    schedule = object()
    assert existing(schedule) is schedule
    entries = [h for h in parser.get("train#handlers") if h.get("_target_") == "monai_iunet.handlers.existing"]
    assert [e["instance"] for e in entries] == ["@lr_scheduler"]


def test_unwrapped_and_batch_cases():
    net = torch.nn.Linear(1, 1)
    assert unwrapped(torch.nn.DataParallel(net)) is net and unwrapped(net) is net
    from monai.data import MetaTensor

    batch = [{"image": MetaTensor(torch.zeros(1), meta={"filename_or_obj": ["a.nii.gz", "b.nii.gz"]})},
             {"image": MetaTensor(torch.zeros(1), meta={"filename_or_obj": "a.nii.gz"})}]
    assert batch_cases(batch) == ["a.nii.gz", "b.nii.gz"]
