"""Grid geometry checks that need NumPy only (no torch), shared by :mod:`.space` and :mod:`.jacobian`."""
from __future__ import annotations

import numpy as np

__all__ = ["MIN_AXES_DETERMINANT", "affine_problem"]


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
