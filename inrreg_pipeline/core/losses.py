"""Similarity losses and transform regularisers.

Similarities compare fixed intensities with warped-moving intensities sampled at the same points.
Patch tensors have shape ``(P, 1, p, p[, p])`` (P patches of ``p^d`` grid points); point tensors
``(N,)``. Regularisers take the displacement Jacobian ``du/dx`` in mm/mm (autograd with respect to
world points), so anisotropic and oblique grids are handled by construction.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as nnf

from .choices import REGULARISERS, SIMILARITIES

EPS = 1e-6


def ncc(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of each patch (flattened), averaged over patches.

    Signed, not clamped: anti-correlated patches give negative values and a loss above 1.
    Inputs ``(P, ...)``; a 1-D input counts as one patch.
    """
    a = fixed.reshape(fixed.shape[0], -1) if fixed.ndim > 1 else fixed[None]
    b = warped.reshape(warped.shape[0], -1) if warped.ndim > 1 else warped[None]
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    cc = (a * b).sum(1) / torch.sqrt((a * a).sum(1) * (b * b).sum(1) + EPS)
    return cc.mean()


def lncc_map(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9) -> torch.Tensor:
    """Local (windowed) correlation coefficient over ``window^d`` voxels; signed, unclamped.

    ``fixed``, ``warped``: ``(P, 1, p, p[, p])`` patches. Returns the valid-region map.
    """
    w = min(window, *fixed.shape[2:])
    mean_a, mean_b = box_mean(fixed, w), box_mean(warped, w)
    var_a = box_mean(fixed * fixed, w) - mean_a ** 2
    var_b = box_mean(warped * warped, w) - mean_b ** 2
    cov = box_mean(fixed * warped, w) - mean_a * mean_b
    return cov / torch.sqrt(var_a.clamp_min(0) * var_b.clamp_min(0) + EPS)


class _WindowSum(torch.autograd.Function):
    """Sums of ``window`` consecutive values along one axis (valid region, stride 1), as ``window - 1``
    in-place additions of shifted views; the gradient is the same sliding sum of the gradient padded
    by ``window - 1`` zeros on both sides (a "full" correlation with ones).

    Why not ``avg_pool{d}d``: its CPU kernel visits every tap of every output through generic index
    arithmetic; for the velocity INR's 9-voxel LNCC window at 2 mm, its forward and backward were a
    quarter of a step. Shifted adds over whole arrays are vectorised and give the same sums of the
    same ``window`` values (3.4x faster forward and backward on one thread, equal to 2e-7)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, axis: int, window: int) -> torch.Tensor:
        ctx.axis, ctx.window = axis, window
        return _sliding_sum(x, axis, window)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        axis, window = ctx.axis, ctx.window
        pad = [0, 0] * (grad.ndim - 1 - axis) + [window - 1, window - 1]
        return _sliding_sum(nnf.pad(grad, pad), axis, window), None, None


def _sliding_sum(x: torch.Tensor, axis: int, window: int) -> torch.Tensor:
    n = x.shape[axis] - window + 1
    out = x.narrow(axis, 0, n).clone()
    for shift in range(1, window):
        out += x.narrow(axis, shift, n)
    return out


def box_mean(x: torch.Tensor, window: int) -> torch.Tensor:
    """Mean over ``window^d`` voxel windows (valid region, stride 1) of ``(N, C, *spatial)``: the values
    of ``avg_pool{d}d(x, window, 1)``, as one sliding sum per axis (:class:`_WindowSum`), so
    ``d * (window - 1)`` additions per voxel instead of ``window^d``."""
    d = x.ndim - 2
    for axis in range(2, 2 + d):
        x = _WindowSum.apply(x, axis, window)
    return x / float(window ** d)


def mind_ssc(image: torch.Tensor, distance: int, radius: int = 1) -> torch.Tensor:
    """MIND-SSC descriptors (Heinrich et al. 2012, 2013) of ``image`` ``(1, 1, *spatial)``, 2-D or 3-D:
    ``(1, K, *spatial)`` with ``K`` 12 in 3-D, 4 in 2-D, values in (0, 1].

    Channel ``k`` compares the two ``2r+1``-voxel patches around ``x + a_k`` and ``x + b_k``, where
    ``(a_k, b_k)`` are the pairs of the six (four) axis neighbours ``+-distance`` voxels away that are
    not opposite each other: ``D_k = box_mean((I(x + a_k) - I(x + b_k))^2)``, then
    ``exp(-D_k / V)`` with ``V`` the mean of the ``D_k`` at ``x`` (clamped to [0.001, 1000] times its
    image mean), divided by its largest channel. The descriptor says how the local structure is
    shaped (edges and their orientation), not how bright it is, so comparing descriptors aligns
    structure where a windowed correlation can be satisfied by a shifted intensity pattern.
    Edges are replicated beyond the image. Written here because no dependency of inrreg provides
    it for torch tensors with gradients (the reference implementations are C++ and MATLAB).
    """
    d = image.ndim - 2
    reach = 2 * distance + radius
    padded = nnf.pad(image, [reach, reach] * d, mode="replicate")
    spatial = image.shape[2:]
    window = 2 * radius + 1
    neighbours = []
    for axis in range(d):
        for sign in (1, -1):
            offset = [0] * d
            offset[axis] = sign * distance
            neighbours.append(tuple(offset))
    pairs = [(a, b) for i, a in enumerate(neighbours) for b in neighbours[i + 1:]
             if any(x != -y for x, y in zip(a, b))]
    # channel (a, b) is the patch distance along b - a, read at x + a: one filtered image per
    # direction (two pairs share each), each read at two offsets (half the filtering)
    directions = sorted({tuple(y - x for x, y in zip(a, b)) for a, b in pairs})
    # S_delta(y) = box_mean((I(y) - I(y + delta))^2) for y from -distance to n + distance - 1 per axis
    # (every x + a); before the box, y runs from -distance - radius (padded index distance)
    span = [n + 2 * distance + 2 * radius for n in spatial]

    def view(volume: torch.Tensor, start: tuple[int, ...], extent: list[int]) -> torch.Tensor:
        index = (slice(None), slice(None)) + tuple(slice(a, a + n) for a, n in zip(start, extent))
        return volume[index]

    filtered = {}
    for delta in directions:
        here = view(padded, tuple(distance for _ in range(d)), span)
        there = view(padded, tuple(distance + o for o in delta), span)
        filtered[delta] = box_mean((here - there) ** 2, window)  # index j is y = j - distance
    distances = torch.cat([view(filtered[tuple(y - x for x, y in zip(a, b))],
                                tuple(distance + o for o in a), list(spatial))
                           for a, b in pairs], dim=1)
    variance = distances.mean(1, keepdim=True)
    # relative bounds keep the descriptor contrast-free; a tensor, so a CUDA step does not wait on the host
    level = variance.mean().detach().clamp_min(1e-30)
    variance = variance.clamp(min=level * 1e-3, max=level * 1e3)
    descriptor = torch.exp(-distances / variance)
    return descriptor / descriptor.amax(1, keepdim=True)


def ncc_lncc_loss(fixed: torch.Tensor, warped: torch.Tensor, window: int = 9) -> torch.Tensor:
    """``|1 - NCC| + mean |1 - LNCC|`` (methods.md section 1)."""
    return (1.0 - ncc(fixed, warped)).abs() + (1.0 - lncc_map(fixed, warped, window)).abs().mean()


def mse(fixed: torch.Tensor, warped: torch.Tensor) -> torch.Tensor:
    """Mean squared intensity difference."""
    return ((fixed - warped) ** 2).mean()


def mutual_information(fixed: torch.Tensor, warped: torch.Tensor, bins: int = 32,
                       value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Differentiable mutual information (nats) with Gaussian Parzen windows.

    Intensities are expected in ``value_range`` (inrreg rescales images robustly to [0, 1]);
    the Parzen width is one bin spacing.
    """
    a = fixed.reshape(-1)
    b = warped.reshape(-1)
    lo, hi = value_range
    centres = torch.linspace(lo, hi, bins, device=a.device, dtype=a.dtype)
    sigma = (hi - lo) / (bins - 1)
    wa = torch.exp(-0.5 * ((a[:, None] - centres) / sigma) ** 2)
    wb = torch.exp(-0.5 * ((b[:, None] - centres) / sigma) ** 2)
    wa = wa / (wa.sum(1, keepdim=True) + EPS)
    wb = wb / (wb.sum(1, keepdim=True) + EPS)
    joint = wa.T @ wb / a.shape[0]
    pa = joint.sum(1, keepdim=True)
    pb = joint.sum(0, keepdim=True)
    return (joint * (torch.log(joint + EPS) - torch.log(pa @ pb + EPS))).sum()


__all__ = ["SIMILARITIES", "REGULARISERS", "similarity_loss", "regulariser_loss"]


def similarity_loss(name: str, fixed: torch.Tensor, warped: torch.Tensor, lncc_window: int = 9) -> torch.Tensor:
    """Loss (lower is better) for a similarity named in :data:`SIMILARITIES`."""
    if name == "ncc+lncc":
        return ncc_lncc_loss(fixed, warped, lncc_window)
    if name == "ncc":
        return (1.0 - ncc(fixed, warped)).abs()
    if name == "mse":
        return mse(fixed, warped)
    if name == "mi":
        return -mutual_information(fixed, warped)
    raise ValueError(f"unknown similarity '{name}' (choose from {', '.join(SIMILARITIES)})")


# --- regularisers -------------------------------------------------------------------------------

def displacement_jacobian(displacement: torch.Tensor, points: torch.Tensor, create_graph: bool = True
                          ) -> torch.Tensor:
    """``du_i/dx_j`` by autograd, shape ``(N, d, d)``; ``points`` must require grad (mm)."""
    d = points.shape[-1]
    rows = [torch.autograd.grad(displacement[:, i].sum(), points, create_graph=create_graph,
                                retain_graph=create_graph or i < d - 1)[0] for i in range(d)]
    return torch.stack(rows, 1)


def determinant_of_columns(columns: Sequence[torch.Tensor]) -> torch.Tensor:
    """``det [c_0 .. c_{d-1}]`` of ``d`` column vectors ``(..., d)``, ``d <= 3`` by the explicit formula
    (``c_0 . (c_1 x c_2)`` in 3-D). :func:`torch.linalg.det` factorises each small matrix by LU and
    solves with it in the backward, and indexing a stacked matrix entry by entry allocates a full
    zero matrix per entry in the backward: together about a third of a velocity-INR step on the CPU."""
    d = len(columns)
    if d == 1:
        return columns[0][..., 0]
    if d == 2:
        a, b = columns
        return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    if d == 3:
        return (columns[0] * torch.linalg.cross(columns[1], columns[2], dim=-1)).sum(-1)
    return torch.linalg.det(torch.stack(list(columns), -1))


def determinant(m: torch.Tensor) -> torch.Tensor:
    """``det`` of a batch of square matrices ``(..., d, d)`` (:func:`determinant_of_columns`)."""
    return determinant_of_columns(m.unbind(-1))


def jacobian_determinant(grad_u: torch.Tensor) -> torch.Tensor:
    """``det(I + du/dx)`` per point, from :func:`displacement_jacobian`."""
    d = grad_u.shape[-1]
    return determinant(grad_u + torch.eye(d, dtype=grad_u.dtype, device=grad_u.device))


def jacobian_loss(grad_u: torch.Tensor) -> torch.Tensor:
    """Mean ``|1 - det J_phi|`` (penalises local volume change and folding)."""
    return (1.0 - jacobian_determinant(grad_u)).abs().mean()


def diffusion_loss(grad_u: torch.Tensor) -> torch.Tensor:
    """Mean ``||du/dx||_F^2``."""
    return (grad_u ** 2).sum((1, 2)).mean()


def bending_energy(grad_u: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Mean ``||Hessian u||_F^2`` (second derivatives by autograd, mm^-1)."""
    d = points.shape[-1]
    total = 0.0
    for i in range(d):
        for j in range(d):
            h = torch.autograd.grad(grad_u[:, i, j].sum(), points, create_graph=True)[0]
            total = total + (h ** 2).sum(1)
    return total.mean()




def regulariser_loss(name: str, grad_u: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Regulariser named in :data:`REGULARISERS`."""
    if name == "jacobian":
        return jacobian_loss(grad_u)
    if name == "diffusion":
        return diffusion_loss(grad_u)
    if name == "bending":
        return bending_energy(grad_u, points)
    if name == "none":
        return grad_u.sum() * 0.0
    raise ValueError(f"unknown regulariser '{name}' (choose from {', '.join(REGULARISERS)})")
