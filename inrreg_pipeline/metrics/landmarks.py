"""Target registration error (TRE) from corresponding landmark points.

Points are ``(N, d)`` world coordinates in RAS+ millimetres, rows paired by order; read landmark
files into that frame with :func:`inrreg_pipeline.io.landmarks.read_landmarks` and transform files
into a :class:`~inrreg_pipeline.core.transform.Transform` with
:func:`inrreg_pipeline.io.itk.read_transform_chain`. Errors are Euclidean distances in mm.
"""

from __future__ import annotations

import numpy as np

from ..core.transform import Transform

__all__ = ["target_registration_error", "tre_summary", "landmark_errors"]


def target_registration_error(fixed_points_ras: np.ndarray, mapped_points_ras: np.ndarray) -> np.ndarray:
    """Per-landmark Euclidean distance in mm between corresponding points (rows), shape ``(N,)``.

    Typically ``fixed_points_ras`` are the fixed-image landmarks mapped through the estimated
    fixed->moving transform and ``mapped_points_ras`` the moving-image landmarks (or the reverse);
    both must be in the same frame (RAS mm) and in the same landmark order.
    """
    a = np.asarray(fixed_points_ras, dtype=float)
    b = np.asarray(mapped_points_ras, dtype=float)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"point arrays must both be (N, d) with equal shapes, got {a.shape} and {b.shape}")
    return np.linalg.norm(a - b, axis=1)


def landmark_errors(transform: Transform, fixed_points_ras: np.ndarray, moving_points_ras: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(initial, registered)`` per-landmark errors (mm, ``(N,)`` each) of a fixed -> moving transform.

    ``initial`` is ``|p_fixed - p_moving|`` (no transform), ``registered`` is
    ``|T(p_fixed) - p_moving|``: the fixed landmarks are mapped by the registration's pull-back map
    (the direction ``antsApplyTransformsToPoints`` maps points with the forward list
    ``-t 1Warp -t 0GenericAffine.mat``) and compared with their moving partners. RAS mm, rows paired.
    """
    fixed = np.asarray(fixed_points_ras, dtype=float)
    moving = np.asarray(moving_points_ras, dtype=float)
    if fixed.ndim != 2 or fixed.shape != moving.shape:
        raise ValueError(f"point arrays must both be (N, d) with equal shapes, got {fixed.shape} and {moving.shape}")
    if fixed.shape[1] != transform.ndim:
        raise ValueError(f"{fixed.shape[1]}-D landmarks with a {transform.ndim}-D transform")
    return target_registration_error(fixed, moving), target_registration_error(transform.map(fixed), moving)


def tre_summary(errors: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation (ddof=0), median and maximum of per-landmark errors (mm), and ``n``."""
    e = np.asarray(errors, dtype=float).reshape(-1)
    if e.size == 0:
        raise ValueError("no landmark errors to summarise")
    if not np.all(np.isfinite(e)):
        raise ValueError("landmark errors contain NaN or infinite values")
    return {
        "n": int(e.size),
        "mean_mm": float(e.mean()),
        "std_mm": float(e.std()),
        "median_mm": float(np.median(e)),
        "max_mm": float(e.max()),
    }

