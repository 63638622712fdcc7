from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from monai_iunet.apps.brats.data.datalist import write_datalist
from monai_iunet.apps.brats.data.synthetic import write_dataset
from monai_iunet.dicom.synthetic import SeriesSpec, grid_affine, study_ids, write_series

from .utils import CENTRE, RADIUS, SKIPPED_CHECKS, TRAIN_TINY, check, run_bundle, sphere

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

torch.set_num_threads(min(2, torch.get_num_threads()))

def pytest_terminal_summary(terminalreporter):
    if SKIPPED_CHECKS:
        terminalreporter.section("checks that could not run", sep="!")
        for line in sorted(set(SKIPPED_CHECKS)):
            terminalreporter.write_line(line)


def perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Move every parameter away from its (identity-at-init) value so tests see a non-trivial network."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    """5 synthetic BraTS cases of 32³ (case 1 also as DICOM): 3 for training, 2 for validation."""
    root = tmp_path_factory.mktemp("brats")
    write_dataset(root, cases=5, shape=(32, 32, 32), spacing=6.0, dicom_cases=1, seed=1)
    # 2 validation cases, so that a 2-rank run has one on each rank.
    datalist = write_datalist(root, root / "datalist.json", val_fraction=0.4)
    assert len(datalist["training"]) == 3 and len(datalist["validation"]) == 2
    return root


@pytest.fixture(scope="session")
def trained(dataset, tmp_path_factory) -> Path:
    """A bundle output folder with a model trained for one epoch."""
    out = tmp_path_factory.mktemp("trained")
    check(run_bundle(["configs/train.json"], dataset_dir=dataset, bundle_root=out, **TRAIN_TINY))
    return out


@pytest.fixture(scope="module")
def sphere_study(tmp_path_factory) -> Path:
    """Four series on four grids, all showing a bright sphere at CENTRE; the T1ce (reference) is oblique,
    anisotropic and 2D with gaps (3 mm thick every 5 mm), like a clinical post-contrast axial."""
    folder = tmp_path_factory.mktemp("sphere") / "STUDY"
    study = study_ids("SPHERE")
    rotation = np.linalg.qr(np.random.default_rng(11).normal(size=(3, 3)))[0]
    rotation *= np.sign(np.linalg.det(rotation))
    grids = {
        "SAG T1 MPRAGE": (np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], float).T, (2.0, 2.0, 2.0), (40, 40, 36), ""),
        "AX T1 POST GAD": (rotation, (1.6, 2.0, 5.0), (48, 40, 14), "Gadoterate"),
        "AX T2 FSE": (np.eye(3), (2.5, 2.5, 4.0), (32, 32, 18), ""),
        "COR T2 FLAIR": (np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float).T, (2.0, 2.0, 3.0), (40, 24, 40), ""),
    }
    for number, (description, (axes, spacing, shape, agent)) in enumerate(grids.items(), start=1):
        affine = grid_affine(axes, spacing, CENTRE + [3.0, -2.0, 4.0], shape)
        volume = np.where(sphere(affine, shape, CENTRE, RADIUS), 400.0, 100.0)
        spec = SeriesSpec(description, volume, affine, "2D" if "AX T1" in description else "3D", contrast_agent=agent,
                          slice_thickness=3.0 if "AX T1" in description else None)
        write_series(spec, folder, study, number, lambda k, n=number: f"IM{n:02d}{k:04d}")
    return folder
