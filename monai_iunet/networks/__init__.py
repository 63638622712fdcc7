"""Networks (MONAI at the edge): the invertible core, the MONAI-facing IUNet and the IUNetFlow normalizing flow."""

from .blocks import coupling_block, coupling_subnet
from .flow import IUNetFlow
from .invertible_unet import InvertibleUNet
from .iunet import IUNet

__all__ = [
    "coupling_block",
    "coupling_subnet",
    "InvertibleUNet",
    "IUNet",
    "IUNetFlow",
]
