"""Networks (MONAI at the edge): the invertible core and the MONAI-facing IUNet."""

from .blocks import coupling_block, coupling_subnet
from .invertible_unet import InvertibleUNet
from .iunet import IUNet

__all__ = [
    "coupling_block",
    "coupling_subnet",
    "InvertibleUNet",
    "IUNet",
]
