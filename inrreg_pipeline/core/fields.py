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

from .jacobian import jacobian_determinant_fd
from .losses import displacement_jacobian, jacobian_determinant
from .space import DeviceImage, voxel_grid_to_world

CHUNK = 65536


def _chunks(points: np.ndarray, chunk: int):
    flat = points.reshape(-1, points.shape[-1])
    for start in range(0, len(flat), chunk):
        yield flat[start:start + chunk]


def evaluate_displacement(model: torch.nn.Module, shape: tuple[int, ...], affine: np.ndarray,
                          device: torch.device, chunk: int = CHUNK) -> np.ndarray:
    """``u`` (mm) at every voxel centre of the grid, shape ``(*shape, d)``."""
    points = voxel_grid_to_world(shape, affine)
    out = []
    with torch.no_grad():
        for block in _chunks(points, chunk):
            out.append(model(torch.as_tensor(block, dtype=torch.float32, device=device)).cpu().numpy())
    return np.concatenate(out).reshape(points.shape).astype(np.float32)


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


def invert_displacement(field: np.ndarray, affine: np.ndarray, device: torch.device, iterations: int = 20
                        ) -> np.ndarray:
    """Inverse field ``v`` on the same grid by fixed-point iteration ``v(z) = -u(z + v(z))``.

    ``u`` is interpolated (multilinear) between grid points and taken as 0 outside the grid.
    """
    d = field.shape[-1]
    shape = field.shape[:-1]
    u = DeviceImage(field, affine, device, vector=True)
    z = torch.as_tensor(voxel_grid_to_world(shape, affine), dtype=torch.float32, device=device).reshape(-1, d)
    v = -torch.as_tensor(field, dtype=torch.float32, device=device).reshape(-1, d)
    with torch.no_grad():
        for _ in range(iterations):
            v = -u.sample(z + v)
    return v.reshape(field.shape).cpu().numpy().astype(np.float32)


def inverse_consistency(field: np.ndarray, inverse: np.ndarray, affine: np.ndarray, device: torch.device,
                        mask: np.ndarray | None = None) -> dict[str, float]:
    """Residual ``|| (x + u(x)) + v(x + u(x)) - x ||`` (mm) over the grid (inside ``mask`` if given).

    Returns mean, 95th percentile and maximum, in mm.
    """
    d = field.shape[-1]
    shape = field.shape[:-1]
    v = DeviceImage(inverse, affine, device, vector=True)
    x = torch.as_tensor(voxel_grid_to_world(shape, affine), dtype=torch.float32, device=device).reshape(-1, d)
    u = torch.as_tensor(field, dtype=torch.float32, device=device).reshape(-1, d)
    with torch.no_grad():
        y = x + u
        residual = torch.linalg.norm(y + v.sample(y) - x, dim=-1).cpu().numpy().reshape(shape)
    values = residual[mask > 0] if mask is not None and mask.any() else residual.ravel()
    return {"mean_mm": float(values.mean()), "p95_mm": float(np.percentile(values, 95)),
            "max_mm": float(values.max())}


def jacobian_summary(jacobian: np.ndarray, inside: np.ndarray) -> dict[str, float]:
    """Folding (% of voxels with det J <= 0) inside a mask and over the field of view, min and max."""
    return {"percent_nonpositive_in_mask": float(100.0 * np.mean(jacobian[inside] <= 0)),
            "percent_nonpositive_fov": float(100.0 * np.mean(jacobian <= 0)),
            "min": float(jacobian.min()), "max": float(jacobian.max())}
