"""RANO bidimensional measurements on shapes with known diameters: ellipses on isotropic, anisotropic and oblique
grids, two lesions, non-measurable lesions, and the transform on a label map."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from monai_iunet.apps.brats.rano import RanoMeasurementsd, measure_lesions, rano_measurements


def rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    t = np.radians(degrees)
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def grid(shape, spacing, directions=np.eye(3), origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = np.asarray(directions) @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


def ellipsoid(affine, shape, centre, semi_axes_mm, axes=np.eye(3)) -> np.ndarray:
    """Voxels whose centres lie inside the ellipsoid with the given semi-axes along the columns of ``axes``
    (patient mm)."""
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3).astype(float)
    world = index @ affine[:3, :3].T + affine[:3, 3] - np.asarray(centre)
    local = world @ np.asarray(axes)
    return ((local / np.asarray(semi_axes_mm)) ** 2).sum(-1).reshape(shape) <= 1.0


def centre_of(affine, shape):
    return affine[:3, :3] @ ((np.asarray(shape) - 1) / 2) + affine[:3, 3]


# (spacing, tolerance mm): a diameter is exact to about one voxel's width
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.5, 1.0, 3.0), (1.2, 0.7, 5.0)])
def test_an_ellipse_measures_its_diameters_on_any_voxel_spacing(spacing):
    shape = tuple(int(70 / s) for s in spacing)
    affine = grid(shape, spacing)
    # 40 x 20 mm in the axial plane, 30 mm high (thick slices off its centre still cut it at ~full size), long axis
    # rotated 30 degrees in the plane
    axes = rotation([0, 0, 1], 30)
    mask = ellipsoid(affine, shape, centre_of(affine, shape), (20, 10, 15), axes)
    (lesion,) = measure_lesions(mask, affine)
    tolerance = max(spacing[:2]) * 1.5
    assert lesion["longest_mm"] == pytest.approx(40, abs=tolerance)
    assert lesion["perpendicular_mm"] == pytest.approx(20, abs=tolerance)
    assert lesion["product_mm2"] == pytest.approx(lesion["longest_mm"] * lesion["perpendicular_mm"], rel=1e-3)
    assert lesion["axial_axis"] == 2 and lesion["measurable"]


def test_an_oblique_grid_measures_in_patient_millimetres():
    # the grid tilted 20 degrees about L-R and its axes permuted (slices along voxel axis 0): the slices are still
    # the planes closest to axial, and an ellipse lying in them measures its true diameters
    tilt = rotation([1, 0, 0], 20)
    directions = tilt @ np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], float)  # voxel axis 0 along S
    spacing = (3.0, 0.8, 0.8)
    shape = (24, 90, 90)
    affine = grid(shape, spacing, directions, origin=(-30, -40, 10))
    axes = tilt @ rotation([0, 0, 1], 60)
    mask = ellipsoid(affine, shape, centre_of(affine, shape), (15, 9, 4), axes)
    (lesion,) = measure_lesions(mask, affine)
    assert lesion["axial_axis"] == 0
    assert lesion["longest_mm"] == pytest.approx(30, abs=1.5)
    assert lesion["perpendicular_mm"] == pytest.approx(18, abs=1.5)


def test_two_lesions_and_a_small_one_sum_only_the_measurable():
    spacing = (1.0, 1.0, 2.0)
    shape = (100, 60, 20)
    affine = grid(shape, spacing)
    label = np.zeros(shape, np.uint8)
    label[ellipsoid(affine, shape, (25, 30, 20), (12, 8, 4))] = 4  # 24 x 16 mm
    label[ellipsoid(affine, shape, (70, 30, 20), (10, 10, 4))] = 4  # 20 x 20 mm
    label[ellipsoid(affine, shape, (92, 10, 20), (6, 3, 3))] = 4  # 12 x 6 mm: not measurable
    label[ellipsoid(affine, shape, (50, 50, 20), (10, 10, 4))] = 1  # necrotic core is not enhancing tumour
    record = rano_measurements(label, affine, et_label=4)
    round_one, oval, small = record["lesions"]  # largest product first: 20 x 20 before 24 x 16
    assert (oval["longest_mm"], oval["perpendicular_mm"]) == (pytest.approx(24, abs=1.5), pytest.approx(16, abs=1.5))
    assert (round_one["longest_mm"], round_one["perpendicular_mm"]) == (pytest.approx(20, abs=1.5),
                                                                         pytest.approx(20, abs=1.5))
    assert not small["measurable"] and small["perpendicular_mm"] < 10
    assert record["measurable"] == 2
    assert record["sum_of_products_mm2"] == pytest.approx(oval["product_mm2"] + round_one["product_mm2"], abs=0.2)


def test_the_slice_with_the_longest_diameter_is_chosen():
    # a cone: the axial cross-section grows with z, so the longest diameter is on the top slice of the lesion
    shape, affine = (60, 60, 10), grid((60, 60, 10), (1.0, 1.0, 1.0))
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    radius = 2 + 2.0 * index[..., 2]
    mask = np.linalg.norm(index[..., :2] - 30, axis=-1) <= radius
    mask[..., 8:] = False
    (lesion,) = measure_lesions(mask, affine)
    assert lesion["slice"] == 7
    assert lesion["longest_mm"] == pytest.approx(32, abs=1.5)


def test_no_enhancing_tumour_means_no_lesions_and_the_transform_reports_it():
    label = MetaTensor(torch.zeros(1, 8, 8, 8, dtype=torch.uint8), affine=torch.eye(4))
    assert RanoMeasurementsd("pred")({"pred": label})["rano"] == {
        "lesions": [], "measurable": 0, "sum_of_products_mm2": 0.0, "measurable_mm": 10.0}
    label[0, 2:4, 2:4, 2:4] = 3
    record = RanoMeasurementsd("pred", et_label=3)({"pred": label})["rano"]
    assert len(record["lesions"]) == 1 and record["lesions"][0]["longest_mm"] == pytest.approx(2.8, abs=0.1)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="3D mask"):
        measure_lesions(np.zeros((4, 4)), np.eye(4))
    with pytest.raises(ValueError, match="et_label"):
        rano_measurements(np.zeros((4, 4, 4)), np.eye(4), et_label=2)
