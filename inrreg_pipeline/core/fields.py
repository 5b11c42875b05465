"""Dense displacement fields from a deformation INR: evaluation, Jacobians, inversion.

All fields are arrays ``(*grid_shape, d)`` of RAS millimetres on a grid given by its voxel -> RAS
affine (the fixed image's grid, as ANTs stores ``1Warp`` and ``1InverseWarp``).

The dense Jacobian determinant written with a registration is :func:`field_jacobian_determinant`
(finite differences of the evaluated field on the grid, as ANTs and evaluation scripts compute
it); :func:`evaluate_jacobian_determinant` (autograd through the network at every voxel, several
times the cost of evaluating the field) is kept as the exact reference the tests compare it with.
"""
from __future__ import annotations

import numpy as np
import torch

from .jacobian import jacobian_determinant_fd, jacobian_summary  # noqa: F401 (re-exported)
from .losses import displacement_jacobian, jacobian_determinant
from .space import DeviceImage, voxel_grid_to_world

CHUNK = 65536
#: Points per network evaluation of the dense field, by device type. On the CPU a block's
#: activations (8192 x 128 float32 = 4 MB per layer) stay in cache: a 3 x 128 SIREN evaluated
#: 1.1-1.9x faster than in blocks of 65 536 (three runs on a loaded machine), bit for bit the same
#: values. A GPU wants large blocks.
FIELD_CHUNK = {"cpu": 8192, "cuda": 262144}
#: Points per block of the fixed-point inversion: every point's iterations depend only on the
#: field, so blocks are independent; a block's working set stays in cache across iterations.
#: On a 1 mm field (one thread), 3 iterations took 3.2 s in blocks of 32 768, 4.1 s in blocks of
#: 16 384 and 10-12 s in blocks of 131 072 or 524 288; the values are bit for bit the same.
INVERSE_CHUNK = 32768
#: At most this many voxels of the mask enter :func:`inverse_consistency` (beyond it a
#: deterministic, evenly strided subsample). A 1 mm brain mask (~1.4 M voxels) stays exact: there
#: the mask-only evaluation takes ~1 s (the whole grid took 3.5 s) and a 200 k subsample would save
#: 0.7 s more for a 0.02 % change of the mean; the bound is for larger grids (CT, 0.5 mm).
CONSISTENCY_POINTS = 2_000_000


def _chunks(points: np.ndarray, chunk: int):
    flat = points.reshape(-1, points.shape[-1])
    for start in range(0, len(flat), chunk):
        yield flat[start:start + chunk]


def evaluate_displacement(model: torch.nn.Module, shape: tuple[int, ...], affine: np.ndarray,
                          device: torch.device, chunk: int | None = None) -> np.ndarray:
    """``u`` (RAS mm, float32) at every voxel centre of the grid, shape ``(*shape, d)``; the
    world points are made ``chunk`` at a time (no whole-grid coordinate array). ``chunk``
    defaults to :data:`FIELD_CHUNK` for the device (it does not change the values)."""
    d = len(shape)
    chunk = chunk or FIELD_CHUNK.get(torch.device(device).type, CHUNK)
    out = np.empty((int(np.prod(shape)), d), dtype=np.float32)
    with torch.no_grad():
        for start, block in _grid_blocks(shape, affine, chunk):
            points = torch.as_tensor(block, dtype=torch.float32, device=device)
            out[start:start + len(block)] = model(points).cpu().numpy()
    return out.reshape(tuple(shape) + (d,))


def field_jacobian_determinant(field: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``det(I + du/dx)`` (dimensionless, float32, shape ``field.shape[:-1]``) of a displacement
    field ``(*shape, d)`` in RAS mm on the grid with voxel -> RAS ``affine``, by finite differences
    in physical space (central inside, one-sided on the faces; direction cosines and spacing
    honoured): :func:`inrreg_pipeline.core.jacobian.jacobian_determinant_fd`."""
    return jacobian_determinant_fd(field, affine, dtype=np.float32)


def evaluate_jacobian_determinant(model: torch.nn.Module, shape: tuple[int, ...], affine: np.ndarray,
                                  device: torch.device, chunk: int = CHUNK // 4) -> np.ndarray:
    """``det(I + du/dx)`` at every voxel centre (autograd, exact for the network), shape ``shape``.

    The reference for :func:`field_jacobian_determinant` (which the registration writes): ``d``
    backward passes per block, so several times the cost of :func:`evaluate_displacement`.
    """
    points = voxel_grid_to_world(shape, affine)
    out = []
    for block in _chunks(points, chunk):
        x = torch.as_tensor(block, dtype=torch.float32, device=device).requires_grad_(True)
        grad_u = displacement_jacobian(model(x), x, create_graph=False)
        out.append(jacobian_determinant(grad_u).detach().cpu().numpy())
    return np.concatenate(out).reshape(shape).astype(np.float32)


def invert_displacement(field: np.ndarray, affine: np.ndarray, device: torch.device, iterations: int = 20,
                        chunk: int = INVERSE_CHUNK) -> np.ndarray:
    """Inverse field ``v`` (RAS mm, same grid) by fixed-point iteration ``v(z) = -u(z + v(z))``,
    started from ``v = -u``, ``iterations`` times.

    ``u`` is interpolated (multilinear) between grid points and taken as 0 outside the grid. Each
    voxel's iteration depends only on ``u``, so the voxels are iterated in blocks of ``chunk``
    whose working set stays in cache across the iterations (the result is bit for bit the one of
    iterating the whole grid at once). All ``iterations`` run: on a 1 mm brain pair about 4 % of
    the voxels (outside the head, where nothing constrains ``u``) still move by millimetres at the
    20th iteration, so there is no block that could stop early.
    """
    d = field.shape[-1]
    shape = field.shape[:-1]
    u = DeviceImage(field, affine, device, vector=True)
    flat = np.asarray(field, dtype=np.float32).reshape(-1, d)
    out = np.empty(flat.shape, dtype=np.float32)
    with torch.no_grad():
        for start, z in _grid_blocks(shape, affine, chunk):
            z = torch.as_tensor(z, dtype=torch.float32, device=device)
            v = -torch.as_tensor(flat[start:start + len(z)], device=device)
            for _ in range(iterations):
                v = -u.sample(z + v)
            out[start:start + len(z)] = v.cpu().numpy()
    return out.reshape(field.shape)


def _grid_blocks(shape: tuple[int, ...], affine: np.ndarray, chunk: int):
    """``(start, points)``: world mm (float64) of the voxel centres ``start .. start + len(points)``
    of the grid in C order, ``chunk`` at a time, without building the whole grid."""
    d = len(shape)
    total = int(np.prod(shape))
    for start in range(0, total, chunk):
        idx = np.stack(np.unravel_index(np.arange(start, min(start + chunk, total)), shape), -1)
        yield start, idx @ affine[:d, :d].T + affine[:d, d]


def inverse_consistency(field: np.ndarray, inverse: np.ndarray, affine: np.ndarray, device: torch.device,
                        mask: np.ndarray | None = None, max_points: int | None = CONSISTENCY_POINTS
                        ) -> dict[str, float]:
    """Residual ``|| (x + u(x)) + v(x + u(x)) - x ||`` (mm) at voxel centres ``x`` of the grid
    (inside ``mask`` if given and not empty), ``v`` interpolated multilinearly.

    With more than ``max_points`` such voxels, every ``k``-th of them in C order is used
    (``k = ceil(n / max_points)``; deterministic, evenly spread); ``max_points=None`` uses all.
    Returns mean, 95th percentile and maximum over those voxels (mm) and ``n_points``.
    """
    d = field.shape[-1]
    shape = field.shape[:-1]
    inside = (mask > 0).ravel() if mask is not None and mask.any() else np.ones(int(np.prod(shape)), bool)
    index = np.flatnonzero(inside)
    if max_points is not None and len(index) > max_points:
        index = index[::-(-len(index) // int(max_points))]
    x_np = np.stack(np.unravel_index(index, shape), -1) @ affine[:d, :d].T + affine[:d, d]
    v = DeviceImage(inverse, affine, device, vector=True)
    x = torch.as_tensor(x_np, dtype=torch.float32, device=device)
    u = torch.as_tensor(np.asarray(field, dtype=np.float32).reshape(-1, d)[index], device=device)
    with torch.no_grad():
        y = x + u
        values = torch.linalg.norm(y + v.sample(y) - x, dim=-1).cpu().numpy()
    return {"mean_mm": float(values.mean()), "p95_mm": float(np.percentile(values, 95)),
            "max_mm": float(values.max()), "n_points": int(len(index))}
