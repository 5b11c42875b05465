"""Voxel spacing of a grid (mm per array axis), shared by the metrics (NumPy only).

The spacing of an array axis is the Euclidean norm of the matching column of the image affine's
linear part (``np.linalg.norm(affine[:d, :d], axis=0)``): the length in mm of one voxel step along
that axis, correct for oblique (rotated) grids. A ``spacing`` argument anywhere in
:mod:`inrreg_pipeline.metrics` lists one value per *array axis*.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["spacing_from_affine", "resolve_spacing"]


def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing (mm) along each array axis from a ``(d+1, d+1)`` voxel-to-world affine.

    Returns the column norms of ``affine[:d, :d]``, i.e. the length in mm of one voxel step along
    each array axis; correct for oblique (rotated) grids, unlike reading the diagonal.
    """
    affine = np.asarray(affine, dtype=float)
    if affine.ndim != 2 or affine.shape[0] != affine.shape[1] or affine.shape[0] < 2:
        raise ValueError(f"affine must be a square (d+1, d+1) matrix, got shape {affine.shape}")
    d = affine.shape[0] - 1
    return np.linalg.norm(affine[:d, :d], axis=0)


def resolve_spacing(
    ndim: int, spacing: Sequence[float] | None, affine: np.ndarray | None, *, required: bool = False
) -> np.ndarray:
    """The ``(ndim,)`` spacing in mm from ``spacing`` or from ``affine`` (column norms), not both.

    Neither given: 1 mm per axis, or ``ValueError`` when ``required``. ``ValueError`` too for a
    spacing of the wrong length or one that is not positive and finite.
    """
    if spacing is not None and affine is not None:
        raise ValueError("give either spacing or affine, not both")
    if affine is not None:
        sp = spacing_from_affine(affine)
    elif spacing is not None:
        sp = np.asarray(spacing, dtype=float).reshape(-1)
    elif required:
        raise ValueError("voxel spacing is required: pass spacing=(...) in mm or the image affine")
    else:
        sp = np.ones(ndim)
    if sp.shape != (ndim,):
        raise ValueError(f"spacing must have one value per array axis ({ndim}), got {sp.tolist()}")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be positive and finite, got {sp.tolist()}")
    return sp

