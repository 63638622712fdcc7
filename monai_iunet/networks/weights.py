"""Loading trained weights into a network, with an error that says what does not match."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

__all__ = ["load_weights"]


def load_weights(network: torch.nn.Module, path: str, map_location=None, member: int | None = None
                 ) -> torch.nn.Module:
    """Load a checkpoint written by the bundle (``model.pt``: the network's state dict; ``last.pt``: a dict with a
    ``"model"`` entry) with ``weights_only=True``. A checkpoint of another architecture raises ``ValueError`` listing
    the missing, unexpected and mis-shaped keys.

    ``member``: take only member ``member`` of an ensemble file (``MirrorEnsemble``'s ``members.<k>.…``), e.g. one
    cross-validation fold's model out of a shipped ensemble, into a single network or a one-member ensemble; it is
    cast to the network's precision (a shipped file may hold half precision)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; train first or set ckpt_path.")
    state = torch.load(path, map_location=map_location, weights_only=True)
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if member is not None:
        prefix = f"members.{int(member)}."
        members = sorted({int(k.split(".")[1]) for k in state if k.startswith("members.")})
        if int(member) not in members:
            found = members or "none, not an ensemble file"
            raise ValueError(f"checkpoint {path} has no member {member} (members: {found}).")
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    # tried on a copy first, so that a mismatch leaves the network as it was; load_state_dict (not a comparison of
    # keys) so that the network's own load hooks apply (MirrorEnsemble takes a one-network checkpoint)
    try:
        result = copy.deepcopy(network).load_state_dict(state, strict=False)
        mis_shaped = ""
    except RuntimeError as error:  # parameters of another shape
        result, mis_shaped = None, str(error).split(":", 1)[-1].strip()
    missing, unexpected = (sorted(result.missing_keys), sorted(result.unexpected_keys)) if result else ([], [])
    if missing or unexpected or mis_shaped:
        raise ValueError(
            f"checkpoint {path} does not match the network (another architecture?): "
            f"missing {missing[:10]}{'…' if len(missing) > 10 else ''}, "
            f"unexpected {unexpected[:10]}{'…' if len(unexpected) > 10 else ''}"
            + (f", {mis_shaped[:1000]}" if mis_shaped else ".")
        )
    network.load_state_dict(state)
    return network
