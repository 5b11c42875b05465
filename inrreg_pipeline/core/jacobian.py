"""The Jacobian determinant of a sampled displacement field, by finite differences (NumPy only).

One implementation for the whole package: the registration core's dense output
(:mod:`inrreg_pipeline.core.registration`), the evaluation metrics
(:func:`inrreg_pipeline.metrics.jacobian_determinant_from_displacement`) and the ANTs baseline all
call :func:`jacobian_determinant_fd`. It imports NumPy only (no torch, no Nipype), so the metrics
stay light.

Conventions
-----------
* ``field`` is ``(*shape, d)`` (d = 2 or 3) displacements in mm at the voxel centres of a grid
  whose voxel index -> world map is ``x = R i + t`` (``R = affine[:d, :d]``, direction cosines
  times spacing; oblique and anisotropic grids allowed). The components of ``u`` must be in the
  same world frame as ``R`` (RAS mm with a nibabel affine, LPS mm with an ITK/LPS affine).
* Derivatives are in mm/mm: ``du/di`` by second-order central differences inside the grid and
  first-order one-sided differences on its faces (``numpy.gradient`` with unit steps, as ANTs'
  ``CreateJacobianDeterminantImage`` differentiates in physical space), then the chain rule
  ``du/dx = (du/di) @ inv(R)``. The result is ``det(I + du/dx)``.
* The determinant does not depend on the orthonormal frame used for both the components and the
  coordinates (``det(I + Q J Q^T) = det(I + J)``); mixing frames is wrong.
"""
from __future__ import annotations

import numpy as np

from .geometry import affine_problem

#: Voxels per slab (along array axis 0) evaluated at once: bounds the float64 temporaries
#: to about ``slab * prod(shape[1:]) * 8 * (2 d + 2)`` bytes (~40 MB for a 256 x 160 slab of 16).
SLAB = 16


def jacobian_determinant_fd(field: np.ndarray, affine: np.ndarray, dtype: type = np.float32,
                            slab: int = SLAB) -> np.ndarray:
    """``det(I + du/dx)`` of a displacement field sampled on a grid, by finite differences.

    Parameters
    ----------
    field
        ``(*shape, d)`` displacements in mm (world frame of ``affine``), d in {1, 2, 3}; every grid
        axis needs at least 2 samples.
    affine
        ``(d+1, d+1)`` voxel index -> world mm affine of the grid (direction cosines and spacing in
        its linear part; must be invertible).
    dtype
        Output dtype (the arithmetic is float64 either way).
    slab
        Slices of array axis 0 differentiated at once (with a one-voxel halo, so the result does
        not depend on it); bounds the memory of the temporaries.

    Returns
    -------
    numpy.ndarray
        ``det(I + du/dx)``, shape ``shape``, dimensionless. Identical, slice for slice, to applying
        ``numpy.gradient`` to the whole field.
    """
    field = np.asarray(field)
    d = field.ndim - 1
    if d < 1 or field.shape[-1] != d:
        raise ValueError(f"field must have shape (*shape, d) with d = len(shape); got {field.shape}")
    shape = field.shape[:-1]
    if any(n < 2 for n in shape):
        raise ValueError(f"every grid axis needs at least 2 samples, got {shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (d + 1, d + 1):
        raise ValueError(f"affine must be ({d + 1}, {d + 1}) for a {d}-D field, got {affine.shape}")
    linear = affine[:d, :d]
    problem = affine_problem(affine)
    if problem is not None:  # relative to the voxel size: micrometre grids are grids too
        raise ValueError(f"the grid affine cannot describe a grid: {problem}")
    rinv = np.linalg.inv(linear)
    out = np.empty(shape, dtype=dtype)
    n0 = shape[0]
    slab = max(int(slab), 1)
    for start in range(0, n0, slab):
        stop = min(start + slab, n0)
        lo, hi = max(start - 1, 0), min(stop + 1, n0)  # one-voxel halo: central differences across slabs
        block = np.asarray(field[lo:hi], dtype=np.float64)
        crop = slice(start - lo, stop - lo)
        out[start:stop] = _determinant(block, rinv, crop)
    return out


def _determinant(block: np.ndarray, rinv: np.ndarray, crop: slice) -> np.ndarray:
    """``det(I + du/dx)`` on ``block[crop]`` (rows of axis 0); ``block`` is the slab plus a
    one-voxel halo along axis 0 where the grid continues, so ``numpy.gradient`` is central on the
    slab's rows except on the grid's own faces (first/last row of the grid: one-sided, as for the
    whole field)."""
    d = block.shape[-1]
    jac: list[list[np.ndarray]] = []  # jac[c][k] = du_c/dx_k (mm/mm)
    for c in range(d):
        comp = block[..., c]
        grads = np.gradient(comp) if d > 1 else [np.gradient(comp)]
        grads = [g[crop] for g in grads]
        # row_c(du/dx) = row_c(du/di) @ inv(R)
        row = [sum(grads[m] * rinv[m, k] for m in range(d)) for k in range(d)]
        row[c] = row[c] + 1.0
        jac.append(row)
    if d == 1:
        return jac[0][0]
    if d == 2:
        return jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]
    return (jac[0][0] * (jac[1][1] * jac[2][2] - jac[1][2] * jac[2][1])
            - jac[0][1] * (jac[1][0] * jac[2][2] - jac[1][2] * jac[2][0])
            + jac[0][2] * (jac[1][0] * jac[2][1] - jac[1][1] * jac[2][0]))


def jacobian_summary(jacobian: np.ndarray, inside: np.ndarray) -> dict[str, float]:
    """Folding (% of voxels with det J <= 0) inside a mask and over the field of view, min and max."""
    return {"percent_nonpositive_in_mask": float(100.0 * np.mean(jacobian[inside] <= 0)),
            "percent_nonpositive_fov": float(100.0 * np.mean(jacobian <= 0)),
            "min": float(jacobian.min()), "max": float(jacobian.max())}
