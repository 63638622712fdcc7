"""monai-iunet: the fully invertible U-Net (Etmann, Ke & Schönlieb, 2020) for MONAI.

After ``import monai_iunet`` a MONAI bundle config may say ``"_target_": "IUNet"``; ``monai_iunet.IUNet`` always
works as a dotted path. ``monai_iunet.engine`` and ``monai_iunet.layers`` work without MONAI installed; the
networks build their coupling sub-networks with MONAI's layer factories and are exported when MONAI is present.
"""

from .engine import SavedTensorBytes, run_memory_efficient
from .layers import (
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    InvertibleChannelMixing,
    InvertibleModule,
    InvertibleSequential,
    OrthogonalDownsampling,
    OrthogonalUpsampling,
)

__version__ = "0.2.0"

__all__ = [
    "ActNorm",
    "AdditiveCoupling",
    "AffineCoupling",
    "InvertibleChannelMixing",
    "InvertibleModule",
    "InvertibleSequential",
    "OrthogonalDownsampling",
    "OrthogonalUpsampling",
    "SavedTensorBytes",
    "run_memory_efficient",
]

try:
    import monai  # noqa: F401
except ImportError:
    pass
else:
    from .networks import InvertibleUNet, IUNet, IUNetFlow

    __all__ += ["IUNet", "InvertibleUNet", "IUNetFlow"]
