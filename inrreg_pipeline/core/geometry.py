"""Images and grids in physical space, NumPy only (no torch): :class:`SpatialImage`, voxel -> world
maps and the grid checks shared by :mod:`.space`, :mod:`.jacobian` and :mod:`inrreg_pipeline.io`.

World space is RAS+ millimetres (the NIfTI/nibabel convention); an image of dimension ``d`` (2 or
3) is an array ``(n_0, ..., n_{d-1})`` and a ``(d+1) x (d+1)`` affine from voxel indices (voxel
centres at integers) to world mm. See :mod:`.space` for the conventions of sampling.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MIN_AXES_DETERMINANT", "affine_problem", "SpatialImage", "voxel_grid_to_world", "apply_affine",
           "world_bounding_box"]


#: Smallest ``|det|`` of an affine's unit-length voxel axes (1 for orthogonal axes; 1e-6 is axes within
#: about 1e-4 degrees of each other): a test of conditioning, free of the voxel size.
MIN_AXES_DETERMINANT = 1e-6


def affine_problem(affine: np.ndarray) -> str | None:
    """Why a ``(d+1, d+1)`` voxel -> world affine cannot describe a grid, or ``None`` when it can.

    The test is relative, not an absolute determinant: 0.8 micrometre voxels (microscopy) have
    ``det ~ 5e-10 mm^3`` and are as valid as 1 mm ones. Refused: non-finite entries, a voxel axis
    of zero length, and voxel axes that are (nearly) parallel, i.e. the determinant of the axes
    scaled to unit length is below :data:`MIN_AXES_DETERMINANT`.
    """
    a = np.asarray(affine, dtype=np.float64)
    d = a.shape[0] - 1
    if not np.isfinite(a).all():
        return "non-finite entries"
    sizes = np.linalg.norm(a[:d, :d], axis=0)
    if (sizes <= 0).any() or not np.isfinite(sizes).all():
        return f"zero voxel size along array axis {int(np.argmin(sizes))}"
    if abs(np.linalg.det(a[:d, :d] / sizes)) < MIN_AXES_DETERMINANT:
        return "its voxel axes are (nearly) parallel"
    return None


@dataclass
class SpatialImage:
    """A scalar image in physical space.

    Attributes
    ----------
    data:
        Voxel values, shape ``(n_0, ..., n_{d-1})``, ``d`` in {2, 3}.
    affine:
        ``(d+1, d+1)`` voxel index -> world (RAS mm) matrix.
    """

    data: np.ndarray
    affine: np.ndarray

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        d = self.data.ndim
        if d not in (2, 3):
            raise ValueError(f"images must be 2-D or 3-D, got {d}-D data")
        if self.affine.shape != (d + 1, d + 1):
            raise ValueError(f"a {d}-D image needs a {d + 1}x{d + 1} affine, got {self.affine.shape}")
        problem = affine_problem(self.affine)
        if problem:
            raise ValueError(f"the image affine is singular or non-finite ({problem})")

    @property
    def ndim(self) -> int:
        """Spatial dimension ``d``."""
        return self.data.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along each array axis (column norms of the affine)."""
        d = self.ndim
        return np.linalg.norm(self.affine[:d, :d], axis=0)

    def world_grid(self) -> np.ndarray:
        """World coordinates (mm) of every voxel centre, shape ``(*shape, d)``."""
        return voxel_grid_to_world(self.shape, self.affine)

    def with_data(self, data: np.ndarray) -> "SpatialImage":
        """A new image on the same grid."""
        return SpatialImage(np.asarray(data), self.affine.copy())


def voxel_grid_to_world(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """World coordinates (mm) of the voxel centres of a grid, shape ``(*shape, d)``."""
    d = len(shape)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    return idx @ affine[:d, :d].T + affine[:d, d]


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a homogeneous ``(d+1, d+1)`` matrix to points of shape ``(..., d)``."""
    d = matrix.shape[0] - 1
    return points @ matrix[:d, :d].T + matrix[:d, d]


def world_bounding_box(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world bounding box (min, max corners, mm) of a grid's voxel centres."""
    d = len(shape)
    corners = np.stack(np.meshgrid(*[[0.0, n - 1.0] for n in shape], indexing="ij"), -1).reshape(-1, d)
    world = apply_affine(affine, corners)
    return world.min(0), world.max(0)
