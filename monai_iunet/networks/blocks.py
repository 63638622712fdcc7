"""Coupling sub-networks built from MONAI factory specs (norm/act as in the rest of MONAI)."""

from __future__ import annotations

from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from ..layers.base import InvertibleModule
from ..layers.conv import SameConv
from ..layers.coupling import AdditiveCoupling, AffineCoupling
from ..layers.precision import MixedPrecisionSequential

__all__ = ["COUPLINGS", "coupling_subnet", "coupling_block", "compile_subnets"]

COUPLINGS = {"additive": AdditiveCoupling, "affine": AffineCoupling}


def coupling_subnet(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    num_convs: int = 2,
    kernel_size: int = 3,
    norm: tuple | str = ("group", {"num_groups": 1}),
    act: tuple | str = ("leakyrelu", {"negative_slope": 0.01}),
    zero_init: bool = True,
    adn_ordering: str = "NA",
    compute_dtype: str | None = None,
) -> MixedPrecisionSequential:
    """``num_convs`` × (conv → norm → act): the sub-network ``f`` or ``g`` of a coupling.

    ``adn_ordering`` is the order of norm (``N``) and activation (``A``) after each conv, as in MONAI's ``ADN``:
    ``"NA"`` (default) or ``"AN"`` (the reference iunets block: conv → LeakyReLU → GroupNorm). The sub-network
    always ends at its last norm, so with ``"NA"`` the final activation is left out.

    With ``zero_init`` the last layer with a weight (the final norm's affine weight, or the final conv when the
    norm has no affine part) and its bias start at zero, so the sub-network outputs 0 and the coupling is the
    identity at initialisation (paper §4: zero-initialised layer normalisation).

    ``compute_dtype`` (``"bfloat16"``, ``"float16"`` or None) runs the sub-network under autocast to that dtype, its
    norms in fp32 (:class:`~monai_iunet.layers.MixedPrecisionSequential`; the state dict is that of ``nn.Sequential``).
    """
    if num_convs < 1:
        raise ValueError(f"num_convs must be at least 1, got {num_convs}.")
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd (same-size convolution), got {kernel_size}.")
    if adn_ordering not in ("NA", "AN"):
        raise ValueError(f"adn_ordering must be 'NA' or 'AN', got {adn_ordering!r}.")
    layers: list[nn.Module] = []
    channels = in_channels
    for i in range(num_convs):
        layers.append(SameConv(spatial_dims, channels, out_channels, kernel_size))
        for kind in adn_ordering:
            if kind == "N":
                layers.append(get_norm_layer(norm, spatial_dims, out_channels))
            elif i < num_convs - 1 or adn_ordering == "AN":
                layers.append(get_act_layer(act))
        channels = out_channels
    subnet = MixedPrecisionSequential(*layers, compute_dtype=compute_dtype)
    if zero_init:
        last = [m for m in subnet if getattr(m, "weight", None) is not None][-1]
        nn.init.zeros_(last.weight)
        if getattr(last, "bias", None) is not None:
            nn.init.zeros_(last.bias)
    return subnet


def coupling_block(spatial_dims: int, channels: int, coupling: str = "additive", **subnet_kwargs) -> InvertibleModule:
    """An additive or affine coupling on ``channels`` channels with two :func:`coupling_subnet` sub-networks."""
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {tuple(COUPLINGS)}, got {coupling!r}.")
    if channels < 2:
        raise ValueError(f"a coupling layer needs at least 2 channels, got {channels}.")
    c1, c2 = channels // 2, channels - channels // 2
    factor = 2 if coupling == "affine" else 1  # affine sub-networks output a log-scale and a shift
    f = coupling_subnet(spatial_dims, c2, factor * c1, **subnet_kwargs)
    g = coupling_subnet(spatial_dims, c1, factor * c2, **subnet_kwargs)
    return COUPLINGS[coupling](channels, f, g)


def compile_subnets(network: nn.Module, **compile_kwargs) -> nn.Module:
    """Compile every coupling sub-network of ``network`` in place with ``torch.compile`` (regional compilation) and
    return ``network``. The invertible program still runs eagerly, so the memory-efficient engine keeps its memory
    saving: a sub-network is compiled forward and backward wherever it runs, in the forward pass and when backward
    recomputes it. ``compile_kwargs`` go to ``torch.compile``. Measure before adopting it: on the CPUs measured so far
    it costs about a minute of compilation and saves nothing per step (``docs/benchmarks/training_cpu.md``)."""
    import torch._dynamo  # here, not at import: importing dynamo keeps tensors alive in eager runs (engine.run)

    subnets = [m for m in network.modules() if isinstance(m, MixedPrecisionSequential)]
    # every sub-network shares one forward function, and each of its shapes is a graph: dynamo's default limit of 8
    # graphs per function would send the rest back to eager
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, len(subnets))
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * len(subnets))
    for module in subnets:
        module.compile(**compile_kwargs)
    return network
