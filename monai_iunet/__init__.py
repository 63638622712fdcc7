"""monai-iunet: the fully invertible U-Net (Etmann, Ke & Schönlieb, 2020) for MONAI.

After ``import monai_iunet`` a MONAI bundle config may say ``"_target_": "IUNet"``; ``monai_iunet.IUNet`` always
works as a dotted path.
"""

from .engine import SavedTensorBytes, run_memory_efficient
from .layers import (
    AdditiveCoupling,
    AffineCoupling,
    InvertibleChannelMixing,
    InvertibleModule,
    InvertibleSequential,
    OrthogonalDownsampling,
    OrthogonalUpsampling,
)
from .networks import InvertibleUNet, IUNet

__version__ = "0.1.0"

__all__ = [
    "AdditiveCoupling",
    "AffineCoupling",
    "IUNet",
    "InvertibleChannelMixing",
    "InvertibleModule",
    "InvertibleSequential",
    "InvertibleUNet",
    "OrthogonalDownsampling",
    "OrthogonalUpsampling",
    "SavedTensorBytes",
    "run_memory_efficient",
]
