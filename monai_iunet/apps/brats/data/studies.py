"""A MONAI Label studies folder from a BraTS-style dataset: one 4-channel NIfTI per case, labels in ``labels/final``.

MONAI Label sends one image per request, so each case's four modalities are stacked into one X×Y×Z×4 NIfTI in the
bundle's channel order (T1, T1ce, T2, FLAIR) on the first modality's grid; a case's segmentation, if it has one,
goes to ``labels/final/<case>.nii.gz``, where MONAI Label looks for finished labels to train on. (The Medical
Segmentation Decathlon's Task01 4D files are in another order — FLAIR, T1, T1ce, T2 — and need reordering.)

    python -m monai_iunet.apps.brats.data.studies --dataset-dir /data/BraTS2021 --output studies [--no-labels]
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from .datalist import find_cases

__all__ = ["stack_modalities", "write_studies"]


def stack_modalities(images: Sequence[str | Path], output: str | Path) -> Path:
    """Write the modality files of one case as one multi-channel NIfTI (channels in the given order, last axis).
    The modalities must share a grid: a different shape or affine raises ``ValueError`` naming the file."""
    first = nib.load(images[0])
    volumes = [np.asarray(first.dataobj, dtype=np.float32)]
    for path in images[1:]:
        image = nib.load(path)
        if image.shape != first.shape or not np.allclose(image.affine, first.affine, atol=1e-3):
            raise ValueError(f"{path} is not on the grid of {images[0]} ({image.shape} vs {first.shape} voxels or "
                             "another affine); resample the modalities to one grid first.")
        volumes.append(np.asarray(image.dataobj, dtype=np.float32))
    header = first.header.copy()
    header.set_data_dtype(np.float32)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.stack(volumes, -1), first.affine, header), output)
    return output


def write_studies(dataset_dir: str | Path, output: str | Path, labels: bool = True) -> list[Path]:
    """One ``<case>.nii.gz`` per case of ``dataset_dir`` (see :func:`.datalist.find_cases`) in
    ``output``, and with ``labels`` its segmentation as ``output/labels/final/<case>.nii.gz``. Returns the images."""
    dataset_dir, output = Path(dataset_dir), Path(output)
    written = []
    for case in tqdm(find_cases(dataset_dir), desc="stacking", unit="case"):
        written.append(stack_modalities([dataset_dir / p for p in case["image"]], output / f"{case['case']}.nii.gz"))
        if labels and "label" in case:
            final = output / "labels" / "final" / f"{case['case']}.nii.gz"
            final.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dataset_dir / case["label"], final)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset-dir", required=True, help="BraTS-style dataset (one folder per case)")
    parser.add_argument("--output", required=True, help="MONAI Label studies folder to write")
    parser.add_argument("--no-labels", action="store_true", help="do not copy segmentations to labels/final")
    args = parser.parse_args(argv)
    written = write_studies(args.dataset_dir, args.output, labels=not args.no_labels)
    print(f"wrote {len(written)} 4-channel images (T1, T1ce, T2, FLAIR) to {args.output}")


if __name__ == "__main__":
    main()
