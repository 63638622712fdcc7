"""The plans hold every fact of a shipped model once: change one in the plans and training, inference and evaluation
all follow (nothing is spelled a second time in a config or as a code default), and the shipped plans match the
shipped model files."""

from __future__ import annotations

import json

import pytest
import torch

from monai_iunet.apps.brats.postprocess import CaseUncertaintyd, SuppressSmallEnhancingd
from monai_iunet.apps.brats.transforms import TolerantSpacingd
from monai_iunet.bundle import bundle_parser

from ..utils import BUNDLE, CT_BUNDLE

BRATS_PLANS = {"patch_size": [48, 40, 32], "pixdim": [3.0, 2.5, 2.0], "num_members": 2, "mirror_axes": [1],
               "tta": True, "overlap": 0.3, "blend_mode": "constant", "et_min_volume_ml": 0.7,
               "uncertainty": {"kind": "mirror_spread", "region": "ET", "threshold": 0.5}}
SMALL_NETWORK = {"channels": 4, "num_levels": 2, "blocks_per_level": 1}


def _parser(bundle, config: str, plans: dict):
    parser = bundle_parser(bundle / "configs" / config)
    for key, value in plans.items():
        parser[f"_meta_#plans#{key}"] = value
    for key, value in SMALL_NETWORK.items():
        parser[f"_meta_#plans#network_def#{key}"] = value
    return parser


def _transform(compose, kind):
    (found,) = [t for t in compose.transforms if isinstance(t, kind)]
    return found


@pytest.mark.parametrize("config", ["inference.json", "evaluate.json"])
def test_brats_inference_takes_every_fact_from_the_plans(config):
    parser = _parser(BUNDLE, "inference.json", BRATS_PLANS)
    if config == "evaluate.json":
        parser.read_config([str(BUNDLE / "configs" / "inference.json"), str(BUNDLE / "configs" / "evaluate.json")])
        for key, value in {**BRATS_PLANS, **{f"network_def#{k}": v for k, v in SMALL_NETWORK.items()}}.items():
            parser[f"_meta_#plans#{key}"] = value
    inferer = parser.get_parsed_content("inferer")
    assert list(inferer.roi_size) == BRATS_PLANS["patch_size"]
    assert inferer.overlap == BRATS_PLANS["overlap"] and inferer.mode == "constant"
    network = parser.get_parsed_content("network_def")
    assert len(network.members) == 2 and network.passes == [[], [3]]  # mirror axis 1 = tensor dim 3
    spacing = _transform(parser.get_parsed_content("preprocessing"), TolerantSpacingd)
    assert list(spacing.spacing_transform.pixdim) == BRATS_PLANS["pixdim"]
    post = parser.get_parsed_content("postprocessing")
    assert _transform(post, SuppressSmallEnhancingd).min_volume_ml == 0.7
    uncertainty = _transform(post, CaseUncertaintyd)
    assert (uncertainty.kind, uncertainty.region, uncertainty.threshold, uncertainty.passes) == ("mirror_spread", "ET",
                                                                                                0.5, 2)
    parser["_meta_#plans#tta"] = False  # the plans' mirroring switch is the default; the config id overrides it
    assert parser.get_parsed_content("network_def").passes == [[]]


def test_brats_training_takes_every_fact_from_the_plans():
    parser = _parser(BUNDLE, "train.json", BRATS_PLANS)
    assert parser.get_parsed_content("roi_size") == BRATS_PLANS["patch_size"]
    validation = parser.get_parsed_content("validate#inferer")
    assert list(validation.roi_size) == BRATS_PLANS["patch_size"]
    assert validation.overlap == BRATS_PLANS["overlap"] and validation.mode == "constant"
    (spacing,) = [t for t in parser.get_parsed_content("load_transforms") if isinstance(t, TolerantSpacingd)]
    assert list(spacing.spacing_transform.pixdim) == BRATS_PLANS["pixdim"]
    assert parser.get_parsed_content("network_def").core is not None


def test_the_shipped_brats_plans_match_the_model_files():
    plans = json.loads((BUNDLE / "configs" / "metadata.json").read_text())["plans"]
    state = torch.load(BUNDLE / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert len({key.split(".")[1] for key in state if key.startswith("members.")}) == plans["num_members"]
    assert plans["uncertainty"]["kind"] in CaseUncertaintyd.KINDS and plans["uncertainty"]["threshold"] > 0
    assert set(plans) >= {"pixdim", "patch_size", "network_def", "num_members", "mirror_axes", "tta", "overlap",
                          "blend_mode", "et_min_volume_ml", "uncertainty"}
    assert "window" not in plans


def test_ct_training_and_inference_take_their_facts_from_the_plans():
    plans = {"patch_size": [24, 24, 16], "overlap": 0.4, "blend_mode": "constant"}
    inference = _parser(CT_BUNDLE, "inference.json", plans).get_parsed_content("inferer")
    assert list(inference.roi_size) == plans["patch_size"] and inference.overlap == 0.4 and inference.mode == "constant"
    train = _parser(CT_BUNDLE, "train.json", plans)
    assert train.get_parsed_content("roi_size") == plans["patch_size"]
    validation = train.get_parsed_content("validate#inferer")
    assert validation.overlap == 0.4 and validation.mode == "constant"
