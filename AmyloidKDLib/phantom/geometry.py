"""Where a scan's world coordinates come from in MNI space (rigid pose + smooth displacement)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

#: Point the rigid poses rotate around (roughly the brain's centre in MNI space).
BRAIN_CENTRE_MM = (0.0, -18.0, 10.0)


def _rotation(degrees: Sequence[float]) -> np.ndarray:
    ax, ay, az = np.deg2rad(degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class SessionGeometry:
    """Where a scan's world coordinates come from in MNI space.

    A scan point ``y`` (scanner RAS mm) maps to the subject's brain space by the inverse rigid
    pose, ``x = R^T (y - c - t) + c``, then to MNI by the subject's smooth displacement,
    ``x_mni = x + u(x)``, with ``u`` trilinear on a coarse grid (mm). The image was made by
    sampling the template at ``x_mni`` (pull direction), so this mapping is exact.
    """

    rotation_deg: tuple[float, float, float]
    translation_mm: tuple[float, float, float]
    displacement_origin_mm: tuple[float, float, float]
    displacement_spacing_mm: float
    displacement: np.ndarray            # (3, nx, ny, nz) mm
    grid_affine: np.ndarray             # 4x4 RAS affine of the image grid
    grid_shape: tuple[int, int, int]
    stored_orientation: str             # axis code the file is written in

    def world_to_mni(self, points: np.ndarray) -> np.ndarray:
        """MNI coordinates (N, 3) of scanner points ``points`` (N, 3), in mm."""
        centre = np.asarray(BRAIN_CENTRE_MM)
        rot = _rotation(self.rotation_deg)
        x = (np.asarray(points, np.float64) - centre - np.asarray(self.translation_mm)) @ rot + centre
        grid = (x - np.asarray(self.displacement_origin_mm)) / self.displacement_spacing_mm
        u = np.stack([ndimage.map_coordinates(self.displacement[c], grid.T, order=1,
                                              mode="nearest") for c in range(3)], axis=1)
        return x + u

    def mni_to_world(self, points: np.ndarray, iterations: int = 12) -> np.ndarray:
        """Scanner coordinates (N, 3) of MNI points (N, 3): the inverse of :meth:`world_to_mni`.

        Solves ``x + u(x) = x_mni`` by fixed-point iteration (``u`` is smooth and small).
        """
        target = np.asarray(points, np.float64)
        x = target.copy()
        for _ in range(iterations):
            grid = (x - np.asarray(self.displacement_origin_mm)) / self.displacement_spacing_mm
            u = np.stack([ndimage.map_coordinates(self.displacement[c], grid.T, order=1,
                                                  mode="nearest") for c in range(3)], axis=1)
            x = target - u
        centre = np.asarray(BRAIN_CENTRE_MM)
        return (x - centre) @ _rotation(self.rotation_deg).T + centre + np.asarray(self.translation_mm)

    def voxel_world(self, ijk: np.ndarray) -> np.ndarray:
        """Scanner coordinates (N, 3) of RAS-grid voxel indices (N, 3)."""
        return np.asarray(ijk, np.float64) @ self.grid_affine[:3, :3].T + self.grid_affine[:3, 3]

    def to_dict(self) -> dict:
        """JSON-serialisable form (the ground truth file)."""
        return {"rotation_deg": list(self.rotation_deg),
                "translation_mm": list(self.translation_mm),
                "displacement_origin_mm": list(self.displacement_origin_mm),
                "displacement_spacing_mm": self.displacement_spacing_mm,
                "displacement": self.displacement.tolist(),
                "grid_affine": self.grid_affine.tolist(), "grid_shape": list(self.grid_shape),
                "stored_orientation": self.stored_orientation}

    @classmethod
    def from_dict(cls, values: dict) -> "SessionGeometry":
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(values["rotation_deg"]), tuple(values["translation_mm"]),
                   tuple(values["displacement_origin_mm"]), float(values["displacement_spacing_mm"]),
                   np.asarray(values["displacement"], np.float64),
                   np.asarray(values["grid_affine"], np.float64), tuple(values["grid_shape"]),
                   values["stored_orientation"])

