"""Synthetic BraTS-like cases: a brain-like head, a tumour with necrotic core / edema / enhancing rim, 4 MRI contrasts.

Nothing can be downloaded where this project is tested, so the bundle trains and is tested on these. Each case has
T1, T1ce, T2 and FLAIR volumes with tissue classes (scalp, CSF, grey and white matter, ventricles), a smooth
multiplicative bias field and Rician-like noise, and a tumour of random shape, size and position: a necrotic core
(label 1), an enhancing rim (label 4, or 3 with the 2023 convention; bright on T1ce) and peritumoral edema (label 2;
bright on T2 and FLAIR). Everything is deterministic given the seed.

    python -m monai_iunet.apps.brats.data.synthetic --output data/brats_synthetic --cases 12 --dicom 2
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from ....dicom.synthetic import (
    SeriesSpec,
    grid_affine,
    resample_volume,
    series_uid,
    study_ids,
    write_dicom_series,
    write_series,
)
from ..labels import ET_LABEL, MODALITIES, NAMING

__all__ = ["SyntheticCase", "make_case", "case_files", "write_dataset", "write_pacs_study"]

# Mean intensity of each tissue per modality (T1, T1ce, T2, FLAIR), loosely after real contrasts.
_TISSUES = {
    "background": (0.0, 0.0, 0.0, 0.0),
    "scalp": (0.9, 0.9, 0.5, 0.6),
    "csf": (0.2, 0.2, 1.0, 0.1),
    "grey": (0.55, 0.55, 0.6, 0.6),
    "white": (0.8, 0.8, 0.4, 0.5),
    "edema": (0.5, 0.5, 0.95, 1.15),
    "necrosis": (0.3, 0.3, 1.1, 0.65),
    "enhancing": (0.6, 1.5, 0.75, 0.85),
}


@dataclass
class SyntheticCase:
    images: dict[str, np.ndarray]  # modality -> float32 volume
    label: np.ndarray  # uint8 BraTS labels
    affine: np.ndarray  # 4×4 voxel -> RAS (mm)


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], coarse: int, amplitude: float) -> np.ndarray:
    """A smooth random field: coarse Gaussian noise upsampled with trilinear interpolation."""
    noise = torch.from_numpy(rng.standard_normal((1, 1, coarse, coarse, coarse)).astype(np.float32))
    return amplitude * F.interpolate(noise, size=shape, mode="trilinear", align_corners=True)[0, 0].numpy()


def make_case(
    rng: np.random.Generator, shape: tuple[int, int, int] = (64, 64, 64), spacing: float = 3.0, et_label: int = 4
) -> SyntheticCase:
    """One synthetic case on a ``shape`` grid with isotropic ``spacing`` mm voxels."""
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij"))
    head_radii = np.array([0.85, 0.9, 0.8], dtype=np.float32) * rng.uniform(0.92, 1.05, 3).astype(np.float32)
    r_head = np.sqrt(((grid / head_radii[:, None, None, None]) ** 2).sum(0))
    folds = 0.04 * np.sin(14 * grid[0] + rng.uniform(0, 6)) * np.sin(14 * grid[1] + rng.uniform(0, 6))

    tissue = np.zeros(shape, dtype=np.int8)  # indices into _TISSUES order
    names = list(_TISSUES)
    tissue[r_head < 1.0] = names.index("scalp")
    tissue[r_head < 0.9] = names.index("csf")
    tissue[r_head < 0.86 + folds] = names.index("grey")
    tissue[r_head < 0.68 + folds] = names.index("white")
    for side in (-1, 1):  # lateral ventricles
        centre = np.array([0.12 * side, 0.05, 0.05], dtype=np.float32)[:, None, None, None]
        r_vent = np.sqrt((((grid - centre) / np.array([0.07, 0.25, 0.12])[:, None, None, None]) ** 2).sum(0))
        tissue[r_vent < 1.0] = names.index("csf")

    # Tumour: a deformed sphere inside the brain; shells by normalised radius.
    radius = rng.uniform(0.18, 0.3)
    centre = rng.uniform(-0.35, 0.35, 3).astype(np.float32)[:, None, None, None]
    deformation = 1.0 + _smooth_field(rng, shape, 4, 0.18)
    r_tumour = np.sqrt(((grid - centre) ** 2).sum(0)) / (radius * deformation)
    inside_brain = r_head < 0.86
    core_edge, rim_edge, edema_edge = rng.uniform(0.3, 0.45), rng.uniform(0.7, 0.85), rng.uniform(1.3, 1.7)
    label = np.zeros(shape, dtype=np.uint8)
    label[(r_tumour < edema_edge) & inside_brain] = 2
    label[(r_tumour < rim_edge) & inside_brain] = et_label
    label[(r_tumour < core_edge) & inside_brain] = 1
    tissue[label == 2] = names.index("edema")
    tissue[label == et_label] = names.index("enhancing")
    tissue[label == 1] = names.index("necrosis")

    means = np.array([_TISSUES[n] for n in names], dtype=np.float32)  # (tissues, modalities)
    bias = np.exp(_smooth_field(rng, shape, 3, 0.12))
    head = r_head < 1.0
    images = {}
    for m, modality in enumerate(MODALITIES):
        clean = means[tissue, m] * (1 + _smooth_field(rng, shape, 8, 0.04))
        noisy = np.abs(clean * bias + rng.normal(0, 0.03, shape) + 1j * rng.normal(0, 0.03, shape))
        images[modality] = np.where(head, noisy, 0.3 * noisy).astype(np.float32) * 1000
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = -affine[:3, :3] @ (np.array(shape) - 1) / 2  # centre the volume at the origin
    return SyntheticCase(images, label, affine)


def case_files(case_dir: Path, case_id: str, naming: str = "2020") -> dict[str, Path]:
    """The BraTS file names of one case: ``{modality or 'seg': path}``."""
    suffixes = NAMING[naming]
    separator = "_" if naming == "2020" else "-"
    return {key: case_dir / f"{case_id}{separator}{suffix}.nii.gz" for key, suffix in suffixes.items()}


def _case_id(index: int, naming: str) -> str:
    return f"BraTS20_Training_{index:03d}" if naming == "2020" else f"BraTS-GLI-{index:05d}-000"


def write_dataset(
    output: str | Path,
    cases: int = 12,
    shape: tuple[int, int, int] = (64, 64, 64),
    spacing: float = 3.0,
    seed: int = 0,
    naming: str = "2020",
    dicom_cases: int = 0,
) -> list[Path]:
    """Write ``cases`` synthetic cases as BraTS NIfTI folders under ``output``; the first ``dicom_cases`` cases also
    as 4 DICOM MR series each (``<case>/dicom/<modality>/``). Returns the case folders."""
    if naming not in NAMING:
        raise ValueError(f"naming must be one of {tuple(NAMING)}, got {naming!r}.")

    output = Path(output)
    et_label = ET_LABEL[naming]
    rng = np.random.default_rng(seed)
    folders = []
    for index in range(1, cases + 1):
        case_id = _case_id(index, naming)
        case_dir = output / case_id
        case_dir.mkdir(parents=True, exist_ok=True)
        case = make_case(rng, shape, spacing, et_label)
        files = case_files(case_dir, case_id, naming)
        for modality in MODALITIES:
            nib.save(nib.Nifti1Image(case.images[modality], case.affine), files[modality])
        nib.save(nib.Nifti1Image(case.label, case.affine), files["seg"])
        if index <= dicom_cases:
            write_dicom_series(case.images, case.affine, case_dir / "dicom", patient_id=case_id)
        folders.append(case_dir)
    return folders


# A realistic brain-tumour protocol: (modality, description, voxel axes (RAS columns), spacing, thickness, 3D?).
_SAGITTAL = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float).T  # columns: posterior, inferior, right
_AXIAL = np.array([[1, 0, 0], [0, -1, 0], [0, 0, 1]], float).T
_CORONAL = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float).T
PACS_PROTOCOL = (
    ("t1", "SAG T1 MPRAGE", _SAGITTAL, (3.0, 3.0, 3.0), None, "3D"),
    ("t1ce", "AX T1 POST GAD", _AXIAL, (3.0, 3.0, 3.0), None, "3D"),
    ("t2", "AX T2 FSE", _AXIAL, (2.5, 2.5, 5.0), 4.0, "2D"),
    ("flair", "COR T2 FLAIR", _CORONAL, (3.0, 3.0, 4.0), None, "2D"),
)


def write_pacs_study(
    images: dict[str, np.ndarray], affine: np.ndarray, output: str | Path, patient_id: str, seed: int = 0
) -> dict[str, str]:
    """Write a case as a PACS export: one flat folder, random file names without extension, the four modalities
    as series on their own grids (sagittal 3D T1, axial 3D T1 post-contrast with a ContrastBolusAgent, axial 2D T2
    with 5 mm slices and gaps, coronal 2D FLAIR), a 3-plane localizer, a diffusion series (two b-values at the
    same positions) and an ADC map (DERIVED). Returns ``{modality: SeriesInstanceUID}`` of the four modalities."""
    rng = np.random.default_rng(seed)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    study = study_ids(patient_id)
    extent = np.abs(affine[:3, :3]) @ (np.array(next(iter(images.values())).shape) - 1)
    centre = affine[:3, :3] @ (np.array(next(iter(images.values())).shape) - 1) / 2 + affine[:3, 3]

    def name(_: int) -> str:
        return "".join(rng.choice(list("0123456789ABCDEF"), 16))

    uids = {}
    specs = []
    for modality, description, axes, spacing, thickness, acquisition in PACS_PROTOCOL:
        shape = np.maximum(np.round(np.abs(axes.T) @ extent / np.array(spacing)).astype(int) + 1, 1)
        target = grid_affine(axes, spacing, centre, shape)
        volume = resample_volume(images[modality], affine, target, shape)
        specs.append((modality, SeriesSpec(description, volume, target, acquisition,
                                           contrast_agent="Gadobutrol" if modality == "t1ce" else "",
                                           slice_thickness=thickness)))
    axial = grid_affine(_AXIAL, (4.0, 4.0, 6.0), centre, np.round(extent / (4, 4, 6)).astype(int) + 1)
    shape = (np.round(extent / (4, 4, 6)).astype(int) + 1)
    b0 = resample_volume(images["t2"], affine, axial, shape)
    specs.append((None, SeriesSpec("AX DWI B0 B1000", np.stack([b0, 0.4 * b0], -1), axial, "2D")))
    specs.append((None, SeriesSpec("AX ADC", 0.5 * b0, axial, "2D", image_type=("DERIVED", "PRIMARY", "ADC"))))
    for number, (modality, spec) in enumerate(specs, start=2):
        write_series(spec, output, study, number, name)
        if modality:
            uids[modality] = series_uid(study, spec, number)
    for plane, axes in enumerate((_AXIAL, _SAGITTAL, _CORONAL)):  # series 1: a 3-plane localizer, 3 slices each
        loc_affine = grid_affine(axes, (6.0, 6.0, 10.0), centre, (32, 32, 3))
        volume = resample_volume(images["t1"], affine, loc_affine, (32, 32, 3))
        write_series(SeriesSpec("3-PLANE LOC", volume, loc_affine, "2D"), output, study, 1, name, 3 * plane)
    return uids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="dataset folder to create")
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 64, 64), metavar=("X", "Y", "Z"))
    parser.add_argument("--spacing", type=float, default=3.0, help="isotropic voxel size in mm")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--naming", choices=tuple(NAMING), default="2020",
                        help="2020: BraTS 2018-2022 names and ET label 4; 2023: BraTS 2023 names and ET label 3")
    parser.add_argument("--dicom", type=int, default=0, metavar="N", help="also write the first N cases as DICOM")
    parser.add_argument("--datalist", help="also write a datalist JSON here (see monai_iunet.apps.brats.data.datalist)")
    args = parser.parse_args(argv)
    folders = write_dataset(args.output, args.cases, tuple(args.shape), args.spacing, args.seed, args.naming,
                            args.dicom)
    print(f"wrote {len(folders)} cases to {args.output}")
    if args.datalist:
        from .datalist import write_datalist

        write_datalist(args.output, args.datalist, seed=args.seed)
        print(f"wrote datalist {args.datalist}")


if __name__ == "__main__":
    main()
