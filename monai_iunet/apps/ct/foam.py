"""3D foam phantoms (after Pelt et al. 2018, "Improving tomographic reconstruction from limited data using mixed-scale
dense convolutional neural networks"): a cylinder of random radius and height filled with many non-overlapping
spherical holes of heavy-tailed radii. Our own implementation (``foam_ct_phantom`` is not on the package index).

The phantom is rendered at ``oversample``× the output resolution and block-averaged down, so the edges carry
partial-volume values instead of aliasing. Everything is reproducible from the generator's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Foam", "FoamSpec", "sample_foam", "render_foam", "foam_phantom"]


class FoamSpec:
    """Parameters of the phantom family (lengths relative to the volume's half-width, 1.0 = edge of the volume).

    Args:
        radius: range of the cylinder's radius.
        height: range of the cylinder's half-height.
        holes: number of holes to place (fewer when the cylinder is full).
        hole_radius: smallest and largest hole radius; radii follow a Pareto law (shape ``tail``) cut at the largest.
        tail: Pareto shape; smaller is heavier-tailed (more large holes).
        min_gap: smallest distance between two holes and between a hole and the cylinder's surface.
    """

    def __init__(
        self,
        radius: tuple[float, float] = (0.6, 0.85),
        height: tuple[float, float] = (0.6, 0.85),
        holes: int = 150,
        hole_radius: tuple[float, float] = (0.03, 0.25),
        tail: float = 1.5,
        min_gap: float = 0.01,
    ) -> None:
        if not 0 < hole_radius[0] <= hole_radius[1]:
            raise ValueError(f"hole_radius must be 0 < min <= max, got {hole_radius}.")
        self.radius, self.height, self.holes = radius, height, holes
        self.hole_radius, self.tail, self.min_gap = hole_radius, tail, min_gap


def _place_holes(rng: np.random.Generator, spec: FoamSpec, radius: float, half_height: float) -> np.ndarray:
    """Non-overlapping spheres inside the cylinder, largest first (rejection sampling): ``(n, 4)`` centre, radius."""
    low, high = spec.hole_radius
    radii = np.sort(np.minimum(low * (1 + rng.pareto(spec.tail, spec.holes)), high))[::-1]
    placed: list[np.ndarray] = []
    for r in radii:
        if r + spec.min_gap >= min(radius, half_height):
            continue
        for _ in range(50):
            rho = (radius - r - spec.min_gap) * np.sqrt(rng.uniform())
            angle = rng.uniform(0, 2 * np.pi)
            centre = np.array([rho * np.cos(angle), rho * np.sin(angle),
                               rng.uniform(-1, 1) * (half_height - r - spec.min_gap)])
            if not placed or np.all(
                np.linalg.norm(np.asarray(placed)[:, :3] - centre, axis=1) > np.asarray(placed)[:, 3] + r + spec.min_gap
            ):
                placed.append(np.append(centre, r))
                break
    return np.asarray(placed).reshape(-1, 4)


@dataclass
class Foam:
    """One phantom's geometry: a cylinder along the last axis, ``holes`` as rows (x, y, z, radius); lengths in
    units of the volume's half-width, centre at the origin."""

    radius: float
    half_height: float
    holes: np.ndarray


def sample_foam(rng: np.random.Generator, spec: FoamSpec | None = None) -> Foam:
    spec = spec or FoamSpec()
    radius, half_height = rng.uniform(*spec.radius), rng.uniform(*spec.height)
    return Foam(radius, half_height, _place_holes(rng, spec, radius, half_height))


def render_foam(
    foam: Foam, size: int, oversample: int = 2, rotation: np.ndarray | None = None, extent: int | None = None
) -> np.ndarray:
    """The foam on a cubic grid of ``extent`` voxels (default ``size``) of edge ``2 / size``: 1 in the material,
    0 in holes and outside, partial values at edges (rendered at ``oversample``× and block-averaged). With
    ``rotation`` (rows: the grid's axes in the foam's coordinates) the foam is rendered in those axes, exactly,
    without interpolating a rendered volume."""
    extent = extent or size
    fine = extent * oversample
    step = 2.0 / (size * oversample)
    axis = ((np.arange(fine, dtype=np.float32) - (fine - 1) / 2) * step).astype(np.float32)
    grid = [axis[:, None, None], axis[None, :, None], axis[None, None, :]]
    to_foam = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float32).T  # grid -> foam coordinates
    x, y, z = (sum(to_foam[i, j] * grid[j] for j in range(3)) for i in range(3))
    volume = ((x**2 + y**2 <= foam.radius**2) & (np.abs(z) <= foam.half_height)).astype(np.float32)
    del x, y, z
    centres = foam.holes[:, :3] @ to_foam  # foam -> grid coordinates (to_foam is orthogonal)
    for (cx, cy, cz), r in zip(centres, foam.holes[:, 3]):  # each hole only touches its bounding box
        box = [slice(max(int(np.floor((c - r) / step + (fine - 1) / 2)), 0),
                     min(int(np.ceil((c + r) / step + (fine - 1) / 2)) + 1, fine)) for c in (cx, cy, cz)]
        inside = ((grid[0][box[0]] - cx) ** 2 + (grid[1][:, box[1]] - cy) ** 2
                  + (grid[2][:, :, box[2]] - cz) ** 2 <= r**2)
        volume[box[0], box[1], box[2]][inside] = 0.0
    return volume.reshape(extent, oversample, extent, oversample, extent, oversample).mean(axis=(1, 3, 5))


def foam_phantom(
    rng: np.random.Generator, size: int = 64, spec: FoamSpec | None = None, oversample: int = 2
) -> np.ndarray:
    """A ``(size, size, size)`` float32 foam phantom (``sample_foam`` then ``render_foam``)."""
    return render_foam(sample_foam(rng, spec), size, oversample)
