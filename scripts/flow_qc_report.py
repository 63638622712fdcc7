#!/usr/bin/env python
"""Evaluate the scan-QC flow against the intensity-histogram baseline (issue 20): ``docs/benchmarks/flow_qc.md``.

    python -m scripts.flow_qc_report        # after scripts/train_flow_qc.py (prepare, the three folds, all, ship)

In-distribution: the 24 real BraTS cases, each scored by the fold flow that never saw it. Out-of-distribution,
built from real data: each held-out case with a shift (scored by its fold's flow), and inputs that are not BraTS
cases at all (scored by every fold's flow): the real raw DICOM T1 series as all four modalities, unstripped; a
real CT in every slot; the project's synthetic phantoms. Every input goes through the bundle's own pre-processing
(``inference.json``, skull stripping off so that what reaches QC is the shift itself). The histogram baseline
(after Vasiliuk et al. 2023: intensity-histogram features, PCA, Mahalanobis distance) is fitted on the same fold's
training cases. Positives are OOD: AUROC, and FPR@95%TPR = the fraction of in-distribution cases flagged at the
threshold that catches 95 % of that shift's cases.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
from monai.transforms import RandBiasField
from tqdm import tqdm

from monai_iunet.apps.brats.labels import MODALITIES
from monai_iunet.apps.brats.qc import INTENSITY_RANGE, LEVELS, checked_input, quantise
from monai_iunet.apps.brats.transforms import LoadModalitiesd
from monai_iunet.dicom.geometry import volume_to_metatensor
from monai_iunet.dicom.series import index_dicom_files, read_series_volume
from scripts import DOCS
from scripts.train_flow_qc import (
    DATA,
    SHIPPED,
    WORK,
    case_dirs,
    folds,
    levels_of,
    load_flow,
    score,
)

BINS = 64


def brain(image: torch.Tensor) -> torch.Tensor:
    return (image != 0).any(0)


def shifted(image: torch.Tensor, shift: str, rng: np.random.Generator) -> torch.Tensor:
    """One case (4, X, Y, Z) at 1 mm, skull-stripped, with a shift; artefacts of the acquisition are applied and
    then the original brain mask again, as if the shifted scan had been skull-stripped the same way."""
    mask = brain(image)
    x = image.clone()
    if shift == "wrong order":
        return x.flip(0)  # FLAIR, T2, T1ce, T1
    if shift == "T1 in every slot":
        return x[:1].repeat(4, 1, 1, 1)
    if shift == "noise":
        sigma = 0.2 * torch.stack([c[mask].mean() for c in x])[:, None, None, None]
        x = (x + sigma * torch.from_numpy(rng.standard_normal(x.shape)).float()).abs()
    elif shift == "motion ghosting":  # every other phase-encoding (A-P) line weakened: an N/2 ghost
        k = torch.fft.fftn(x, dim=(1, 2, 3))
        k[:, :, 1::2] *= 0.5
        x = torch.fft.ifftn(k, dim=(1, 2, 3)).abs().float()
    elif shift == "bias field":
        field = RandBiasField(degree=3, coeff_range=(0.6, 0.6), prob=1.0)
        field.set_random_state(int(rng.integers(1 << 30)))
        x = torch.as_tensor(field(x[:1] * 0 + 1)) * x  # one field for all channels
    elif shift == "thick slices":  # 6 mm slices: each slab of 6 averaged, then back onto 1 mm
        z = x.shape[-1] - x.shape[-1] % 6
        slabs = x[..., :z].reshape(*x.shape[:3], z // 6, 6).mean(-1)
        x[..., :z] = slabs.repeat_interleave(6, dim=-1)
    else:
        raise ValueError(shift)
    return x * mask


CASE_SHIFTS = ("wrong order", "T1 in every slot", "noise", "motion ghosting", "bias field", "thick slices")


def foreign_inputs() -> dict[str, list]:
    """Inputs that are not BraTS cases: (shift name, [MetaTensor (4, ...)])."""
    from monai_iunet.apps.brats.data.synthetic import make_case

    heads = []
    for name in ("enhanced_siemens_xa30_t1w_tfl", "siemens_prisma_t1_fl2d_sag_HFS", "ge_signa_3d_ax_t1_mprage_oblique"):
        (series,) = [s for s in index_dicom_files(DATA / "dicom" / name) if not s.excluded]
        heads.append(volume_to_metatensor(read_series_volume(series), name).repeat(4, 1, 1, 1))
    (ct,) = index_dicom_files(DATA / "seg" / "dcmqi_liver_ct" / "ct_source")
    # a 3-slice abdominal CT slab, the only CT here: the bundle refuses it as a volume (< 8 slices), QC sees it anyway
    ct_image = volume_to_metatensor(read_series_volume(dataclasses.replace(ct, excluded=None)), "ct")
    ct_image = ct_image - ct_image.min()  # HU, shifted so that air is 0 like an MR background
    phantoms = []
    for seed in range(3):
        case = make_case(np.random.default_rng(100 + seed), (64, 64, 64), 3.0)
        from monai.data import MetaTensor

        phantoms.append(MetaTensor(torch.stack([torch.from_numpy(case.images[m]) for m in MODALITIES]),
                                   affine=torch.as_tensor(case.affine)))
    return {"raw unstripped head (real DICOM T1)": heads, "CT in every slot (real)": [ct_image.repeat(4, 1, 1, 1)],
            "synthetic phantoms": phantoms}


def histogram_features(levels: torch.Tensor) -> np.ndarray:
    """Per-channel intensity histograms (densities) of the voxels that are not background."""
    values = levels.float()
    inside = (values != quantise(torch.zeros(1))).any(0)
    features = []
    for channel in values:
        counts = torch.histc(channel[inside], bins=BINS, min=0, max=LEVELS - 1) if inside.any() else torch.zeros(BINS)
        features.append((counts / counts.sum().clamp_min(1)).numpy())
    return np.concatenate(features)


class HistogramBaseline:
    """PCA of the training cases' histogram features, Mahalanobis distance in that space."""

    def __init__(self, features: np.ndarray, components: int = 8) -> None:
        self.mean = features.mean(0)
        _, singular, vt = np.linalg.svd(features - self.mean, full_matrices=False)
        self.components = vt[:components]
        self.variance = (singular[:components] ** 2) / (len(features) - 1) + 1e-8

    def score(self, feature: np.ndarray) -> float:
        projected = self.components @ (feature - self.mean)
        return float(np.sqrt((projected**2 / self.variance).sum()))


def auroc(id_scores, ood_scores) -> float:
    """P(OOD score > ID score), ties counted half (= ROC AUC)."""
    a, b = np.asarray(ood_scores)[:, None], np.asarray(id_scores)[None, :]
    return float(((a > b).mean() + 0.5 * (a == b).mean()))


def fpr_at_95_tpr(id_scores, ood_scores) -> float:
    threshold = np.quantile(np.asarray(ood_scores), 0.05)  # 95 % of the OOD cases at or above it
    return float((np.asarray(id_scores) >= threshold).mean())


def main() -> None:
    rng = np.random.default_rng(0)
    cases = case_dirs()
    id_levels = torch.load(WORK / "brats_levels.pt", weights_only=True)
    rest = checked_input(load=False)
    loader = LoadModalitiesd("image")
    flows = [load_flow(WORK / f"fold{k}" / "flow.pt") for k in range(len(folds()))]
    baselines = []
    for held_out in folds():
        train = [c for c in sorted(id_levels) if c not in held_out]
        baselines.append(HistogramBaseline(np.stack([histogram_features(id_levels[c]) for c in train])))
    rows = {"in distribution (held-out real BraTS)": []}
    fold_of = {c: k for k, held in enumerate(folds()) for c in held}
    for name in tqdm(sorted(id_levels), desc="in-distribution and shifted cases", unit="case"):
        k = fold_of[name]
        rows["in distribution (held-out real BraTS)"].append(
            (name, score(flows[k], id_levels[name]), baselines[k].score(histogram_features(id_levels[name]))))
        item = {"image": [str(next(cases[name].glob(f"*_{m}.nii.gz"))) for m in MODALITIES], "case": name}
        image = loader(item)["image"]
        for shift in CASE_SHIFTS:
            levels = levels_of({"image": type(image)(shifted(image.as_tensor(), shift, rng), meta=image.meta)}, rest)
            rows.setdefault(shift, []).append(
                (name, score(flows[k], levels), baselines[k].score(histogram_features(levels))))
    for shift, images in tqdm(foreign_inputs().items(), desc="foreign inputs"):
        for i, image in enumerate(images):
            levels = levels_of({"image": image}, rest)
            for k in range(len(flows)):
                rows.setdefault(shift, []).append(
                    (f"{i}/fold{k}", score(flows[k], levels), baselines[k].score(histogram_features(levels))))
    in_dist = rows["in distribution (held-out real BraTS)"]
    id_flow, id_hist = [r[1] for r in in_dist], [r[2] for r in in_dist]
    shipped = torch.load(SHIPPED, weights_only=True)
    threshold = float(shipped["threshold"])
    results = {"threshold_bits_per_dim": threshold, "shifts": {}}
    for shift, values in rows.items():
        flow_scores, hist_scores = [v[1] for v in values], [v[2] for v in values]
        entry = {"n": len(values), "flow_bits_per_dim_median": float(np.median(flow_scores)),
                 "flagged_by_shipped_threshold": float(np.mean(np.asarray(flow_scores) > threshold)),
                 "scores": [[v[0], round(v[1], 4), round(v[2], 3)] for v in values]}
        if shift != "in distribution (held-out real BraTS)":
            entry.update({
                "flow_auroc": auroc(id_flow, flow_scores), "histogram_auroc": auroc(id_hist, hist_scores),
                "flow_fpr95": fpr_at_95_tpr(id_flow, flow_scores),
                "histogram_fpr95": fpr_at_95_tpr(id_hist, hist_scores),
                # Kirichenko et al.: OOD data a flow finds *more* likely than the typical real case
                "more_likely_than_id_median": float(np.mean(np.asarray(flow_scores) < np.median(id_flow))),
            })
        results["shifts"][shift] = entry
    (DOCS / "flow_qc.json").write_text(json.dumps(results, indent=1))
    figure(rows, threshold)
    samples_figure()
    write_markdown(results)


def figure(rows: dict, threshold: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.5), sharey=True)
    for ax, column, title in ((axes[0], 1, "flow: bits/dim"), (axes[1], 2, "histogram baseline: Mahalanobis")):
        for i, name in enumerate(names):
            values = [v[column] for v in rows[name]]
            jitter = np.random.default_rng(i).uniform(-0.15, 0.15, len(values))
            ax.scatter(values, i + jitter, s=12, color="tab:green" if i == 0 else "tab:red", alpha=0.7)
        if column == 1:
            ax.axvline(threshold, color="k", ls="--", lw=0.8, label=f"shipped threshold {threshold:.3f}")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_yticks(range(len(names)), names, fontsize=8)
    fig.suptitle("Scan QC: in-distribution (green, cross-validated) vs shifted/foreign inputs (red)", fontsize=10)
    fig.tight_layout()
    fig.savefig(DOCS / "flow_qc.png", dpi=100)
    plt.close(fig)


def samples_figure() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from monai_iunet.apps.brats.qc import QC_SHAPE

    flow = load_flow(SHIPPED)
    torch.manual_seed(0)
    with torch.no_grad():
        samples = flow.sample(3, QC_SHAPE, temperature=0.7).clamp(*INTENSITY_RANGE)
    real = torch.load(WORK / "brats_levels.pt", weights_only=True)
    low, high = INTENSITY_RANGE
    example = next(iter(real.values())).float() / LEVELS * (high - low) + low
    volumes = [("real case", example)] + [(f"sample {i + 1} (T=0.7)", s) for i, s in enumerate(samples)]
    fig, axes = plt.subplots(len(volumes), 4, figsize=(8, 2.2 * len(volumes)))
    for row, (title, volume) in enumerate(volumes):
        for col, modality in enumerate(MODALITIES):
            ax = axes[row, col]
            ax.imshow(np.rot90(volume[col, :, :, QC_SHAPE[2] // 2].numpy()), cmap="gray", vmin=-2, vmax=4)
            ax.set_title(f"{title}: {modality}" if col == 0 else modality, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(DOCS / "flow_qc_samples.png", dpi=90)
    plt.close(fig)


def write_markdown(results: dict) -> None:
    calibration = json.loads(torch.load(SHIPPED, weights_only=True)["calibration"])
    shifts = results["shifts"]
    ident = shifts["in distribution (held-out real BraTS)"]
    lines = [
        "# Scan QC: the iUNet flow against the intensity-histogram baseline",
        "",
        "Generated by `scripts/flow_qc_report.py` (flows from `scripts/train_flow_qc.py`; recipe and folds fixed",
        "before training: `configs/splits/flow_qc_folds.json`). Scale: bits/dim of an 8-bit quantisation of the",
        "bundle's normalised image (each channel z-scored over the brain, clipped to [-4, 4] SD) at 4 mm, uniformly",
        "dequantised (`monai_iunet/apps/brats/qc.py` says why).",
        "",
        f"- In-distribution: the 24 real BraTS cases, each scored by the fold flow that did not train on it: median "
        f"**{ident['flow_bits_per_dim_median']:.3f} bits/dim** (range "
        f"{min(s[1] for s in ident['scores']):.3f}–{max(s[1] for s in ident['scores']):.3f}).",
        f"- Shipped flow: trained on all 24 cases ({calibration['training_s']:.0f} s, one CPU thread); threshold "
        f"**{results['threshold_bits_per_dim']:.3f} bits/dim** = {calibration['rule']}; "
        f"{len(calibration['flagged_out_of_fold'])} of 24 out-of-fold scores lie above it.",
        "",
        "| shift | n | flow AUROC | histogram AUROC | flow FPR@95%TPR | histogram FPR@95%TPR | flagged by shipped "
        "threshold | more likely than median ID |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for shift, entry in shifts.items():
        if shift.startswith("in distribution"):
            continue
        lines.append(f"| {shift} | {entry['n']} | {entry['flow_auroc']:.3f} | {entry['histogram_auroc']:.3f} | "
                     f"{entry['flow_fpr95']:.2f} | {entry['histogram_fpr95']:.2f} | "
                     f"{entry['flagged_by_shipped_threshold']:.0%} | {entry['more_likely_than_id_median']:.0%} |")
    lines += ["", f"In-distribution cases flagged by the shipped threshold (their out-of-fold scores): "
              f"{ident['flagged_by_shipped_threshold']:.0%}.", "",
              "Positives are OOD. FPR@95%TPR: the fraction of in-distribution cases flagged at the threshold that "
              "catches 95 % of that shift's inputs (lower is better). Case shifts are scored by the fold flow of "
              "their case; foreign inputs by each of the three fold flows (n = inputs × 3). Noise, ghosting, bias "
              "field and thick slices are applied at 1 mm and masked with the case's own brain mask, as if the "
              "shifted scan had been skull-stripped the same way.", "",
              "![scores](flow_qc.png)", "", "Samples of the shipped flow (temperature 0.7, axial mid-slice at 4 mm) "
              "next to a real case:", "", "![samples](flow_qc_samples.png)", ""]
    (DOCS / "flow_qc.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
