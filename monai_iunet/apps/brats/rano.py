"""RANO-style bidimensional measurements of the enhancing tumour (Wen et al., J Clin Oncol 2010): per lesion the
longest diameter on an axial slice and the longest diameter perpendicular to it on the same slice, their product,
and the sum of products over the measurable lesions (both diameters at least 10 mm).

Measured on the label map's own grid (the source series' grid once inverted), in millimetres of the patient: the
axial slices are the planes of the voxel axis closest to the patient's head-foot axis, and in-plane distances use
that plane's two voxel axes with their true spacing and direction, so oblique grids and anisotropic voxels measure
what a radiologist's ruler would. A diameter is measured edge to edge: the distance between the centres of the two
outermost voxels plus the extent of one voxel along the line.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform
from scipy import ndimage

from .cases import CaseKeys
from .labels import release_of

__all__ = ["MEASURABLE_MM", "measure_lesions", "rano_measurements", "RanoMeasurementsd"]

MEASURABLE_MM = 10.0  # RANO: a measurable lesion has both perpendicular diameters >= 10 mm


def _slice_axis(affine: np.ndarray) -> int:
    """The voxel axis closest to the patient's head-foot (S) axis: its planes are the axial slices."""
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    return int(np.argmax(np.abs(directions[2])))


def _longest_chord(points: np.ndarray, extent) -> tuple[float, np.ndarray]:
    """The longest distance between two of ``points`` (N, 2; mm in an orthonormal in-plane frame), edge to edge, and
    its unit direction. ``extent(u)``: one voxel's extent along u."""
    if len(points) == 1:
        u = np.array([1.0, 0.0])
        return float(extent(u)), u
    best, direction = -1.0, np.array([1.0, 0.0])
    for start in range(0, len(points), 512):  # pairwise in blocks: boundary voxels of one slice, a few thousand
        block = points[start:start + 512]
        d = np.linalg.norm(block[:, None] - points[None], axis=-1)
        i, j = np.unravel_index(np.argmax(d), d.shape)
        if d[i, j] > best:
            best = float(d[i, j])
            direction = (points[j] - block[i]) / max(best, 1e-9)
    return best + float(extent(direction)), direction


def _perpendicular_width(points: np.ndarray, u: np.ndarray, band: float, extent) -> float:
    """The longest chord perpendicular to ``u``: over lines perpendicular to u (through each voxel, ``band`` wide),
    the largest spread of the points on the line, edge to edge."""
    v = np.array([-u[1], u[0]])
    along, across = points @ u, points @ v
    order = np.argsort(along)
    along, across = along[order], across[order]
    lo = np.searchsorted(along, along - band / 2, side="left")
    hi = np.searchsorted(along, along + band / 2, side="right")
    widths = [across[a:b].max() - across[a:b].min() for a, b in zip(lo, hi)]
    return float(max(widths)) + float(extent(v))


def measure_lesions(mask: np.ndarray, affine: np.ndarray) -> list[dict]:
    """Bidimensional measurements of each 3D connected component (26-connectivity) of ``mask`` (X, Y, Z) with
    voxel -> patient (mm) ``affine``, largest product first: ``{"longest_mm", "perpendicular_mm", "product_mm2",
    "slice": index along the axial axis, "axial_axis", "volume_ml", "measurable"}``."""
    mask = np.asarray(mask, dtype=bool)
    affine = np.asarray(affine, dtype=float)
    if mask.ndim != 3 or affine.shape != (4, 4):
        raise ValueError(f"expected a 3D mask and a 4x4 affine, got shapes {mask.shape} and {affine.shape}.")
    axis = _slice_axis(affine)
    in_plane = [a for a in range(3) if a != axis]
    columns = affine[:3, in_plane]  # mm per voxel step along the two in-plane axes
    # an orthonormal frame of the slice plane: in-plane voxel offsets -> 2D mm coordinates (oblique and sheared
    # grids included)
    frame, _ = np.linalg.qr(columns)
    steps = frame.T @ columns  # (2, 2): each in-plane voxel step in the frame
    extent = lambda u: float(np.abs(u @ steps).sum())  # noqa: E731  (a voxel's width along u: its edge vectors)
    band = float(np.linalg.norm(steps, axis=0).max())
    voxel_ml = abs(float(np.linalg.det(affine[:3, :3]))) / 1000.0
    components, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    lesions = []
    for index, box in enumerate(ndimage.find_objects(components), start=1):
        lesion = components[box] == index
        best = None
        for k in range(lesion.shape[axis]):
            plane = np.take(lesion, k, axis=axis)
            if not plane.any():
                continue
            # the chords' ends lie on the boundary: only boundary voxels are candidates
            edge = plane & ~ndimage.binary_erosion(plane)
            ij = np.argwhere(edge).astype(float) + [box[a].start for a in in_plane]
            points = ij @ steps.T
            longest, u = _longest_chord(points, extent)
            all_points = (np.argwhere(plane).astype(float) + [box[a].start for a in in_plane]) @ steps.T
            perpendicular = _perpendicular_width(all_points, u, band, extent)
            candidate = (longest, longest * perpendicular, perpendicular, k + box[axis].start)
            if best is None or candidate[:2] > best[:2]:
                best = candidate
        longest, perpendicular, k = round(best[0], 1), round(best[2], 1), best[3]
        lesions.append({
            "longest_mm": longest, "perpendicular_mm": perpendicular,
            "product_mm2": round(longest * perpendicular, 1), "slice": int(k), "axial_axis": axis,
            "volume_ml": round(int(lesion.sum()) * voxel_ml, 3),
            "measurable": bool(min(longest, perpendicular) >= MEASURABLE_MM),
        })
    return sorted(lesions, key=lambda lesion: -lesion["product_mm2"])


def rano_measurements(label, affine, et_label: int = 4) -> dict:
    """The RANO record of a BraTS label map (X, Y, Z): its enhancing-tumour lesions (``measure_lesions``), how
    many are measurable and the sum of products of the measurable ones (mm^2)."""
    release_of(et_label)
    lesions = measure_lesions(np.asarray(label) == et_label, affine)
    measurable = [lesion for lesion in lesions if lesion["measurable"]]
    return {
        "lesions": lesions, "measurable": len(measurable),
        "sum_of_products_mm2": round(sum(lesion["product_mm2"] for lesion in measurable), 1),
        "measurable_mm": MEASURABLE_MM,
    }


class RanoMeasurementsd(MapTransform):
    """Put ``rano_measurements`` of the label map (1, X, Y, Z) on its own grid under ``output_key``.

    Args:
        keys: label maps with their affine (after ``Invertd``: the source series' grid).
        et_label: the enhancing-tumour label (4 or 3).
        output_key: where the record goes (``CaseKeys.RANO``, reported per case).
    """

    def __init__(self, keys: KeysCollection, et_label: int = 4, output_key: str = CaseKeys.RANO,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        release_of(et_label)
        self.et_label = et_label
        self.output_key = output_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            d[self.output_key] = rano_measurements(np.asarray(label)[0], np.asarray(label.affine), self.et_label)
        return d
