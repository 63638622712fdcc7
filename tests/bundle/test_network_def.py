"""``bundle.network_def``: every tool (planner, export, benchmarks) reads a config's network the way
``monai.bundle run`` does, references and expressions included."""

from __future__ import annotations

import inspect
import json

import pytest

from monai_iunet import InvertibleUNet, IUNet
from monai_iunet.bundle import BUNDLES, bundle_parser, bundle_path, network_def
from monai_iunet.planner import _network_kwargs

from .conftest import ROOT

PRESETS = {"brats_iunet_segmentation": "iunet16.json", "ct_iunet_postprocessing": "iunet_ct8.json"}

CONFIG = {"width": 8, "levels": 3, "imports": ["$import monai_iunet"],
          "network_def": {"_target_": "IUNet", "spatial_dims": 3, "in_channels": 4, "out_channels": 3,
                          "channels": "@width", "num_levels": "$@levels", "blocks_per_level": 1}}


def test_a_preset_file_gives_its_network():
    network = network_def(ROOT / "configs" / "networks" / "iunet16.json")
    assert isinstance(network, IUNet) and network.lift.out_channels == 16


def test_references_expressions_and_overrides_are_resolved(tmp_path):
    assert network_def(CONFIG, instantiate=False) == {"spatial_dims": 3, "in_channels": 4, "out_channels": 3,
                                                      "channels": 8, "num_levels": 3, "blocks_per_level": 1}
    assert network_def(CONFIG, instantiate=False, channels=4)["channels"] == 4
    assert CONFIG["network_def"]["channels"] == "@width"  # the caller's config is left as it was
    bare = network_def(CONFIG["network_def"] | {"channels": 4, "num_levels": 2})  # a network_def on its own
    assert isinstance(bare, IUNet)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(CONFIG))
    # the planner resolves "@width" (a reference), it does not pass the string on as the width
    assert _network_kwargs(str(path), ["blocks_per_level=2"])["channels"] == 8
    assert _network_kwargs(str(path), ["blocks_per_level=2"])["blocks_per_level"] == 2


def with_defaults(arguments: dict) -> dict:
    """An ``IUNet``'s arguments with every default filled in (its own and its core's, ``InvertibleUNet``), so that a
    config that spells a default out and one that leaves it equal each other."""
    bound = inspect.signature(IUNet).bind(**arguments)
    bound.apply_defaults()
    full = dict(bound.arguments)
    core = full.pop("core_kwargs")
    for name, parameter in inspect.signature(InvertibleUNet).parameters.items():
        if name not in full and parameter.default is not inspect.Parameter.empty:
            full[name] = core.pop(name, parameter.default)
    assert not core, f"arguments neither IUNet nor InvertibleUNet takes: {core}"
    return full


def iunet_arguments(config) -> dict:
    """The ``IUNet`` a config builds, as resolved arguments; a ``MirrorEnsemble``'s member network for an ensemble."""
    arguments = network_def(config, instantiate=False)
    if "network" in arguments:  # MirrorEnsemble(network=..., num_members=...)
        arguments = {k: v for k, v in arguments["network"].get_config().items() if not k.startswith("_")}
    return with_defaults(arguments)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_inference_and_preset_describe_one_model(bundle):
    """The network, the grid and the crop/window a bundle trains with are the ones it infers with, and its preset in
    ``configs/networks`` is that same network."""
    configs = bundle_path(bundle) / "configs"
    train = iunet_arguments(configs / "train.json")
    assert iunet_arguments(configs / "inference.json") == train
    assert iunet_arguments(ROOT / "configs" / "networks" / PRESETS[bundle]) == train
    trainer, predictor = bundle_parser(configs / "train.json"), bundle_parser(configs / "inference.json")
    plans = trainer.get("_meta_#plans")
    assert trainer.get_parsed_content("roi_size") == plans["patch_size"]
    assert predictor.get_parsed_content("roi_size") == plans["patch_size"] and "window" not in plans
    assert trainer.get_parsed_content("pixdim", default=None) == predictor.get_parsed_content("pixdim", default=None)


def test_defaults_are_filled_so_that_a_drift_shows():
    spelled = {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "zero_init": True, "coupling": "additive"}
    assert with_defaults(spelled) == with_defaults({"spatial_dims": 3, "in_channels": 1, "out_channels": 1})
    assert with_defaults({**spelled, "zero_init": False}) != with_defaults(spelled)
    assert with_defaults({**spelled, "channels": 8}) != with_defaults(spelled)


@pytest.mark.parametrize(("device", "override", "expected"),
                         [("cpu", None, False), ("cuda", None, True), ("cpu", True, True)])
def test_train_json_trains_plain_on_cpu_and_memory_efficient_on_gpus(device, override, expected):
    """The recipe's ``memory_efficient``: plain autograd on CPU (faster at the 64³ crop), the memory-efficient engine
    on GPUs (what the planner sizes crops for) or when asked; applied to the network the trainer trains."""
    parser = bundle_parser(bundle_path("brats_iunet_segmentation") / "configs" / "train.json")
    parser["device"] = f"$torch.device('{device}')"
    if override is not None:
        parser["memory_efficient"] = override
    parser["initialize"] = [i for i in parser["initialize"] if "memory_efficient" in i]  # no folders, no seeding
    parser.get_parsed_content("initialize")
    network = parser.get_parsed_content("network_def")
    assert network.memory_efficient is expected and network.core.memory_efficient is expected
