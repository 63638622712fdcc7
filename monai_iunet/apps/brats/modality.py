"""Which MR contrast does each input slot hold? A check of the four channels against T1, T1ce, T2 and FLAIR.

A mislabelled or mis-picked series is the commonest wrong input of a clinical pipeline, and a likelihood score of
the whole case does not see it (``docs/benchmarks/flow_qc.md``). Each channel is described by what a radiologist
reads from it: the shape of its intensity distribution over the brain (quantiles of the z-scored intensities: CSF
dark or bright, the grey/white matter contrast, the bright tail of enhancing vessels and tumour) and the intensity
at the brain's centre (the ventricles); a multinomial logistic regression trained on the real BraTS cases gives
each channel a probability per contrast. The case is checked as a whole, because its four channels are the four
contrasts in some order: the log-likelihood of the claimed order is compared with that of the best order (a
likelihood ratio), so one uncertain channel does not raise a false alarm while a swap of any two is caught. Two
slots holding the same series (correlation over the brain near 1: also a T1 given as the T1ce) are flagged apart.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from ...handlers import save_atomically
from .cases import CaseKeys

__all__ = ["FEATURE_NAMES", "modality_features", "ModalityClassifier", "check_modalities", "save_modality_check",
           "load_modality_check", "ModalityCheckd"]

logger = logging.getLogger(__name__)

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
FEATURE_NAMES = (*(f"q{q:g}" for q in QUANTILES), "skewness", "kurtosis", "above_2sd", "above_3sd", "below_1.5sd",
                 "centre_median")
CENTRE = (0.35, 0.65)  # the central box of the brain's bounding box, per axis: the ventricles
MODALITY_NAMES = {"t1": "T1", "t1ce": "T1ce (post-contrast T1)", "t2": "T2", "flair": "FLAIR"}


def modality_features(channel: np.ndarray) -> np.ndarray:
    """The features of one channel over its brain (its non-zero voxels: a skull-stripped or normalised image)."""
    channel = np.asarray(channel)
    mask = channel != 0
    if mask.sum() < 100:
        raise ValueError(f"a channel with {int(mask.sum())} non-zero voxels has no brain to describe.")
    values = channel[mask].astype(np.float64)
    mean, sd = values.mean(), values.std()
    if sd == 0:
        raise ValueError("a channel that is constant over the brain has no contrast to describe.")
    z = (values - mean) / sd
    index = np.argwhere(mask)
    low, high = index.min(0), index.max(0) + 1
    box = tuple(slice(int(a + (b - a) * CENTRE[0]), int(a + (b - a) * CENTRE[1])) for a, b in zip(low, high))
    centre = (channel[box][mask[box]] - mean) / sd
    return np.array([*np.quantile(z, QUANTILES), (z**3).mean(), (z**4).mean(), (z > 2).mean(), (z > 3).mean(),
                     (z < -1.5).mean(), np.median(centre) if centre.size else 0.0])


class ModalityClassifier:
    """Multinomial logistic regression (L2-penalised, standardised features) from :func:`modality_features` to the
    modalities, with the decision rule of :func:`check_modalities`; its state is four tensors
    (``torch.load(..., weights_only=True)``), saved with the rule's two numbers in one file.

    Args:
        modalities: the classes, in the bundle's channel order.
        state: ``{"mean", "std", "weight", "bias"}`` of a fitted classifier (``fit`` makes one).
        llr_threshold: flag when the best order of the contrasts is more likely than the claimed one by more than
            this (natural log).
        duplicate_correlation: flag two slots whose images correlate above this over the brain.
    """

    def __init__(self, modalities: Sequence[str], state: dict[str, torch.Tensor], llr_threshold: float = 1.0,
                 duplicate_correlation: float = 0.99) -> None:
        self.llr_threshold, self.duplicate_correlation = float(llr_threshold), float(duplicate_correlation)
        self.modalities = tuple(modalities)
        self.state = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in state.items()}
        if self.state["weight"].shape[1] != len(self.modalities):
            raise ValueError(f"the classifier has {self.state['weight'].shape[1]} classes, expected "
                             f"{len(self.modalities)} ({self.modalities}).")

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, modalities: Sequence[str], l2: float = 1e-2, **rule):
        """Fit on ``features`` (N × F) with ``labels`` (N, indices into ``modalities``); ``rule``: the decision
        rule's ``llr_threshold`` and ``duplicate_correlation``."""
        x = torch.as_tensor(features, dtype=torch.float64)
        mean, std = x.mean(0), x.std(0) + 1e-9
        x = (x - mean) / std
        y = torch.as_tensor(labels, dtype=torch.long)
        weight = torch.zeros(x.shape[1], len(modalities), dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(len(modalities), dtype=torch.float64, requires_grad=True)
        optimiser = torch.optim.LBFGS([weight, bias], max_iter=500, line_search_fn="strong_wolfe")

        def closure():
            optimiser.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ weight + bias, y) + l2 * weight.square().sum()
            loss.backward()
            return loss

        optimiser.step(closure)
        return cls(modalities, {"mean": mean, "std": std, "weight": weight.detach(), "bias": bias.detach()}, **rule)

    def log_probabilities(self, features: np.ndarray) -> np.ndarray:
        """Per row of ``features``, the log-probability of each modality."""
        s = self.state
        x = (torch.as_tensor(np.atleast_2d(features), dtype=torch.float64) - s["mean"]) / s["std"]
        return torch.log_softmax(x @ s["weight"] + s["bias"], 1).numpy()


def check_modalities(channels: Sequence[np.ndarray], classifier: ModalityClassifier) -> dict:
    """Check that channel ``i`` holds ``classifier.modalities[i]``.

    Returns ``{"slots": {slot: {"expected", "predicted", "confidence"}}, "log_likelihood_ratio", "best_order",
    "duplicates": [[slot, slot, correlation]], "flagged", "findings": [sentences]}``: flagged when the best order of
    the four contrasts is more likely than the claimed one by more than the classifier's ``llr_threshold`` (natural
    log), or when two slots correlate above its ``duplicate_correlation`` over the brain."""
    llr_threshold, duplicate_correlation = classifier.llr_threshold, classifier.duplicate_correlation
    slots = classifier.modalities
    if len(channels) != len(slots):
        raise ValueError(f"{len(channels)} channels given, the check expects {len(slots)} ({slots}).")
    log_p = classifier.log_probabilities(np.stack([modality_features(c) for c in channels]))
    n = len(slots)
    claimed = float(log_p[np.arange(n), np.arange(n)].sum())
    best = max(itertools.permutations(range(n)), key=lambda order: log_p[np.arange(n), list(order)].sum())
    llr = float(log_p[np.arange(n), list(best)].sum()) - claimed
    brain = np.logical_and.reduce([np.asarray(c) != 0 for c in channels])
    duplicates = []
    for i, j in itertools.combinations(range(n), 2):
        r = float(np.corrcoef(np.asarray(channels[i])[brain], np.asarray(channels[j])[brain])[0, 1])
        if r > duplicate_correlation:
            duplicates.append([slots[i], slots[j], round(r, 4)])
    findings = []
    if llr > llr_threshold:
        findings += [f"the {MODALITY_NAMES.get(slot, slot)} slot looks like {MODALITY_NAMES.get(slots[k], slots[k])}"
                     for slot, k in zip(slots, best) if slots[k] != slot]
    findings += [f"the {MODALITY_NAMES.get(a, a)} and {MODALITY_NAMES.get(b, b)} slots hold the same image "
                 f"(correlation {r:.3f})" for a, b, r in duplicates]
    probabilities = np.exp(log_p)
    return {
        "slots": {slot: {"expected": slot, "predicted": slots[int(probabilities[i].argmax())],
                         "confidence": round(float(probabilities[i].max()), 3)} for i, slot in enumerate(slots)},
        "log_likelihood_ratio": round(llr, 3), "threshold": llr_threshold,
        "best_order": [slots[k] for k in best], "duplicates": duplicates,
        "flagged": bool(findings), "findings": findings,
    }


def save_modality_check(path: str | Path, classifier: ModalityClassifier, **fields) -> Path:
    """Write the classifier (its modalities, its four tensors, its decision rule, and ``fields`` such as how it was
    trained)."""
    save_atomically({"modalities": list(classifier.modalities), "state": classifier.state,
                     "llr_threshold": classifier.llr_threshold,
                     "duplicate_correlation": classifier.duplicate_correlation, **fields}, path)
    return Path(path)


def load_modality_check(path: str | Path) -> ModalityClassifier:
    """The classifier and its decision rule as :func:`save_modality_check` wrote them."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    missing = [k for k in ("modalities", "state", "llr_threshold", "duplicate_correlation") if k not in saved]
    if missing:
        raise ValueError(f"{path} is not a modality check file (no {missing}); retrain it with "
                         "scripts/train_modality_check.py.")
    return ModalityClassifier(saved["modalities"], saved["state"], saved["llr_threshold"],
                              saved["duplicate_correlation"])


class ModalityCheckd(MapTransform):
    """Put ``data[key] = check_modalities(...)`` for a pre-processed image (its channels in the bundle's order; put
    it after the intensity normalisation); a flagged case is logged as a warning, not refused.

    Args:
        keys: the image key (channel-first).
        weights: the classifier file (``models/modality_check.pt`` of the bundle).
        enabled: False skips the check (the record is then ``{"enabled": False}``).
        check_key: where the result goes (``BatchSegmentation`` puts it into the report).
    """

    def __init__(self, keys: KeysCollection, weights: str | Path, enabled: bool = True,
                 check_key: str = CaseKeys.MODALITY_CHECK,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.enabled = bool(enabled)
        if self.enabled and not Path(weights).is_file():
            raise FileNotFoundError(f"modality check weights {weights} not found: ship them with the bundle or set "
                                    "scan_qc: false.")
        self.classifier = load_modality_check(weights) if self.enabled else None
        self.check_key = check_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.classifier is None:
                d[self.check_key] = {"enabled": False}
                continue
            image = d[key]
            channels = [np.asarray(c.detach().cpu() if isinstance(c, torch.Tensor) else c) for c in image]
            try:
                check = check_modalities(channels, self.classifier)
            except ValueError as error:  # e.g. an empty or constant channel: a warning like any other finding
                check = {"flagged": True, "findings": [f"the modalities could not be checked: {error}"]}
            d[self.check_key] = check
            if check["flagged"]:
                logger.warning("modality check: %s: %s; check which series went into which slot (the segmentation "
                               "is still written).", d.get("case", "this case"), "; ".join(check["findings"]))
        return d
