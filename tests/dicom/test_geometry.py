"""The one RAS↔LPS / highdicom Volume↔MetaTensor conversion, checked in world coordinates: every voxel of the
converted image sits at the patient position highdicom gives it, whichever way the series' axes point."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from monai_iunet.dicom.geometry import (
    array_to_volume,
    lps_to_ras,
    ras_to_lps,
    volume_to_metatensor,
    world_map_lps_to_ras,
)


def oblique_volume(flip: list[int]) -> hd.Volume:
    """A (slices, rows, columns) volume on an oblique grid with unequal spacings, optionally with axes reversed."""
    rng = np.random.default_rng(3)
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [12, -20, 33], degrees=True).as_matrix() @ np.diag([3.0, 0.9, 1.1])
    affine[:3, 3] = [-80.0, 40.0, 12.5]
    volume = hd.Volume(rng.random((5, 6, 7), dtype=np.float32), affine, coordinate_system="PATIENT",
                       frame_of_reference_uid=hd.UID())
    return volume.flip_spatial(flip) if flip else volume


@pytest.mark.parametrize("flip", [[], [0], [1, 2], [0, 1, 2]])
def test_every_voxel_stays_at_its_patient_position(flip):
    volume = oblique_volume(flip)
    image = volume_to_metatensor(volume, "s")
    assert image.shape == (1, 7, 6, 5)  # columns, rows, slices: ITK's order
    directions = image.affine.numpy()[:3, :3]
    assert np.linalg.det(directions) > 0  # right-handed, slices along the normal of rows × columns
    index = np.stack(np.meshgrid(*[np.arange(n) for n in image.shape[1:]], indexing="ij"), 0).reshape(3, -1)
    ras = image.affine.numpy() @ np.vstack([index, np.ones(index.shape[1])])
    lps = ras_to_lps(np.eye(4)) @ ras
    source = np.rint(np.linalg.inv(volume.affine) @ lps).astype(int)[:3]
    assert np.allclose(np.linalg.inv(volume.affine) @ lps, np.vstack([source, np.ones(source.shape[1])]), atol=1e-6)
    assert np.array_equal(image[0].numpy().reshape(-1), volume.array[tuple(source)])


def test_array_to_volume_is_the_inverse():
    volume = oblique_volume([1])
    image = volume_to_metatensor(volume, "s")
    back = array_to_volume(image[0].numpy(), image.affine.numpy(), volume.frame_of_reference_uid)
    matched = back.match_geometry(volume, tol=1e-6)
    assert np.array_equal(matched.array, volume.array)
    assert np.allclose(matched.affine, volume.affine)


def test_ras_lps_flip_and_world_maps():
    affine = np.arange(16.0).reshape(4, 4)
    assert np.array_equal(lps_to_ras(ras_to_lps(affine)), affine)
    assert np.array_equal(ras_to_lps(affine)[:2], -affine[:2]) and np.array_equal(ras_to_lps(affine)[2:], affine[2:])
    shift = np.eye(4)
    shift[:3, 3] = [5.0, -2.0, 7.0]  # 5 mm to the patient's left, 2 mm anterior, 7 mm superior (LPS)
    ras_shift = world_map_lps_to_ras(shift)
    assert np.allclose(ras_shift[:3, 3], [-5.0, 2.0, 7.0]) and np.allclose(ras_shift[:3, :3], np.eye(3))
