"""RAS+ <-> LPS+: the one change of frame between inrreg's world and ITK / ANTs files (NumPy only).

inrreg works in RAS+ millimetres (NIfTI / nibabel: x to the Right, y Anterior, z Superior).
ITK, ANTs, greedy's warps and the BraTS-Reg landmark files use LPS+ millimetres (x to the Left,
y Posterior, z Superior). The change of frame is ``D = diag(-1, -1, 1)`` in 3-D and
``D = diag(-1, -1)`` in 2-D (ITK's 2-D images: both in-plane axes negated). ``D`` is its own
inverse, so the same operation converts either way:

* a point or a vector (mm): ``p_lps = D p_ras``;
* a homogeneous point map: ``A_lps = D A_ras D`` (:func:`inrreg_pipeline.io.itk.affine_ras_to_lps`).

Every conversion in the package goes through this module; nothing outside :mod:`inrreg_pipeline.io`
flips signs.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ras_to_lps_matrix", "frame_signs", "ras_to_lps_points", "lps_to_ras_points"]


def ras_to_lps_matrix(ndim: int) -> np.ndarray:
    """Homogeneous ``(ndim+1) x (ndim+1)`` RAS<->LPS change of frame (its own inverse).

    ``diag(-1, -1, 1, 1)`` for ``ndim == 3`` and ``diag(-1, -1, 1)`` for ``ndim == 2``
    (ITK/ANTs 2-D images: both in-plane axes negated).  Its top-left ``ndim x ndim`` block is the
    matrix that converts point coordinates and vectors (mm) between the two frames.
    """
    if ndim not in (2, 3):
        raise ValueError(f"only 2-D and 3-D are supported, got ndim={ndim}")
    return np.diag([-1.0, -1.0] + [1.0] * (ndim - 1))


def frame_signs(ndim: int) -> np.ndarray:
    """Per-axis signs ``(ndim,)`` of the RAS<->LPS change for points and vectors: ``[-1, -1(, 1)]``."""
    return np.diag(ras_to_lps_matrix(ndim))[:ndim].copy()


def ras_to_lps_points(points: np.ndarray) -> np.ndarray:
    """Points or vectors ``(..., d)`` (d = 2 or 3, mm) from RAS+ to LPS+: ``(-x, -y[, z])``.

    Returns a new float64 array; the last axis holds the coordinates.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim < 1:
        raise ValueError("points must have a coordinate axis (shape (..., d))")
    return p * frame_signs(p.shape[-1])


def lps_to_ras_points(points: np.ndarray) -> np.ndarray:
    """Points or vectors ``(..., d)`` (mm) from LPS+ to RAS+: the same flip as :func:`ras_to_lps_points`."""
    return ras_to_lps_points(points)
