"""The 2-D rigid success protocol of suite ``rigid-2d`` (:mod:`rigid_2d`): corner relative distance.

Benchmark code, not a package metric: it scores an estimated 2-D rigid (or affine) map against
the true one by where they send the image's four corners, in the image's own mm frame (point =
voxel index x spacing, origin at the centre of voxel (0, 0), axis 0 first), relative to the image
side. Success is a distance below 2 % (:data:`SUCCESS_THRESHOLD`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from inrreg_pipeline.metrics.grid import resolve_spacing

__all__ = ["SUCCESS_THRESHOLD", "corner_relative_distance", "rigid_success_rate"]

#: Relative corner distance below which a registration counts as a success.
SUCCESS_THRESHOLD = 0.02


def _check_homogeneous_2d(mat: np.ndarray, name: str) -> np.ndarray:
    mat = np.asarray(mat, dtype=float)
    if mat.shape != (3, 3):
        raise ValueError(f"{name} must be a 3x3 homogeneous matrix, got shape {mat.shape}")
    if not np.allclose(mat[2], [0.0, 0.0, 1.0]):
        raise ValueError(f"{name} last row must be [0, 0, 1], got {mat[2].tolist()}")
    return mat


def corner_relative_distance(
    estimated: np.ndarray,
    true: np.ndarray,
    image_shape: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0),
) -> float:
    """Relative corner distance of the 2-D rigid success protocol (dimensionless).

    ``estimated`` and ``true`` are 3x3 homogeneous matrices acting on column vectors
    ``[p0, p1, 1]`` (mm), both mapping fixed-image points to moving-image points, in the image's own
    mm frame: point = voxel index x spacing (origin at the centre of voxel (0, 0), axis 0 first).

    The 4 corner voxel centres ``(0, 0), (n0-1, 0), (0, n1-1), (n0-1, n1-1)`` of the fixed image
    (``image_shape = (n0, n1)``) are mapped with both transforms; the mean of the 4 Euclidean
    distances (mm) is divided by the image side length L = mean(n0 * s0, n1 * s1) mm (the mean of
    the two field-of-view extents, so a square image gives its side).  A pure translation error t
    therefore gives |t| / L.  Success is a value below 0.02 (:func:`rigid_success_rate`).
    """
    est = _check_homogeneous_2d(estimated, "estimated")
    tru = _check_homogeneous_2d(true, "true")
    shape = tuple(int(n) for n in image_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"image_shape must be (n0, n1) with positive sizes, got {image_shape}")
    sp = resolve_spacing(2, spacing, None)
    n0, n1 = shape
    corners = np.array([[0, 0], [n0 - 1, 0], [0, n1 - 1], [n0 - 1, n1 - 1]], dtype=float) * sp
    homog = np.concatenate([corners, np.ones((4, 1))], axis=1).T  # (3, 4)
    diff = (est @ homog)[:2] - (tru @ homog)[:2]
    mean_dist = float(np.mean(np.linalg.norm(diff, axis=0)))
    side = float(np.mean([n0 * sp[0], n1 * sp[1]]))
    return mean_dist / side


def rigid_success_rate(distances: Sequence[float] | np.ndarray, threshold: float = SUCCESS_THRESHOLD) -> float:
    """Fraction (0-1) of relative corner distances strictly below ``threshold``; NaN counts as failure."""
    d = np.asarray(distances, dtype=float).reshape(-1)
    if d.size == 0:
        raise ValueError("no distances given")
    return float(np.count_nonzero(d < threshold) / d.size)  # NaN < t is False: a failure
