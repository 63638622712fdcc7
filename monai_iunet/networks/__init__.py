"""Networks (MONAI at the edge): the invertible core, the MONAI-facing IUNet, the IUNetFlow normalizing flow, and
``load_weights`` for checkpoints written by the bundles."""

from .blocks import compile_subnets, coupling_block, coupling_subnet
from .ensemble import MirrorEnsemble, ensemble_state_dict
from .flow import IUNetFlow
from .invertible_unet import InvertibleUNet
from .iunet import IUNet
from .weights import load_weights

__all__ = [
    "compile_subnets",
    "coupling_block",
    "coupling_subnet",
    "InvertibleUNet",
    "IUNet",
    "IUNetFlow",
    "MirrorEnsemble",
    "ensemble_state_dict",
    "load_weights",
]
