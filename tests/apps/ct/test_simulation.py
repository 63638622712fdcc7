"""Foam phantoms and the simulated CT reconstructions of the post-processing task."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from monai_iunet.apps.ct.foam import FoamSpec, foam_phantom, render_foam, sample_foam
from monai_iunet.apps.ct.simulation import diagonal_rotation, main, simulate_fbp


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def test_foam_is_reproducible_and_its_holes_do_not_overlap():
    spec = FoamSpec()
    foam = sample_foam(np.random.default_rng(7), spec)
    again = sample_foam(np.random.default_rng(7), spec)
    np.testing.assert_array_equal(foam.holes, again.holes)
    assert len(foam.holes) > 50
    centres, radii = foam.holes[:, :3], foam.holes[:, 3]
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    gaps = distances - radii[:, None] - radii[None]
    np.fill_diagonal(gaps, np.inf)
    assert gaps.min() >= spec.min_gap - 1e-9
    # inside the cylinder, with the gap to its surface
    assert np.all(np.hypot(centres[:, 0], centres[:, 1]) + radii <= foam.radius - spec.min_gap + 1e-9)
    assert np.all(np.abs(centres[:, 2]) + radii <= foam.half_height - spec.min_gap + 1e-9)
    assert radii.max() > 4 * radii.min()  # heavy-tailed sizes


def test_rendering_is_anti_aliased_and_rotation_exact():
    foam = sample_foam(np.random.default_rng(1))
    volume = render_foam(foam, 24)
    assert volume.dtype == np.float32 and volume.min() == 0.0 and volume.max() == 1.0
    assert len(np.unique(volume)) == 9  # 2×2×2 sub-voxels: partial values at the edges
    np.testing.assert_array_equal(volume, foam_phantom(np.random.default_rng(1), 24))
    # rows: the grid's axes in foam coordinates; grid axis 0 = foam +y, grid axis 1 = foam -x
    quarter_turn = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    turned = render_foam(foam, 24, rotation=quarter_turn)
    # turned[i, j] sits at foam (x, y) = (-j, i) (centred indices): volume[n-1-j, i], i.e. rot90 clockwise
    np.testing.assert_array_equal(turned, np.rot90(volume, k=-1, axes=(0, 1)))


def test_diagonal_rotation_takes_the_perturbed_diagonal_to_the_last_axis():
    rotation = diagonal_rotation(np.random.default_rng(0), jitter_degrees=0.0)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(rotation[2], np.ones(3) / np.sqrt(3), atol=1e-12)
    jittered = diagonal_rotation(np.random.default_rng(0), jitter_degrees=3.0)
    angle = np.degrees(np.arccos(jittered[2] @ np.ones(3) / np.sqrt(3)))
    assert 0.1 < angle < 10


@pytest.mark.parametrize("backend", ["astra", "skimage"])
def test_fbp_recovers_the_phantom_from_many_clean_views_and_not_from_few_noisy_ones(backend):
    foam = sample_foam(np.random.default_rng(2))
    truth = render_foam(foam, 24)
    clean = simulate_fbp(foam, 24, np.random.default_rng(3), angles=180, photons=None, backend=backend)
    noisy = simulate_fbp(foam, 24, np.random.default_rng(3), angles=16, photons=500, backend=backend)
    assert psnr(clean, truth) > 22.5  # measured 23.8 (astra), 23.5 (skimage): partial-volume edges limit it
    assert psnr(noisy, truth) < psnr(clean, truth) - 3
    assert abs(float(clean.mean()) - float(truth.mean())) < 0.02  # the attenuation scale is undone


def test_backends_agree():
    foam = sample_foam(np.random.default_rng(4))
    a, b = (simulate_fbp(foam, 16, np.random.default_rng(5), angles=64, photons=None, backend=k)
            for k in ("astra", "skimage"))
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98
    with pytest.raises(ValueError, match="backend must be one of"):
        simulate_fbp(foam, 16, np.random.default_rng(5), backend="nope")


def test_dataset_command_writes_pairs_and_a_datalist(tmp_path):
    main(["--output", str(tmp_path), "--train", "2", "--val", "1", "--test", "1", "--size", "12", "--seed", "3"])
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    assert [len(datalist[k]) for k in ("training", "validation", "testing")] == [2, 1, 1]
    assert datalist["simulation"]["angles"] == 32 and datalist["simulation"]["size"] == 12
    images = [item["image"] for split in ("training", "validation", "testing") for item in datalist[split]]
    assert len(set(images)) == 4
    fbp, gt = (nib.load(tmp_path / datalist["testing"][0][k]) for k in ("image", "label"))
    assert fbp.shape == gt.shape == (12, 12, 12)
    np.testing.assert_array_equal(fbp.affine, gt.affine)
    assert 10 < psnr(np.asarray(fbp.dataobj), np.asarray(gt.dataobj)) < 40
    main(["--output", str(tmp_path / "mixed"), "--train", "3", "--val", "0", "--test", "0", "--size", "12", "16"])
    mixed = json.loads((tmp_path / "mixed" / "datalist.json").read_text())
    assert [nib.load(tmp_path / "mixed" / item["label"]).shape[0] for item in mixed["training"]] == [12, 16, 12]
    assert mixed["simulation"]["size"] == [12, 16]
    with pytest.raises(SystemExit, match="--size must be between 8 and 256"):
        main(["--output", str(tmp_path / "x"), "--size", "512"])
