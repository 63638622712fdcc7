"""Invertible building blocks (no MONAI imports): orthogonal resampling and mixing, couplings, actnorm."""

from .actnorm import ActNorm
from .base import InvertibleIdentity, InvertibleModule, InvertibleSequential
from .conv import SameConv, same_conv
from .coupling import AdditiveCoupling, AffineCoupling
from .orthogonal import ORTHOGONAL_METHODS, OrthogonalMatrix, haar_matrix, orthogonal_map, random_orthogonal
from .precision import REDUCED_PRECISION, MixedPrecisionSequential
from .resampling import InvertibleChannelMixing, OrthogonalDownsampling, OrthogonalUpsampling

__all__ = [
    "ActNorm",
    "InvertibleIdentity",
    "InvertibleModule",
    "InvertibleSequential",
    "AdditiveCoupling",
    "AffineCoupling",
    "MixedPrecisionSequential",
    "REDUCED_PRECISION",
    "SameConv",
    "same_conv",
    "ORTHOGONAL_METHODS",
    "OrthogonalMatrix",
    "haar_matrix",
    "orthogonal_map",
    "random_orthogonal",
    "InvertibleChannelMixing",
    "OrthogonalDownsampling",
    "OrthogonalUpsampling",
]
