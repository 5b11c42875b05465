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


def non_diffeomorphic_volume(field: np.ndarray, affine: np.ndarray, mask: np.ndarray | None = None) -> float:
    """The non-diffeomorphic volume (NDV) of a displacement field, in % of the volume inside ``mask``.

    The measure of the Learn2Reg LUMIR evaluation (Liu et al., "On finite difference Jacobian
    computation in deformable image registration", IJCV 2024): each voxel's cube is split into
    tetrahedra in the two ways a cube splits into five (8 corner tetrahedra, one per choice of
    forward or backward difference along each axis, and 2 central ones), the transformation's
    signed volume of each tetrahedron is ``det(edges) / 6`` in voxel units, and the negative
    parts are summed (halved: every point lies in one tetrahedron of each split). Unlike the
    % of voxels with ``det J <= 0`` it counts how much volume folds, and it sees foldings that
    central differences miss. In 2-D it is the non-diffeomorphic area (4 triangles per pixel).

    ``field``: ``(*shape, d)`` mm in the world frame of ``affine`` (its voxel -> world map; the
    determinants are frame- and spacing-free, computed on ``i + R^-1 u(i)``). The field is
    continued by its edge values beyond the grid. ``mask``: voxels counted (default: all).
    """
    field = np.asarray(field, dtype=np.float64)
    d = field.shape[-1]
    if d not in (2, 3) or field.ndim != d + 1:
        raise ValueError(f"non_diffeomorphic_volume needs a (*shape, d) field with d = 2 or 3, got {field.shape}")
    rinv = np.linalg.inv(np.asarray(affine, dtype=np.float64)[:d, :d])
    shape = field.shape[:-1]
    padded = np.pad(field @ rinv.T, [(1, 1)] * d + [(0, 0)], mode="edge")
    idx = np.stack(np.meshgrid(*[np.arange(-1, n + 1, dtype=np.float64) for n in shape], indexing="ij"), -1)
    t = padded + idx  # the transformation in voxel coordinates, one voxel of margin

    def at(offset: tuple[int, ...]) -> np.ndarray:
        return t[tuple(slice(1 + o, 1 + o + n) for o, n in zip(offset, shape))]

    centre = at((0,) * d)

    def edge(offset: tuple[int, ...]) -> np.ndarray:
        return at(offset) - centre

    def unit(axis: int, sign: int) -> tuple[int, ...]:
        return tuple(sign if a == axis else 0 for a in range(d))

    def det(columns: list[np.ndarray]) -> np.ndarray:
        if d == 2:
            return columns[0][..., 0] * columns[1][..., 1] - columns[0][..., 1] * columns[1][..., 0]
        return np.einsum("...i,...i->...", columns[0], np.cross(columns[1], columns[2]))

    negative = np.zeros(shape)
    for signs in np.ndindex(*(2,) * d):  # forward (+) or backward (-) difference along each axis
        cols = [edge(unit(a, 1)) if s == 0 else -edge(unit(a, -1)) for a, s in enumerate(signs)]
        negative += np.minimum(det(cols), 0.0) / (6.0 if d == 3 else 2.0)
    if d == 3:  # the two central tetrahedra of the two five-tetrahedra splits
        negative += np.minimum(det([edge((-1, -1, 0)), edge((-1, 0, -1)), edge((0, -1, -1))]), 0.0) / 6.0
        negative += np.minimum(det([edge((1, 1, 0)), edge((0, 1, 1)), edge((1, 0, 1))]), 0.0) / 6.0
    ndv = -0.5 * negative
    inside = np.ones(shape, bool) if mask is None else np.asarray(mask, bool)
    return float(100.0 * ndv[inside].sum() / max(int(inside.sum()), 1))
