"""``<case>_overview.png``: what a clinician looks at first. The reference modality in three planes (axial, coronal,
sagittal, radiological display: patient left on the right) through the centre of the predicted tumour, with the
contours of the whole tumour, tumour core and enhancing tumour, and below them the volumes in mL and the scan-QC and
uncertainty verdicts in words."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.data import MetaTensor
from monai.transforms import Orientation, ResampleToMatch

from .labels import region_labels

__all__ = ["write_overview", "verdicts"]

# region, colour (matplotlib names): the colours BraTS figures commonly use
CONTOURS = (("WT", "yellow"), ("TC", "red"), ("ET", "cyan"))


def verdicts(entry: dict) -> list[str]:
    """One line each for the scan QC and the uncertainty of a report entry (``BatchSegmentation``'s), in words."""
    lines = []
    qc = entry.get("qc") or {}
    if qc.get("score") is not None:
        lines.append(("Scan QC: UNUSUAL input, check the series and their order" if qc.get("flagged") else
                      "Scan QC: the input looks like the training cases") + f" ({qc['score']:.2f} bits/dim)")
    unc = entry.get("uncertainty") or {}
    if unc.get("score") is not None:
        lines.append(("Uncertainty: HIGH, the segmentation is likely wrong in places, review it" if unc.get("flagged")
                      else "Uncertainty: low") + f" (score {unc['score']:.3f}, flagged above {unc['threshold']:.3f})")
    elif unc:
        lines.append(f"Uncertainty: {unc.get('why', 'not measured')}")
    return lines


def write_overview(image: MetaTensor, label: MetaTensor, path: str | Path, et_label: int = 4, entry: dict | None = None,
                   channel: int = 1) -> Path:
    """Draw the overview of one case.

    Args:
        image: the pre-processed image (C, X, Y, Z) with its affine (any grid: it is resampled onto the label's).
        label: the BraTS label map (1, X, Y, Z) on the input grid.
        path: the PNG to write.
        et_label: the enhancing-tumour label.
        entry: the case's report entry (``volumes_ml``, ``qc``, ``uncertainty`` are shown when present).
        channel: the image channel to show (the reference modality).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    entry = entry or {}
    background = ResampleToMatch(mode="bilinear")(image[channel : channel + 1], label)
    to_ras = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
    background, label_ras = to_ras(background)[0].numpy(), to_ras(label)[0].numpy()
    spacing = np.linalg.norm(np.asarray(to_ras(label).affine)[:3, :3], axis=0)
    masks = {region: np.isin(label_ras, values) for region, values in region_labels(et_label).items()}
    centre = np.argwhere(masks["WT"]).mean(0) if masks["WT"].any() else np.array(label_ras.shape) / 2
    centre = centre.round().astype(int)
    low, high = np.percentile(background[background != 0], (1, 99.5)) if (background != 0).any() else (0.0, 1.0)
    background = np.where(background == 0, low, background)  # outside the brain is 0 after normalisation: black
    # (name, slicer, the spacing of the displayed rows and columns); arrays are (R, A, S)
    planes = (("axial", lambda a: a[:, :, centre[2]].T, (spacing[1], spacing[0])),
              ("coronal", lambda a: a[:, centre[1], :].T, (spacing[2], spacing[0])),
              ("sagittal", lambda a: a[centre[0], :, :].T, (spacing[2], spacing[1])))
    figure, axes = plt.subplots(1, 3, figsize=(12, 5.2), facecolor="black")
    for ax, (name, cut, (row, col)) in zip(axes, planes):
        # radiological convention for axial/coronal: patient right on the viewer's left (R increases to the left)
        def show(a, cut=cut, flip=name != "sagittal"):
            return np.flip(cut(a), 1) if flip else cut(a)

        ax.imshow(show(background), cmap="gray", vmin=low, vmax=high, origin="lower", aspect=row / col)
        for region, colour in CONTOURS:
            if show(masks[region]).any():
                ax.contour(show(masks[region]).astype(float), levels=[0.5], colors=colour, linewidths=1.0)
        ax.set_title(name, color="white")
        ax.axis("off")
    volumes = entry.get("volumes_ml") or {}
    lines = ["  ".join(f"{name} {volumes[name]:.1f} mL" for name in ("WT", "TC", "ET", "NCR", "ED") if name in volumes)]
    lines += verdicts(entry)
    lines.append("contours: whole tumour yellow, tumour core red, enhancing tumour cyan; research use only")
    figure.text(0.01, 0.02, "\n".join(lines), color="white", fontsize=9, family="monospace", va="bottom")
    figure.subplots_adjust(left=0.01, right=0.99, top=0.93, bottom=0.2, wspace=0.02)
    path = Path(path)
    figure.savefig(path, dpi=100, facecolor="black")
    plt.close(figure)
    return path
