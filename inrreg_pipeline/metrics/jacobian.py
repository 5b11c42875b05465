"""Transform quality from a dense displacement field: det J, folding and the spread of log det J.

The determinant itself is the package's one finite-difference implementation,
:func:`inrreg_pipeline.core.jacobian.jacobian_determinant_fd` (NumPy only, the one the registration
core and the baselines write as ``Pjacobian.nii.gz``); this module states how the metrics call it
and summarises it over a mask.

Conventions
-----------
* ``field`` is ``(*shape, d)`` displacements in mm at voxel centres, ``field[..., c]`` component
  ``c``; derivatives are in mm/mm. The components must be expressed in the world frame of the
  ``affine`` passed with them (RAS mm for a nibabel affine; ITK/ANTs files are converted to RAS
  by :func:`inrreg_pipeline.io.itk.read_ants_displacement_field`).
* :func:`non_diffeomorphic_volume` (the LUMIR NDV, % of the mask's volume in folded tetrahedra) is
  the core's, re-exported.
* Folding is det J <= 0; the summaries raise ``ValueError`` for an empty mask or NaN
  determinants inside it rather than return NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.jacobian import jacobian_determinant_fd, non_diffeomorphic_volume
from .grid import resolve_spacing

__all__ = [
    "jacobian_determinant_from_displacement",
    "folding_fraction",
    "log_jacobian_std",
    "jacobian_statistics",
    "non_diffeomorphic_volume",
]


def jacobian_determinant_from_displacement(
    field: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    affine: np.ndarray | None = None,
) -> np.ndarray:
    """det(I + du/dx) of a dense displacement field, by central differences in mm.

    Parameters
    ----------
    field
        Displacement in mm, shape ``(*shape, d)`` with ``d == len(shape)`` (2 or 3); ``field[..., c]``
        is component ``c``.  A NIfTI 5-D ANTs warp ``(X, Y, Z, 1, 3)`` must be squeezed first.
    spacing
        Voxel size in mm along each array axis.  Use for grids whose axes are aligned with the
        frame of the displacement components: component ``c`` is then taken along array axis ``c``
        and ``du_c/dx_k = (du_c/di_k) / spacing_k``.
    affine
        Instead of ``spacing``: the grid's ``(d+1, d+1)`` voxel-to-world affine (oblique allowed).
        The components must then be expressed in the same world frame as the affine (e.g. RAS mm
        for a nibabel affine; for an ITK/ANTs LPS field negate x and y of the field *and* use the
        LPS affine, or convert the field to RAS first).  Derivatives are taken with respect to world
        coordinates by the chain rule: with x = R i + t (R = ``affine[:d, :d]``),
        ``du/dx = (du/di) @ inv(R)``.

    Exactly one of ``spacing`` / ``affine`` is required.

    Returns
    -------
    numpy.ndarray
        ``det(I + grad u)`` of shape ``shape`` (float64).  ``np.gradient`` is used: second-order
        central differences inside, first-order one-sided differences at the array edges.

    Notes
    -----
    The determinant is invariant to a rotation of the frame (det(I + Q J Q^T) = det(I + J)), so any
    orthonormal frame works as long as the components and the coordinates of differentiation are
    expressed in the same one; mixing frames (LPS components differentiated along RAS axes) is
    wrong, and so is passing ``spacing`` for an oblique grid with world-frame components.
    """
    field = np.asarray(field)
    d = field.ndim - 1
    if d < 1 or field.shape[-1] != d:
        raise ValueError(
            f"field must have shape (*shape, d) with d = len(shape); got {field.shape}"
        )
    if affine is not None:
        if spacing is not None:
            raise ValueError("give either spacing or affine, not both")
        grid = np.asarray(affine, dtype=float)
    else:
        sp = resolve_spacing(d, spacing, None, required=True)
        grid = np.diag(list(sp) + [1.0])  # axis-aligned grid: component c along array axis c
    # the one finite-difference implementation (shared with the registration core)
    return jacobian_determinant_fd(field, grid, dtype=np.float64)


def _masked_values(jacobian_det: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    det = np.asarray(jacobian_det, dtype=np.float64)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != det.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the determinant's {det.shape}")
        det = det[mask.astype(bool)]
    else:
        det = det.reshape(-1)
    if det.size == 0:
        raise ValueError("no voxels to evaluate (empty determinant array or empty mask)")
    if np.isnan(det).any():
        raise ValueError("Jacobian determinant contains NaN inside the mask")
    return det


def folding_fraction(jacobian_det: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Percentage (0-100) of voxels inside ``mask`` (default: all) with det J <= 0.

    det J = 0 (a collapsed voxel) counts as folded.  Raises ValueError for an empty mask or NaN
    determinants inside it, rather than returning NaN.
    """
    det = _masked_values(jacobian_det, mask)
    return float(100.0 * np.count_nonzero(det <= 0) / det.size)


def log_jacobian_std(
    jacobian_det: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    clip: tuple[float, float] = (1e-9, 1e9),
) -> float:
    """Standard deviation (population, ddof=0) of log(det J) over non-folded voxels in ``mask``.

    Only voxels with det J > 0 enter (the folded ones are reported by :func:`folding_fraction`);
    their determinants are clipped to ``clip`` = [1e-9, 1e9] before the log, so a nearly collapsed
    voxel contributes at most |log 1e-9| ~ 20.7 instead of an unbounded value.  The result is
    dimensionless (natural log); 0 for a volume-preserving or purely affine map.  Challenge scripts
    differ in how they treat folded voxels (some clip every voxel, folded included), so compare
    numbers only when computed the same way.  Returns NaN if no voxel in the mask has det J > 0.
    """
    det = _masked_values(jacobian_det, mask)
    det = det[det > 0]
    if det.size == 0:
        return float("nan")
    return float(np.std(np.log(np.clip(det, clip[0], clip[1]))))


def jacobian_statistics(jacobian_det: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """The transform-quality summary of det J over ``mask`` (default: every voxel).

    Keys: ``folding_percent`` (:func:`folding_fraction`, % of voxels with det J <= 0),
    ``log_jacobian_std`` (:func:`log_jacobian_std`, dimensionless), ``jacobian_min`` and
    ``jacobian_max`` (dimensionless). Errors as :func:`folding_fraction`.
    """
    det = _masked_values(jacobian_det, mask)
    return {"folding_percent": folding_fraction(det), "log_jacobian_std": log_jacobian_std(det),
            "jacobian_min": float(det.min()), "jacobian_max": float(det.max())}
