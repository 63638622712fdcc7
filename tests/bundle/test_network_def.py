"""``bundle.network_def``: every tool (planner, export, benchmarks) reads a config's network the way
``monai.bundle run`` does, references and expressions included."""

from __future__ import annotations

import json

from monai_iunet import IUNet
from monai_iunet.bundle import network_def
from monai_iunet.planner import _network_kwargs

from .conftest import ROOT

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
    # the planner's --network used to pass "@width" on as the width
    assert _network_kwargs(str(path), ["blocks_per_level=2"])["channels"] == 8
    assert _network_kwargs(str(path), ["blocks_per_level=2"])["blocks_per_level"] == 2
