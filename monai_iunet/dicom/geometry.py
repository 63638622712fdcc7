"""The one conversion between DICOM's geometry and MONAI's: DICOM (and ITK, elastix, highdicom) place voxels in LPS
patient coordinates, MONAI's ``MetaTensor`` affines and NIfTI in RAS. Everything that crosses over goes through here.
"""

from __future__ import annotations

import numpy as np
from monai.data.utils import orientation_ras_lps

__all__ = ["ras_to_lps", "lps_to_ras", "world_map_lps_to_ras", "volume_to_metatensor", "array_to_volume"]


def ras_to_lps(affine) -> np.ndarray:
    """A voxel → RAS affine as voxel → LPS (MONAI's ``orientation_ras_lps``: the flip is its own inverse)."""
    return np.asarray(orientation_ras_lps(np.asarray(affine, dtype=np.float64)))


lps_to_ras = ras_to_lps


def world_map_lps_to_ras(transform) -> np.ndarray:
    """A 4×4 map between world points in LPS (e.g. an elastix/ITK transform) as the same map between RAS points."""
    flip = ras_to_lps(np.eye(4))
    return flip @ np.asarray(transform, dtype=np.float64) @ flip


def volume_to_metatensor(volume, name: str):
    """A ``highdicom.Volume`` (array ``(slices, rows, columns)``, affine to LPS) as a channel-first MONAI
    ``MetaTensor`` ``(1, columns, rows, slices)`` with an affine to RAS and the meta a reader would give: the voxel
    order of ITK, dcm2niix and MONAI's DICOM readers (slices along the normal of rows × columns, so the voxel axes
    are right-handed), so a NIfTI written from it has the grid users know."""
    import torch
    from monai.data import MetaTensor
    from monai.utils import SpaceKeys

    volume = volume.permute_spatial_axes([2, 1, 0]).ensure_handedness("RIGHT_HANDED", flip_axis=2)
    affine = lps_to_ras(volume.affine)
    array = np.ascontiguousarray(volume.array, dtype=np.float32)
    meta = {
        "filename_or_obj": name,
        "original_affine": affine,
        "spatial_shape": np.asarray(array.shape),
        "original_channel_dim": "no_channel",
        "space": SpaceKeys.RAS,
    }
    return MetaTensor(torch.from_numpy(array)[None], affine=torch.as_tensor(affine), meta=meta)


def array_to_volume(array: np.ndarray, affine, frame_of_reference_uid: str | None = None):
    """An ``(X, Y, Z)`` array on a voxel → RAS ``affine`` (a MONAI/NIfTI grid) as a ``highdicom.Volume`` in patient
    coordinates (LPS)."""
    import highdicom as hd

    return hd.Volume(np.asarray(array), ras_to_lps(affine), coordinate_system="PATIENT",
                     frame_of_reference_uid=frame_of_reference_uid)
