"""Spatial transforms as small objects: an affine, a displacement field, a chain (NumPy only, no torch).

One class per kind, each a point map in **RAS+ millimetres** with the core's **pull-back**
direction: a transform takes a point of the fixed (reference) space to the point of the moving
space whose intensity is sampled there, ``warped(x) = moving(T(x))`` (docs/conventions.md,
section 2). Every class has

* ``map(points)``: ``(N, d)`` (or ``(..., d)``) RAS mm -> the same shape, RAS mm, float64;
* ``inverse()``: the map from moving points back to fixed points;
* ``then(other)``: a :class:`TransformChain` that applies this transform first, then ``other``.

The kinds:

* :class:`AffineTransform`: a ``(d+1, d+1)`` homogeneous matrix, ``p = M x``; exact inverse.
* :class:`DisplacementField`: ``p = x + u(x)`` with ``u`` a ``(*shape, d)`` array of RAS mm on a
  grid (its voxel -> RAS affine), interpolated as ITK's ``DisplacementFieldTransform`` (hence
  ANTs) does: multilinear between voxel centres, the edge value within half a voxel outside the
  outermost centres, and 0 (identity) beyond. Its inverse is the known inverse field when one was
  given (``1InverseWarp``) and otherwise the fixed-point iteration ``v(z) = -u(z + v(z))`` on the
  same grid (:meth:`DisplacementField.inverse`).
* :class:`TransformChain`: a composition, stored **in antsApplyTransforms ``-t`` order**:
  ``TransformChain([T_1, ..., T_n]).map(x) == T_n(...T_2(T_1(x)))``, i.e. a point goes through the
  *first* element first. A registration's forward map ``phi(x) = A(x + u(x))`` is therefore
  ``TransformChain([DisplacementField(u, grid), AffineTransform(A)])``, the list
  ``-t 1Warp.nii.gz -t 0GenericAffine.mat``; its inverse is
  ``[AffineTransform(A^-1), DisplacementField(v, grid)]``, the list
  ``-t [0GenericAffine.mat,1] -t 1InverseWarp.nii.gz`` (:func:`registration_transform`). ANTs'
  wording "the last listed transform is applied first" describes the moving *image*, not points.

Reading and writing ITK/ANTs files into and from these objects (the only place LPS appears) is
:mod:`inrreg_pipeline.io.itk` (``read_transform``, ``read_transform_chain``, ``write_itk_transform``).

Why not nitransforms
--------------------
nitransforms (NiPreps) models the same ideas: ``Affine``, ``DenseFieldTransform``, a
``TransformChain`` whose ``map`` also applies its first element first, and ITK/ANTs readers at
the edges. inrreg keeps these few classes instead, for now, because:

1. inrreg reads and writes ITK/ANTs files through SimpleITK, ITK's own code, and its tests check
   those files against antsApplyTransforms itself. nitransforms parses ITK's HDF5 composites
   itself through h5py (a dependency inrreg's core does not have). It reads inrreg's files
   correctly (``tests/test_nitransforms_interop.py``: the composite, the inverse composite and
   the warp + affine pair, on an oblique anisotropic grid, map voxel centres as ANTs and this
   module do, within 1e-3 mm), so users can load them with it.
2. ``map`` must give what ANTs gives: the landmark TRE has to agree with
   ``antsApplyTransformsToPoints``. The field rule here is ITK's (above), checked against it.
   nitransforms (25.1) interpolates a field between its voxel centres with cubic B-splines over
   the positions ``x + u(x)`` instead, so off-grid points differ from ANTs by the field's
   curvature (under 0.1 mm inside a smooth field in that test, more within a voxel or two of the
   field's edge; docs/conventions.md section 2).
3. The core, the metrics and io need an object that imports only NumPy: no torch, nibabel,
   SciPy or h5py, and no reference image attached. It must be a pull-back, fixed-to-moving map
   with its inverse known (``1InverseWarp``) or iterated.

Adopting nitransforms later would change only :mod:`inrreg_pipeline.io` and this module. The
objects already have its shape: ``map``, ``inverse``, and chains in ``-t`` order.

Dimensions 2 and 3 are supported throughout; arrays are float64.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterable, Optional, Sequence

import numpy as np

__all__ = ["Transform", "AffineTransform", "DisplacementField", "TransformChain", "registration_transform",
           "map_grid", "INVERSE_ITERATIONS"]

#: Fixed-point iterations of :meth:`DisplacementField.inverse` when no inverse field is known (as
#: the core's ``fields.invert_displacement``).
INVERSE_ITERATIONS = 20
#: Points interpolated per block in :meth:`DisplacementField.displacement` (bounds the memory of
#: the 2^d corner gathers; does not change the values).
CHUNK = 65536


def _points(points: np.ndarray, d: int) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim < 1 or p.shape[-1] != d:
        raise ValueError(f"points must be an array (..., {d}) of RAS mm coordinates, got shape {p.shape}")
    return p


def _homogeneous(matrix: np.ndarray, name: str) -> np.ndarray:
    m = np.array(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] not in (3, 4):
        raise ValueError(f"{name} must be a 3x3 (2-D) or 4x4 (3-D) homogeneous matrix, got shape {m.shape}")
    d = m.shape[0] - 1
    if not np.all(np.isfinite(m)):
        raise ValueError(f"{name} contains non-finite values")
    if not np.allclose(m[d], np.eye(d + 1)[d]):
        raise ValueError(f"{name} last row must be [0, ..., 0, 1], got {m[d].tolist()}")
    return m


class Transform(ABC):
    """A pull-back point map in RAS mm (fixed/reference points -> moving points), ``d`` = 2 or 3."""

    ndim: int

    @abstractmethod
    def map(self, points: np.ndarray) -> np.ndarray:
        """Map RAS mm points ``(..., d)`` to RAS mm points of the same shape (float64)."""

    @abstractmethod
    def inverse(self) -> "Transform":
        """The map from moving points back to fixed points."""

    def then(self, other: "Transform") -> "TransformChain":
        """``x -> other(self(x))``: this transform first (``-t self -t other``)."""
        return TransformChain([self, other])


class AffineTransform(Transform):
    """``p = M x`` with ``M`` a ``(d+1, d+1)`` homogeneous RAS mm matrix (fixed -> moving)."""

    def __init__(self, matrix: np.ndarray):
        self.matrix = _homogeneous(matrix, "affine matrix")
        self.matrix.setflags(write=False)
        self.ndim = self.matrix.shape[0] - 1

    @classmethod
    def identity(cls, ndim: int) -> "AffineTransform":
        return cls(np.eye(int(ndim) + 1))

    def map(self, points: np.ndarray) -> np.ndarray:
        d = self.ndim
        p = _points(points, d)
        return p @ self.matrix[:d, :d].T + self.matrix[:d, d]

    def inverse(self) -> "AffineTransform":
        """The exact inverse ``M^-1`` (:class:`numpy.linalg.LinAlgError` for a singular matrix)."""
        return AffineTransform(np.linalg.inv(self.matrix))

    def __repr__(self) -> str:
        return f"AffineTransform(ndim={self.ndim})"


class DisplacementField(Transform):
    """``p = x + u(x)``: a dense displacement field on a grid, RAS mm.

    Parameters
    ----------
    field
        ``(*shape, d)`` displacements in RAS mm at the grid's voxel centres (``1Warp``'s content,
        in RAS rather than the file's LPS).
    grid_affine
        ``(d+1, d+1)`` voxel index -> RAS mm affine of that grid (voxel centres at integers).
    inverse_field
        Optional ``(*shape, d)`` RAS mm field ``v`` on the same grid with ``x = z + v(z)`` the
        inverse map (``1InverseWarp``); :meth:`inverse` then returns it instead of iterating.
    iterations
        Fixed-point iterations of :meth:`inverse` when ``inverse_field`` is not known.

    ``u`` between voxel centres is interpolated as ITK's ``DisplacementFieldTransform`` does (and
    so ``antsApplyTransforms`` and ``antsApplyTransformsToPoints``): multilinear, with the
    continuous voxel index clamped to the grid for indices in ``[-0.5, n - 0.5)`` on every axis
    (the edge value half a voxel beyond the outermost centres), and ``u = 0`` outside that box.
    (The core's torch sampling, ``core/space.sample_array``, instead falls linearly to 0 over the
    voxel beyond the edge; the two agree at and between the voxel centres.)
    """

    def __init__(self, field: np.ndarray, grid_affine: np.ndarray, inverse_field: Optional[np.ndarray] = None,
                 iterations: int = INVERSE_ITERATIONS):
        self.grid_affine = _homogeneous(grid_affine, "grid affine")
        d = self.grid_affine.shape[0] - 1
        f = np.asarray(field, dtype=np.float64)
        if f.ndim != d + 1 or f.shape[-1] != d:
            raise ValueError(f"a {d}-D displacement field must have shape (*grid_shape, {d}), got {f.shape}")
        if not np.all(np.isfinite(f)):
            raise ValueError("displacement field contains non-finite values")
        if inverse_field is not None:
            inverse_field = np.asarray(inverse_field, dtype=np.float64)
            if inverse_field.shape != f.shape:
                raise ValueError(f"inverse field has shape {inverse_field.shape}, the field {f.shape}: "
                                 "both must be on the same grid")
        self.field = f
        self.inverse_field = inverse_field
        self.ndim = d
        self.shape = tuple(f.shape[:d])
        self.iterations = int(iterations)
        self._world_to_voxel = np.linalg.inv(self.grid_affine)

    def displacement(self, points: np.ndarray) -> np.ndarray:
        """``u`` (RAS mm) at RAS mm points ``(..., d)``, interpolated by ITK's rule (class docstring)."""
        d = self.ndim
        p = _points(points, d)
        flat = p.reshape(-1, d)
        out = np.empty_like(flat)
        for start in range(0, len(flat), CHUNK):
            out[start:start + CHUNK] = self._interpolate(self.field, flat[start:start + CHUNK])
        return out.reshape(p.shape)

    def _interpolate(self, field: np.ndarray, points: np.ndarray) -> np.ndarray:
        """ITK's rule on one block of points ``(n, d)``; ``field`` is this grid's ``(*shape, d)``."""
        d = self.ndim
        n = np.asarray(self.shape)
        index = points @ self._world_to_voxel[:d, :d].T + self._world_to_voxel[:d, d]
        inside = np.all((index >= -0.5) & (index < n - 0.5), axis=1)
        np.clip(index, 0.0, n - 1.0, out=index)
        base = np.minimum(np.floor(index), np.maximum(n - 2, 0)).astype(np.intp)
        frac = index - base
        # C-order strides of the grid; an axis of one voxel has no second neighbour
        strides = np.array([int(np.prod(self.shape[k + 1:])) for k in range(d)], dtype=np.intp)
        step = np.where(n > 1, strides, 0)
        flat = field.reshape(-1, d)
        start = base @ strides
        out = np.zeros((len(points), d))
        for corner in range(2 ** d):
            bits = [(corner >> k) & 1 for k in range(d)]
            weight = np.ones(len(points))
            for k, bit in enumerate(bits):
                weight *= frac[:, k] if bit else 1.0 - frac[:, k]
            out += weight[:, None] * np.take(flat, start + int(np.dot(bits, step)), axis=0)
        out[~inside] = 0.0
        return out

    def map(self, points: np.ndarray) -> np.ndarray:
        p = _points(points, self.ndim)
        return p + self.displacement(p)

    def inverse(self) -> "DisplacementField":
        """The inverse map ``z -> z + v(z)`` as a field on the same grid.

        With a known ``inverse_field`` that field (exact as far as it is). Otherwise ``v`` is
        found at every voxel centre ``z`` by the fixed-point iteration ``v <- -u(z + v)``, started
        from ``v = -u(z)``, :attr:`iterations` times (the core's ``fields.invert_displacement``);
        it converges where ``x -> x + u(x)`` is a contraction-friendly, folding-free map (for a
        smooth field with ``|du/dx| < 1``), and the result is interpolated between voxel centres like
        any field. Either way the returned field knows this one as its inverse.
        """
        if self.inverse_field is not None:
            return DisplacementField(self.inverse_field, self.grid_affine, inverse_field=self.field,
                                     iterations=self.iterations)
        d = self.ndim
        flat = self.field.reshape(-1, d)
        v = np.empty_like(flat)
        for start, z in _grid_blocks(self.shape, self.grid_affine, CHUNK):
            block = -flat[start:start + len(z)]
            for _ in range(self.iterations):
                block = -self._interpolate(self.field, z + block)
            v[start:start + len(z)] = block
        return DisplacementField(v.reshape(self.field.shape), self.grid_affine, inverse_field=self.field,
                                 iterations=self.iterations)

    def __repr__(self) -> str:
        return f"DisplacementField(shape={self.shape}, inverse_known={self.inverse_field is not None})"


class TransformChain(Transform):
    """A composition in antsApplyTransforms ``-t`` order: ``map(x) = T_n(...T_1(x))``.

    ``transforms[0]`` is applied to a point first. Nested chains are flattened. All elements must
    have the same dimension; an empty chain is refused (use :meth:`AffineTransform.identity`).
    """

    def __init__(self, transforms: Iterable[Transform]):
        flat: list[Transform] = []
        for t in transforms:
            if isinstance(t, TransformChain):
                flat.extend(t.transforms)
            elif isinstance(t, Transform):
                flat.append(t)
            else:
                raise TypeError(f"a chain holds Transform objects, got {type(t).__name__}")
        if not flat:
            raise ValueError("a transform chain needs at least one transform")
        dims = sorted({t.ndim for t in flat})
        if len(dims) != 1:
            raise ValueError(f"the transforms of a chain have different dimensions: {dims}")
        self.transforms: tuple[Transform, ...] = tuple(flat)
        self.ndim = dims[0]

    def map(self, points: np.ndarray) -> np.ndarray:
        p = _points(points, self.ndim)
        for t in self.transforms:
            p = t.map(p)
        return p

    def inverse(self) -> "TransformChain":
        """``[T_n^-1, ..., T_1^-1]``: each element's :meth:`~Transform.inverse`, in reverse order."""
        return TransformChain([t.inverse() for t in reversed(self.transforms)])

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self):
        return iter(self.transforms)

    def __getitem__(self, index: int) -> Transform:
        return self.transforms[index]

    def __repr__(self) -> str:
        return f"TransformChain({list(self.transforms)!r})"


def registration_transform(affine: Optional[np.ndarray], displacement: Optional[np.ndarray] = None,
                           grid_affine: Optional[np.ndarray] = None,
                           inverse_displacement: Optional[np.ndarray] = None) -> TransformChain:
    """A registration's forward map ``phi(x) = A(x + u(x))`` as a chain (fixed -> moving, RAS mm).

    ``affine``: ``A`` ``(d+1, d+1)`` or None (identity); ``displacement``: ``u`` ``(*shape, d)`` RAS
    mm on the fixed grid ``grid_affine``, or None; ``inverse_displacement``: ``v`` on that grid
    (``phi^-1(y) = z + v(z)``, ``z = A^-1 y``), so that ``.inverse()`` is exact. The chain is
    ``[DisplacementField(u), AffineTransform(A)]``, the files ``-t 1Warp -t 0GenericAffine.mat``.
    """
    parts: list[Transform] = []
    if displacement is not None:
        if grid_affine is None:
            raise ValueError("grid_affine is required with a displacement field")
        parts.append(DisplacementField(displacement, grid_affine, inverse_field=inverse_displacement))
    if affine is not None:
        parts.append(AffineTransform(affine))
    if not parts:
        raise ValueError("at least one of affine and displacement must be given")
    return TransformChain(parts)


def map_grid(transform: Transform, shape: Sequence[int], grid_affine: np.ndarray) -> np.ndarray:
    """``transform`` at every voxel centre of a grid: ``(*shape, d)`` RAS mm (where a resampler
    reads the moving image for each voxel of that reference grid)."""
    return transform.map(_voxel_centres(tuple(int(s) for s in shape), _homogeneous(grid_affine, "grid affine")))


def _voxel_centres(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    d = len(shape)
    if affine.shape != (d + 1, d + 1):
        raise ValueError(f"a {d}-D grid needs a {d + 1}x{d + 1} affine, got {affine.shape}")
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), -1)
    return idx @ affine[:d, :d].T + affine[:d, d]


def _grid_blocks(shape: tuple[int, ...], affine: np.ndarray, chunk: int):
    """``(start, points)``: RAS mm of voxel centres ``start .. start + len(points)`` in C order."""
    d = len(shape)
    total = int(np.prod(shape))
    for start in range(0, total, chunk):
        idx = np.stack(np.unravel_index(np.arange(start, min(start + chunk, total)), shape), -1)
        yield start, idx @ affine[:d, :d].T + affine[:d, d]
