"""An ensemble of trained copies of one network with mirroring test-time augmentation, as one ``nn.Module``.

The members are copies of one architecture (e.g. the models of a cross-validation), stored in one state dict
(``members.0.…``, ``members.1.…``; ``ensemble_state_dict`` builds it from the members' own checkpoints), so a bundle
ships one ``model.pt`` and every tool that builds ``network_def`` and loads ``model.pt`` (``monai.bundle run``,
MONAI Label, ``ckpt_export``) runs the ensemble unchanged. Probabilities are averaged over every member and every
mirrored pass (all ``2 ** len(mirror_axes)`` combinations of flips, as nnU-Net does); ``forward`` returns the logits
of that mean, so the bundle's postprocessing (activation, threshold) is the single model's.

``predict_with_uncertainty`` also returns how much the passes disagree, voxel by voxel: ``mirror_spread`` (the
standard deviation of the probabilities over one member's mirrored passes, averaged over the members) and
``member_spread`` (the standard deviation over the members of their mirror-averaged probabilities), and how
unsure each member is on its own, which needs no second pass: ``entropy`` (the entropy in bits of a member's
mirror-averaged probabilities, per channel — binary for sigmoid channels, ``-p log2 p`` per class for softmax, so the
channels sum to the categorical entropy — averaged over the members). All are blended by a sliding-window inferer
like the prediction.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import List

import torch
from torch import nn

__all__ = ["MirrorEnsemble", "ensemble_state_dict"]



class MirrorEnsemble(nn.Module):
    """Mean probability of ``num_members`` copies of ``network`` over mirrored inputs.

    With one member and no mirroring, ``forward`` is the member's own forward (no activation round trip).

    Args:
        network: the architecture; each member is a deep copy of it (its weights are replaced when the ensemble's
            state dict is loaded).
        num_members: number of members.
        mirror_axes: spatial axes (0-based, after batch and channel) to mirror; every combination of them is one
            pass (none: one pass, the unmirrored input).
        activation: ``"sigmoid"`` (independent channels, e.g. overlapping regions) or ``"softmax"`` (over channels).

    Raises:
        ValueError: ``num_members`` < 1, an unknown activation, or a repeated mirror axis.
    """

    # a real type, not a postponed string: TorchScript reads it to type the (possibly empty) inner lists
    __annotations__ = {"passes": List[List[int]]}

    def __init__(self, network: nn.Module, num_members: int = 1, mirror_axes: Sequence[int] | None = None,
                 activation: str = "sigmoid") -> None:
        super().__init__()
        if num_members < 1:
            raise ValueError(f"num_members must be at least 1, got {num_members}.")
        if activation not in ("sigmoid", "softmax"):
            raise ValueError(f"activation must be 'sigmoid' or 'softmax', got {activation!r}.")
        mirror_axes = tuple(int(a) for a in (mirror_axes or ()))
        if len(set(mirror_axes)) != len(mirror_axes) or any(a < 0 for a in mirror_axes):
            raise ValueError(f"mirror_axes must be distinct non-negative spatial axes, got {mirror_axes}.")
        self.members = nn.ModuleList(copy.deepcopy(network) for _ in range(num_members))
        self.mirror_axes = mirror_axes
        self.activation = activation
        # the flips of one member's passes: every subset of mirror_axes (the empty one first), as tensor dims
        self.passes = [[a + 2 for a in combo] for n in range(len(mirror_axes) + 1)
                       for combo in itertools.combinations(mirror_axes, n)]
        self._plain = num_members == 1 and not mirror_axes
        self.eps = 1e-6  # probabilities are clamped away from 0 and 1 before their logits are taken
        self._register_load_state_dict_pre_hook(self._load_single_network)

    def _load_single_network(self, state_dict, prefix, *args) -> None:
        """A checkpoint of one network (what training writes) loads into a one-member ensemble."""
        keys = [k for k in state_dict if k.startswith(prefix)]
        if not keys or any(k[len(prefix):].startswith("members.") for k in keys):
            return
        if len(self.members) > 1:
            raise ValueError(f"the checkpoint holds one network, not the {len(self.members)} members of this "
                             "ensemble: set num_members to 1, or build an ensemble file from the members' "
                             "checkpoints with monai_iunet.networks.ensemble_state_dict.")
        for key in keys:
            state_dict[f"{prefix}members.0.{key[len(prefix):]}"] = state_dict.pop(key)

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.activation == "sigmoid" else torch.softmax(logits, dim=1)

    def _logits(self, probabilities: torch.Tensor) -> torch.Tensor:
        probabilities = probabilities.clamp(self.eps, 1 - self.eps)
        return torch.logit(probabilities) if self.activation == "sigmoid" else torch.log(probabilities)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._plain:
            for member in self.members:
                return member(x)
        return self.predict_with_uncertainty(x)["pred"]

    def predict_with_uncertainty(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"pred": logits of the mean probability, "mirror_spread", "member_spread", "entropy"}`` (module doc)."""
        means: list[torch.Tensor] = []
        spreads: list[torch.Tensor] = []
        entropies: list[torch.Tensor] = []
        for member in self.members:
            probabilities: list[torch.Tensor] = []
            for dims in self.passes:
                out = member(torch.flip(x, dims) if len(dims) > 0 else x)
                probabilities.append(self._probabilities((torch.flip(out, dims) if len(dims) > 0 else out).float()))
            passes = torch.stack(probabilities)
            means.append(passes.mean(0))
            spreads.append(passes.std(0, correction=0))
            entropies.append(self._entropy(means[-1]))
        stacked = torch.stack(means)
        return {"pred": self._logits(stacked.mean(0)), "mirror_spread": torch.stack(spreads).mean(0),
                "member_spread": stacked.std(0, correction=0), "entropy": torch.stack(entropies).mean(0)}

    def _entropy(self, probabilities: torch.Tensor) -> torch.Tensor:
        p = probabilities.clamp(self.eps, 1 - self.eps)
        entropy = -p * torch.log2(p)
        return entropy - (1 - p) * torch.log2(1 - p) if self.activation == "sigmoid" else entropy


def ensemble_state_dict(paths: Sequence[str | Path], dtype: torch.dtype | None = None,
                        map_location="cpu") -> dict[str, torch.Tensor]:
    """One ``MirrorEnsemble`` state dict from its members' checkpoints (each a network state dict, or a training
    checkpoint with a ``"model"`` entry), member ``k`` from ``paths[k]``. ``dtype`` (e.g. ``torch.float16``) stores
    the floating-point tensors at that precision, to halve a shipped file: loading casts them back to the
    network's own dtype."""
    state = {}
    for k, path in enumerate(paths):
        member = torch.load(path, map_location=map_location, weights_only=True)
        if isinstance(member.get("model"), dict):
            member = member["model"]
        state.update({f"members.{k}.{name}": value.to(dtype) if dtype is not None and value.is_floating_point()
                      else value for name, value in member.items()})
    return state
