"""Scan QC for the BraTS bundle: does an input look like the BraTS cases the model was trained on?

An :class:`~monai_iunet.networks.IUNetFlow` trained on the real training cases gives each case its negative
log-likelihood in **bits per dimension** (bits/dim) on a stated scale, and a case above a threshold calibrated on
training cases (their cross-validated scores) is flagged. The segmentation still runs: QC warns, it does not refuse.

The scale. The flow sees the bundle's own pre-processed image (RAS, ``pixdim``, each channel normalised to zero mean
and unit variance over the non-zero voxels), averaged to :data:`QC_SPACING` mm and cropped or padded to
:data:`QC_SHAPE` around the centre of the non-zero voxels. Those intensities are continuous, and the exactly-zero
background of stripped images is a point mass a continuous density could make arbitrarily likely; so they are
clipped to :data:`INTENSITY_RANGE` and quantised to :data:`LEVELS` levels (1/32 of the brain's intensity SD per
level), and the flow models the uniformly dequantised levels, as flows of 8-bit images do. Bits/dim is then the
discrete code length per voxel and channel: between 0 and log2(256) = 8, comparable between cases and runs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform
from torch import Tensor

from ...handlers import save_atomically
from ...networks.flow import IUNetFlow
from .cases import CaseKeys

__all__ = ["QC_SPACING", "QC_SHAPE", "INTENSITY_RANGE", "LEVELS", "qc_volume", "qc_levels", "quantise", "dequantise",
           "bits_per_dim", "save_qc_flow", "load_qc_flow", "ScanQC", "ScanQCd", "robust_threshold", "checked_input"]

logger = logging.getLogger(__name__)

QC_SPACING = 4.0  # mm
QC_SHAPE = (48, 48, 40)  # voxels at QC_SPACING: 192 × 192 × 160 mm, a whole brain with margin
INTENSITY_RANGE = (-4.0, 4.0)  # normalised units (brain SDs)
LEVELS = 256


def checked_input(bundle: str | Path | None = None, load: bool = True, **overrides):
    """What the scan QC and the modality check see, and are trained and calibrated on: the bundle's
    ``inference.json`` pre-processing before its checks — its ``loading`` (with ``load``; without it the transform
    takes an already loaded image) and its ``network_input`` — as one ``Compose``; ``overrides`` set config ids
    (e.g. ``skull_strip``). ``bundle``: the shipped BraTS bundle unless given."""
    from monai.transforms import Compose

    from ...bundle import bundle_parser, bundle_path

    bundle = Path(bundle) if bundle else bundle_path()
    parser = bundle_parser(bundle / "configs" / "inference.json")
    parser.update({"bundle_root": str(bundle), "device": "$torch.device('cpu')", **overrides})
    return Compose([t for key in (["loading"] if load else []) + ["network_input"]
                    for t in parser.get_parsed_content(key)])


def qc_volume(image: Tensor, spacing: Sequence[float], qc_spacing: float = QC_SPACING,
              shape: Sequence[int] = QC_SHAPE) -> Tensor:
    """The flow's view of a pre-processed case ``(C, *S)`` with voxel size ``spacing`` (mm): averaged to
    ``qc_spacing`` mm, then cropped or zero-padded to ``shape`` around the centre of its non-zero voxels (a shipped
    flow's geometry is in its file; the defaults are what new flows are trained at)."""
    image = torch.as_tensor(image, dtype=torch.float32)
    shape = tuple(int(n) for n in shape)
    factors = [float(qc_spacing) / float(s) for s in spacing]
    size = [max(1, round(n / f)) for n, f in zip(image.shape[1:], factors)]
    small = F.interpolate(image[None], size=size, mode="area")[0]  # area = the mean over each 4 mm cell
    nonzero = torch.nonzero(small.abs().sum(0) > 0)
    centre = ((nonzero.min(0).values + nonzero.max(0).values + 1) // 2 if len(nonzero)
              else torch.tensor([n // 2 for n in size]))
    out = small.new_zeros((image.shape[0], *shape))
    source, target = [], []
    for c, n, m in zip(centre.tolist(), size, shape):
        start = c - m // 2  # where the output box starts in the small image
        lo, hi = max(start, 0), min(start + m, n)
        source.append(slice(lo, hi))
        target.append(slice(lo - start, hi - start))
    out[(slice(None), *target)] = small[(slice(None), *source)]
    return out


def qc_levels(image, qc_spacing: float = QC_SPACING, shape: Sequence[int] = QC_SHAPE) -> Tensor:
    """A pre-processed case (channel-first MetaTensor; its affine gives the voxel size) → the levels the QC flow
    scores: :func:`qc_volume`, then :func:`quantise` (uint8)."""
    spacing = np.linalg.norm(np.asarray(image.affine, float)[:3, :3], axis=0)
    return quantise(qc_volume(torch.as_tensor(image), spacing, qc_spacing, shape)).to(torch.uint8)


def quantise(volume: Tensor) -> Tensor:
    """Normalised intensities → integer levels ``0 … LEVELS-1`` over :data:`INTENSITY_RANGE`."""
    low, high = INTENSITY_RANGE
    levels = torch.floor((volume - low) / (high - low) * LEVELS)
    return levels.clamp(0, LEVELS - 1)


def dequantise(levels: Tensor, noise: bool) -> Tensor:
    """Levels → the flow's continuous input (normalised units): uniform dequantisation when ``noise`` (training),
    else the levels' mid-points (deterministic scores)."""
    low, high = INTENSITY_RANGE
    offset = torch.rand_like(levels) if noise else torch.full_like(levels, 0.5)
    return low + (levels + offset) / LEVELS * (high - low)


def bits_per_dim(flow: IUNetFlow, levels: Tensor, noise: bool = False) -> Tensor:
    """Per sample, ``-log2 P(levels) / D`` with ``P`` the dequantised density times the levels' cell volume: the
    flow's density of the normalised input, changed to the unit cube of levels (``D·log(step)``)."""
    x = dequantise(levels, noise)
    dims = levels[0].numel()
    step = (INTENSITY_RANGE[1] - INTENSITY_RANGE[0]) / LEVELS  # one level in normalised units
    log_p_levels = flow.log_prob(x) + dims * math.log(step)  # log-density per unit level, = log P(cell)
    return -log_p_levels / (dims * math.log(2))


def robust_threshold(scores: Sequence[float], z: float = 4.0) -> float:
    """``median + z · 1.4826 · MAD``: a high (``z`` > 0) or low (``z`` < 0) robust z-score of in-distribution
    (cross-validated) scores."""
    values = np.asarray(scores, float)
    median = float(np.median(values))
    return median + z * 1.4826 * float(np.median(np.abs(values - median)))


def save_qc_flow(path: str | Path, config: dict, state_dict: dict, qc_spacing: float = QC_SPACING,
                 shape: Sequence[int] = QC_SHAPE, **fields) -> Path:
    """Write a QC flow file (atomically): ``{"config": IUNetFlow kwargs, "state_dict", "geometry": {"spacing_mm",
    "shape"} (the view it was trained on, :func:`qc_volume`), **fields}``; the shipped one (``models/qc_flow.pt``)
    has the fields ``threshold`` and ``lower_threshold`` (bits/dim) and ``calibration`` (a JSON string)."""
    geometry = {"spacing_mm": float(qc_spacing), "shape": [int(n) for n in shape]}
    save_atomically({"config": dict(config), "state_dict": state_dict, "geometry": geometry, **fields}, path)
    return Path(path)


def load_qc_flow(path: str | Path) -> tuple[IUNetFlow, dict]:
    """A QC flow file (:func:`save_qc_flow`): the flow, in eval mode, and the file's other fields (``config``
    included)."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    flow = IUNetFlow(**saved["config"])
    flow.load_state_dict(saved.pop("state_dict"))
    return flow.eval(), saved


class ScanQC:
    """A trained QC flow with its thresholds and the geometry of its view (:func:`qc_volume`; from :meth:`load`),
    scoring pre-processed cases in bits/dim.

    Typicality both ways: a case is unusual above ``threshold`` (unlike the training cases) and below
    ``lower_threshold`` (*more* likely than any training case: an image simpler than a brain, such as a near-empty
    CT slab, which a likelihood rewards; Kirichenko et al. 2020)."""

    def __init__(self, flow: IUNetFlow, threshold: float, device: str | torch.device = "cpu",
                 lower_threshold: float = -math.inf, spacing_mm: float = QC_SPACING,
                 shape: Sequence[int] = QC_SHAPE) -> None:
        self.spacing_mm, self.shape = float(spacing_mm), tuple(int(n) for n in shape)
        self.device = torch.device(device)
        self.flow = flow.to(self.device).eval()
        self.threshold = float(threshold)
        self.lower_threshold = float(lower_threshold)

    def verdict(self, score: float) -> str | None:
        """Why a score is unusual, or None."""
        if score > self.threshold:
            return "unlike the BraTS training cases"
        if score < self.lower_threshold:
            return "simpler than any BraTS training case (more likely than all of them: not a brain MRI?)"
        return None

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ScanQC:
        """A QC flow file with its threshold (:func:`save_qc_flow`; the shipped one is ``models/qc_flow.pt``)."""
        flow, fields = load_qc_flow(path)
        if "threshold" not in fields:
            raise ValueError(f"{path} is a QC flow without a threshold (a training run's flow.pt, not a shipped one).")
        if "geometry" not in fields:
            raise ValueError(f"{path} is a QC flow without its geometry (spacing_mm, shape); save it with "
                             "save_qc_flow.")
        return cls(flow, fields["threshold"], device, fields.get("lower_threshold", -math.inf),
                   fields["geometry"]["spacing_mm"], fields["geometry"]["shape"])

    @torch.no_grad()
    def score(self, image) -> float:
        """Bits/dim of a pre-processed case (see :func:`qc_levels`)."""
        levels = qc_levels(image, self.spacing_mm, self.shape)[None].float().to(self.device)
        return float(bits_per_dim(self.flow, levels)[0])


class ScanQCd(MapTransform):
    """Put ``data[qc_key] = {"score", "threshold", "flagged", "units"}`` for a pre-processed image (put it last in
    the pre-processing, after the intensity normalisation); a flagged case is logged as a warning, not refused.

    Args:
        keys: the image key (channel-first MetaTensor; its affine gives the voxel size).
        weights: the QC flow file (``models/qc_flow.pt`` of the bundle).
        enabled: False skips QC (``qc`` is then ``{"enabled": False}``).
        qc_key: where the result goes (``BatchSegmentation`` puts it into the report).
        device: device the flow runs on.
    """

    def __init__(self, keys: KeysCollection, weights: str | Path, enabled: bool = True, qc_key: str = CaseKeys.QC,
                 device: str | torch.device = "cpu", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.enabled = bool(enabled)
        self.qc_key = qc_key
        if self.enabled and not Path(weights).is_file():
            raise FileNotFoundError(f"scan QC weights {weights} not found: ship them with the bundle or set "
                                    f"scan_qc: false.")
        self.qc = ScanQC.load(weights, device) if self.enabled else None

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if self.qc is None:
                d[self.qc_key] = {"enabled": False}
                continue
            score = self.qc.score(d[key])
            why = self.qc.verdict(score)
            d[self.qc_key] = {"score": round(score, 4), "threshold": round(self.qc.threshold, 4),
                              "lower_threshold": round(self.qc.lower_threshold, 4), "flagged": why is not None,
                              "units": "bits/dim", **({"why": why} if why else {})}
            if why:
                logger.warning("scan QC: %s looks %s (%.3f bits/dim; typical: %.3f to %.3f): check the modalities, "
                               "their order and the pre-processing; the segmentation is still written.",
                               d.get("case", "this case"), why, score, self.qc.lower_threshold, self.qc.threshold)
        return d
