"""``<case>_overview.png``: what a clinician looks at first. The reference modality in three planes (axial, coronal,
sagittal, radiological display: patient left on the right) through the centre of the predicted tumour, with the
contours of the whole tumour, tumour core and enhancing tumour, and below them the volumes in mL and the scan-QC and
uncertainty verdicts in words."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from monai.data import MetaTensor
from monai.transforms import Orientation, ResampleToMatch

from .cases import RESEARCH_USE
from .findings import case_findings
from .labels import region_labels

__all__ = ["write_overview", "draw_planes", "ras_volume", "read_rgb"]

# region, colour (matplotlib names): the colours BraTS figures commonly use
CONTOURS = (("WT", "yellow"), ("TC", "red"), ("ET", "cyan"))


def read_rgb(path: str | Path) -> np.ndarray:
    """A PNG written by :func:`write_overview` as an RGB array (H, W, 3) of uint8."""
    import matplotlib.image

    pixels = matplotlib.image.imread(str(path))
    return np.round(pixels[..., :3] * 255).astype(np.uint8) if pixels.dtype != np.uint8 else pixels[..., :3]


def ras_volume(image) -> tuple[np.ndarray, np.ndarray]:
    """A 3D image (a ``MetaTensor`` with one channel, or a NIfTI file) as a numpy volume in RAS axes, and its voxel
    spacing in mm, ready for :func:`draw_planes`."""
    if not isinstance(image, MetaTensor):
        from monai.transforms import LoadImage

        image = LoadImage(image_only=True, ensure_channel_first=True)(str(image))
    ras = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))(image)
    return np.asarray(ras[0], dtype=float), np.linalg.norm(np.asarray(ras.affine)[:3, :3], axis=0)


def draw_planes(axes, background: np.ndarray, contours: list[tuple[np.ndarray, str]], centre, spacing,
                window: tuple[float, float], titles: tuple[str, str, str] = ("axial", "coronal", "sagittal"),
                title_colour: str = "white") -> None:
    """The axial, coronal and sagittal planes through ``centre`` of a RAS volume (:func:`ras_volume`) on three
    matplotlib axes, in the radiological display (patient right on the viewer's left in axial and coronal), each at
    its true aspect ratio, with each ``(mask, colour)`` drawn as a contour.

    Args:
        axes: three matplotlib axes.
        background: the grey-scale volume (R, A, S).
        contours: masks on the background's grid and their matplotlib colours.
        centre: the voxel the three planes go through.
        spacing: voxel spacing (mm) along R, A, S.
        window: grey values shown black and white.
    """
    r, a, s = (int(round(c)) for c in centre)
    # (cut, spacing of the displayed rows and columns, flip left-right)
    planes = ((lambda v: v[:, :, s].T, (spacing[1], spacing[0]), True),
              (lambda v: v[:, a, :].T, (spacing[2], spacing[0]), True),
              (lambda v: v[r, :, :].T, (spacing[2], spacing[1]), False))
    for ax, title, (cut, (row, col), flip) in zip(axes, titles, planes):
        def show(volume, cut=cut, flip=flip):
            return np.flip(cut(volume), 1) if flip else cut(volume)

        ax.imshow(show(background), cmap="gray", vmin=window[0], vmax=window[1], origin="lower", aspect=row / col)
        for mask, colour in contours:
            if show(mask).any():
                ax.contour(show(mask).astype(float), levels=[0.5], colors=colour, linewidths=1.0)
        ax.set_title(title, color=title_colour)
        ax.axis("off")


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
    # outside the network's (cropped) grid there is no image: zeros, not its border values smeared outwards
    resample = ResampleToMatch(mode="bilinear", padding_mode="zeros")
    background, _ = ras_volume(resample(image[channel : channel + 1], label))
    label_ras, spacing = ras_volume(label)
    masks = {region: np.isin(label_ras, values) for region, values in region_labels(et_label).items()}
    centre = np.argwhere(masks["WT"]).mean(0) if masks["WT"].any() else np.array(label_ras.shape) / 2
    low, high = np.percentile(background[background != 0], (1, 99.5)) if (background != 0).any() else (0.0, 1.0)
    background = np.where(background == 0, low, background)  # outside the brain is 0 after normalisation: black
    lines = [str(finding) for finding in case_findings(entry) if finding.name != "review"]
    lines.append(f"contours: whole tumour yellow, tumour core red, enhancing tumour cyan; {RESEARCH_USE}")
    lines = [part for line in lines for part in textwrap.wrap(line, 150, subsequent_indent="  ")]  # the page's width
    text_inches = 0.16 * len(lines) + 0.15  # the text below the planes grows the page, never overlaps them
    figure, axes = plt.subplots(1, 3, figsize=(12, 4.2 + text_inches), facecolor="black")
    draw_planes(axes, background, [(masks[region], colour) for region, colour in CONTOURS], centre, spacing,
                (low, high))
    figure.text(0.01, 0.02, "\n".join(lines), color="white", fontsize=9, family="monospace", va="bottom")
    figure.subplots_adjust(left=0.01, right=0.99, top=1 - 0.35 / (4.2 + text_inches),
                           bottom=text_inches / (4.2 + text_inches), wspace=0.02)
    path = Path(path)
    figure.savefig(path, dpi=100, facecolor="black")
    plt.close(figure)
    return path
