"""The diffeomorphic velocity INR: a SIREN gives a stationary velocity field, integrated by scaling and squaring.

The deformation INR of :mod:`.optimisation` outputs a displacement ``u`` directly, so nothing keeps
``x -> x + u(x)`` invertible. Here the network's output is a stationary velocity ``v`` (mm, world
space, at any world point) and the transform is its group exponential ``phi = exp(v)``, computed
on a control grid by scaling and squaring (Arsigny et al. 2006; as in SyN's and VoxelMorph's
diffeomorphic variants):

    u_0 = v / 2^N,    u_{k+1}(x) = u_k(x) + u_k(x + u_k(x)),    phi(x) = x + u_N(x).

``exp(-v)`` is the exact inverse (up to discretisation), so ``1InverseWarp`` is integrated, not
iterated. The full map is ``A(phi(x))`` with ``A`` the affine stage's matrix (fixed -> moving, RAS).

Geometry (all in RAS millimetres):

* The *control grid* is the fixed voxel grid subsampled by an integer stride per axis (about
  ``control_spacing_mm``), restricted to the bounding box of the fixed mask enlarged by
  ``margin_mm``. The velocity is the network's output times a window that is 1 on the mask's box
  and falls to 0 (raised cosine) over the margin, so ``phi`` is exactly the identity outside the
  box and there is no seam at its edge.
* Each level of the pyramid subsamples the fixed grid by its shrink factor (after Gaussian
  smoothing, :func:`~.space.downsample`) over the same box; the displacement is interpolated
  (multilinearly) from the control grid at those voxels and the moving image is sampled at
  ``A(x + u(x))`` through its own affine, so orientation, voxel size and obliquity are handled.
* The loss is computed on the whole cropped image each step (no patches): ``loss.similarity``
  (NCC + LNCC with a window in mm) inside the fixed mask, plus ``alpha`` times the diffusion energy
  ``mean |dv/dx|^2`` of the velocity on the control grid (finite differences over the grid's axes
  divided by their spacings, exact for orthogonal axes).
* ``symmetric``: the fixed image is sampled at ``exp(-v/2)`` and the moving one at
  ``A(exp(v/2))``, both on the fixed grid (the midpoint formulation of SyN); the output transform
  is still ``A(exp(v))``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as nnf

from .config import RegistrationSettings, SVFSettings
from .encodings import NormalisedBox
from .engine import Progress, optimise
from .hash_grid_inr import HashGridINR
from .losses import box_mean, determinant, determinant_of_columns, lncc_map, mind_ssc, ncc, similarity_loss
from .method import Fields, Fit, similarity_and_regulariser
from .optimisation import build_network
from .pair import PreparedPair
from .space import (SpatialImage, dilate_mm, downsample, shrink_factor, voxel_grid_to_world,
                    world_bounding_box, world_to_grid_map)

__all__ = ["ControlGrid", "VelocityField", "integrate", "fit_svf", "dense_fields", "svf_iterations",
           "level_shrink_factors", "level_control_spacings", "level_lncc_windows", "level_mind_alphas",
           "level_frozen_hash_levels", "CoarseHashHold",
           "velocity_network", "VelocityINR"]


@dataclass
class ControlGrid:
    """A sub-grid of the fixed voxel grid: voxel ``i`` of the control grid is fixed voxel
    ``start + stride * i`` (per axis). ``affine`` is its voxel -> RAS mm map."""

    shape: tuple[int, ...]
    affine: np.ndarray
    start: np.ndarray
    stride: np.ndarray

    @classmethod
    def around_mask(cls, fixed: SpatialImage, mask: np.ndarray, spacing_mm: float, margin_mm: float
                    ) -> "ControlGrid":
        """The control grid over ``mask``'s bounding box enlarged by ``margin_mm`` (clipped to the image)."""
        stride = np.maximum(1, np.round(spacing_mm / fixed.spacing)).astype(int)
        idx = np.argwhere(mask > 0)
        if len(idx) == 0:
            raise ValueError("the sampling mask is empty")
        margin_vox = np.ceil(margin_mm / fixed.spacing).astype(int)
        lo = np.maximum(idx.min(0) - margin_vox, 0)
        hi = np.minimum(idx.max(0) + margin_vox, np.array(fixed.shape) - 1)
        shape = tuple(int(n) for n in (hi - lo) // stride + 1)
        d = fixed.ndim
        step = np.eye(d + 1)
        step[:d, :d] = np.diag(stride)
        step[:d, d] = lo
        return cls(shape, fixed.affine @ step, lo, stride)

    def subgrid(self, fixed: SpatialImage, factor: int) -> tuple[tuple[slice, ...], np.ndarray]:
        """Slices of ``downsample(fixed, factor)`` covering this grid's box, and their voxel -> RAS affine."""
        d = fixed.ndim
        lo = np.ceil(self.start / factor).astype(int)
        hi = (self.start + self.stride * (np.array(self.shape) - 1)) // factor
        step = np.eye(d + 1)
        step[:d, :d] = np.diag([float(factor)] * d)
        step[:d, d] = lo * factor
        return tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi)), fixed.affine @ step


class GridSampler:
    """Multilinear sampling of fields on one grid at world points (mm), differentiable in both."""

    def __init__(self, shape: tuple[int, ...], affine: np.ndarray, device: torch.device):
        linear, offset = world_to_grid_map(shape, affine)
        self.d = len(shape)
        self.linear = torch.as_tensor(linear, dtype=torch.float32, device=device)
        self.offset = torch.as_tensor(offset, dtype=torch.float32, device=device)

    def __call__(self, volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``volume`` ``(1, C, *shape)`` at world points ``(*lead, d)``: ``(C, *lead)``; 0 outside."""
        lead = points.shape[:-1]
        grid = points.reshape(-1, self.d) @ self.linear + self.offset
        grid = grid.reshape((1, -1) + (1,) * (self.d - 1) + (self.d,))
        out = nnf.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return out.reshape((volume.shape[1],) + tuple(lead))


def integrate(velocity: torch.Tensor, points: torch.Tensor, sampler: GridSampler, steps: int) -> torch.Tensor:
    """``exp(v) - id`` by scaling and squaring on the control grid.

    ``velocity``: ``(*shape, d)`` mm at the control-grid ``points`` ``(*shape, d)`` (mm);
    returns the displacement ``u`` ``(*shape, d)`` (mm) with ``exp(v)(x) = x + u(x)``.
    """
    u = velocity / (2 ** steps)
    d = velocity.shape[-1]
    for _ in range(steps):
        volume = u.movedim(-1, 0)[None]
        u = u + sampler(volume, points + u).movedim(0, -1)
    return u.reshape(velocity.shape[:-1] + (d,))


def _taper(grid: ControlGrid, fixed: SpatialImage, mask: np.ndarray, margin_mm: float) -> np.ndarray:
    """1 on the mask's bounding box, a raised cosine to 0 over ``margin_mm`` outside it (control grid)."""
    idx = np.argwhere(mask > 0)
    lo, hi = idx.min(0), idx.max(0)
    weight = np.ones(grid.shape, dtype=np.float32)
    for axis in range(fixed.ndim):
        vox = grid.start[axis] + grid.stride[axis] * np.arange(grid.shape[axis])
        dist_mm = np.maximum(np.maximum(lo[axis] - vox, vox - hi[axis]), 0) * fixed.spacing[axis]
        w = 0.5 * (1 + np.cos(np.pi * np.clip(dist_mm / max(margin_mm, 1e-6), 0, 1))) if margin_mm > 0 else \
            (dist_mm == 0).astype(float)
        shape = [1] * fixed.ndim
        shape[axis] = -1
        weight = weight * w.reshape(shape).astype(np.float32)
    return weight


class VelocityField(torch.nn.Module):
    """The velocity INR on its control grid: ``velocity()`` is ``(*shape, d)`` mm, tapered to 0 at the margin."""

    def __init__(self, network: torch.nn.Module, grid: ControlGrid, taper: np.ndarray, device: torch.device,
                 smoothing_mm: float = 0.0):
        super().__init__()
        self.network = network
        self.smoothing_mm = smoothing_mm
        self.set_grid(grid, taper, device)

    def set_grid(self, grid: ControlGrid, taper: np.ndarray, device: torch.device) -> None:
        """Evaluate the (continuous) network on another control grid from now on (a finer one at a
        finer pyramid level); ``taper`` is that grid's window."""
        self.grid = grid
        self.register_buffer("points", torch.as_tensor(voxel_grid_to_world(grid.shape, grid.affine),
                                                       dtype=torch.float32, device=device))
        self.register_buffer("taper", torch.as_tensor(taper, device=device)[..., None])
        self.sampler = GridSampler(grid.shape, grid.affine, device)
        self.spacing = np.linalg.norm(grid.affine[:-1, :-1], axis=0)
        # d(index)/d(world): du/dx = (du/di) @ inv(L), L the control grid's voxel -> world linear part
        self.register_buffer("voxel_from_world", torch.as_tensor(np.linalg.inv(grid.affine[:-1, :-1]),
                                                                 dtype=torch.float32, device=device))
        # the hash-grid network precomputes its encoding at these points (a SIREN just evaluates them)
        at_points = getattr(self.network, "at_points", None)
        self.evaluate = at_points(self.points) if at_points is not None else lambda: self.network(self.points)
        self.kernels = None if self.smoothing_mm <= 0 else [
            torch.as_tensor(_gaussian_kernel(self.smoothing_mm / h), dtype=torch.float32, device=device)
            for h in self.spacing]

    def velocity(self) -> torch.Tensor:
        """The network's velocity on the control grid (mm), tapered, Gaussian-smoothed when set."""
        v = self.evaluate() * self.taper
        return v if self.kernels is None else _smooth_field(v, self.kernels)

    def displacement(self, steps: int, sign: float = 1.0, velocity: torch.Tensor | None = None) -> torch.Tensor:
        """``exp(sign * v) - id`` on the control grid, ``(*shape, d)`` mm."""
        v = self.velocity() if velocity is None else velocity
        return integrate(sign * v, self.points, self.sampler, steps)

    def diffusion(self, velocity: torch.Tensor) -> torch.Tensor:
        """``mean |dv/dx|^2`` over the control grid, finite differences in mm/mm."""
        total = velocity.new_zeros(())
        for axis, h in enumerate(self.spacing):
            if velocity.shape[axis] > 1:
                total = total + (torch.diff(velocity, dim=axis) / float(h)).pow(2).sum(-1).mean()
        return total

    def log_jacobian_energy(self, displacement: torch.Tensor) -> torch.Tensor:
        """``mean (log det(I + du/dx))^2`` of a control-grid displacement ``(*shape, d)`` (mm): the
        spread of local volume change that SD log J measures, by central differences (one-sided at
        the borders) in world mm through the grid's direction cosines; det clamped at 1e-3."""
        d = displacement.shape[-1]
        du_di = torch.stack(torch.gradient(displacement, dim=tuple(range(d))), dim=-1)  # (..., c, k)
        jac = du_di @ self.voxel_from_world + torch.eye(d, device=displacement.device)
        return torch.log(determinant(jac).clamp_min(1e-3)).pow(2).mean()

    def cell_corner_determinants(self, displacement: torch.Tensor) -> torch.Tensor:
        """det J of the multilinear interpolant of a control-grid displacement ``(*shape, d)`` (mm) at
        the ``2^d`` corners of every grid cell: ``(2^d, *cells)``.

        Inside a cell the interpolated map's Jacobian at a corner has the cell's edges from that corner
        as columns (forward differences along each axis, mapped to world mm by the grid's linear
        part), so the interpolant is orientation-preserving in the cell when all ``2^d`` are > 0. Central
        differences, which :meth:`log_jacobian_energy` uses, average two cells and miss a fold that
        only one of them has.
        """
        d = displacement.shape[-1]
        step = torch.linalg.inv(self.voxel_from_world)  # world step of one grid index per axis (columns)
        diffs = [torch.diff(displacement, dim=axis) for axis in range(d)]
        cells = [n - 1 for n in displacement.shape[:-1]]
        dets = []
        for corner in range(1 << d):
            offset = [(corner >> axis) & 1 for axis in range(d)]
            columns = []
            for axis in range(d):
                index = tuple(slice(0, cells[b]) if b == axis else slice(offset[b], offset[b] + cells[b])
                              for b in range(d))
                columns.append(diffs[axis][index] + step[:, axis])
            dets.append(determinant_of_columns(columns))
        return torch.stack(dets) / torch.linalg.det(step)

    def folding_energy(self, displacement: torch.Tensor, floor: float) -> torch.Tensor:
        """``mean relu(floor - det J)^2`` over every cell corner (:meth:`cell_corner_determinants`): 0
        while every interpolated cell keeps at least ``floor`` of its volume, growing with how far one
        folds (the log-Jacobian energy's clamp gives a folded point no gradient)."""
        return torch.relu(floor - self.cell_corner_determinants(displacement)).pow(2).mean()

    def at(self, displacement: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """A control-grid displacement ``(*shape, d)`` interpolated at world points ``(*lead, d)``."""
        return self.sampler(displacement.movedim(-1, 0)[None], points).movedim(0, -1)

    def on_level(self, factor: int, crop_shape: tuple[int, ...], points: torch.Tensor
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
        """``lambda u: self.at(u, points)`` for the voxels ``points`` ``(*crop_shape, d)`` of a pyramid
        level's crop (:meth:`ControlGrid.subgrid`, the fixed grid shrunk by ``factor``).

        When every control point is a level voxel (start and stride multiples of ``factor``), the crop
        is the control grid refined ``stride / factor`` times along each axis, corner to corner, so the
        multilinear interpolation is :func:`torch.nn.functional.interpolate` (``align_corners``): the
        same values up to float rounding, without a world -> grid map and gather per voxel (on a 2 mm
        pair, the largest ``grid_sample`` of each step). Otherwise the general sampler."""
        grid = self.grid
        refined = tuple(int(s * (n - 1) // factor + 1) for s, n in zip(grid.stride, grid.shape))
        aligned = (np.all(grid.start % factor == 0) and np.all(grid.stride % factor == 0)
                   and tuple(crop_shape) == refined)
        if not aligned:
            return lambda u: self.at(u, points)
        mode = "trilinear" if len(crop_shape) == 3 else "bilinear"
        return lambda u: nnf.interpolate(u.movedim(-1, 0)[None], size=tuple(crop_shape), mode=mode,
                                         align_corners=True)[0].movedim(0, -1)


def _gaussian_kernel(sigma_vox: float) -> np.ndarray:
    """A normalised 1-D Gaussian of ``sigma_vox`` voxels, truncated at 3 sigma (at least 3 taps)."""
    radius = max(1, int(np.ceil(3 * sigma_vox)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / max(sigma_vox, 1e-6)) ** 2)
    return (k / k.sum()).astype(np.float32)


def _smooth_field(field: torch.Tensor, kernels: list[torch.Tensor]) -> torch.Tensor:
    """A vector field ``(*shape, d)`` convolved with one 1-D kernel per axis (zero padding beyond the grid,
    where the tapered velocity is 0 anyway)."""
    d = field.shape[-1]
    x = field.movedim(-1, 0)[:, None]  # (d, 1, *shape): components as a batch
    conv = nnf.conv3d if d == 3 else nnf.conv2d
    for axis, k in enumerate(kernels):
        shape = [1, 1] + [1] * d
        shape[2 + axis] = len(k)
        pad = [0] * d
        pad[axis] = len(k) // 2
        x = conv(x, k.reshape(shape), padding=tuple(pad))
    return x[:, 0].movedim(0, -1)


def velocity_network(fixed: SpatialImage, settings: RegistrationSettings, device: torch.device) -> torch.nn.Module:
    """A fresh velocity network over ``fixed``'s world box (``svf.network``): the SIREN of the
    ``network`` section, or the hash-grid MLP of ``svf.hash``. Torch's RNG must be seeded by the caller."""
    if settings.svf.network == "hash-grid":
        lower, upper = world_bounding_box(fixed.shape, fixed.affine)
        return HashGridINR(NormalisedBox(lower, upper), fixed.ndim, settings.svf.hash, device)
    return build_network(fixed, settings.network)


def level_shrink_factors(image: SpatialImage, s: SVFSettings) -> list[int]:
    """The integer shrink factor of ``image`` at each level: ``s.shrink_factors``, or, with
    ``s.level_spacing_mm``, the factor that brings the image's finest voxel axis closest to each size
    (at least 1; 4 mm on 0.9 mm voxels is 4, 2 mm on 0.9 mm voxels 2)."""
    if s.level_spacing_mm is None:
        return [int(f) for f in s.shrink_factors]
    return [shrink_factor(image, mm) for mm in s.level_spacing_mm]


def level_control_spacings(s: SVFSettings) -> list[float]:
    """The control grid's spacing (mm) at each level: ``s.level_control_spacing_mm``, or
    ``s.control_spacing_mm`` at every level. The last level's grid is the transform's."""
    return _per_level(s.level_control_spacing_mm, s.control_spacing_mm, len(s.iterations))


def level_lncc_windows(s: SVFSettings) -> list[float]:
    """The LNCC window (mm) at each level: ``s.level_lncc_window_mm``, or ``s.lncc_window_mm`` at every level."""
    return _per_level(s.level_lncc_window_mm, s.lncc_window_mm, len(s.iterations))


def level_mind_alphas(s: SVFSettings) -> list[float]:
    """The MIND-SSC weight at each level: ``s.level_mind_alpha``, or ``s.mind_alpha`` at every level."""
    return _per_level(s.level_mind_alpha, s.mind_alpha, len(s.iterations))


def level_frozen_hash_levels(s: SVFSettings) -> list[int]:
    """How many of the coarsest hash levels stay fixed at each level: ``s.level_frozen_hash_levels``, or 0."""
    return [int(n) for n in _per_level(s.level_frozen_hash_levels, 0, len(s.iterations))]


def _per_level(values: list[float] | None, default: float, n_levels: int) -> list[float]:
    """``values`` (one per level) as floats, or ``default`` at each of the ``n_levels`` levels."""
    return [float(default)] * n_levels if values is None else [float(v) for v in values]


def _odd_window(window_mm: float, spacing: np.ndarray) -> int:
    n = max(3, int(round(window_mm / float(np.mean(spacing)))))
    return n if n % 2 else n + 1


def _lncc_region(mask: torch.Tensor, window: int) -> torch.Tensor:
    """Where the LNCC map of a crop with this ``mask`` (0/1) is counted: the voxels of the map (valid
    region) whose ``window`` lies mostly in the mask. Constant over a level, so computed once there."""
    return (box_mean(mask[None, None], min(window, *mask.shape)) > 0.5).to(mask.dtype)


def _masked_similarity(name: str, fixed: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor,
                       window: int, region: torch.Tensor) -> torch.Tensor:
    """``loss.similarity`` over a whole cropped image, restricted to ``mask`` (same shape, 0/1).

    ``ncc+lncc`` and ``lncc``: the LNCC map is averaged over ``region`` (:func:`_lncc_region` of the
    mask and window); other similarities see the masked voxels only.
    """
    if name in ("ncc+lncc", "lncc"):
        local = lncc_map(fixed[None, None], warped[None, None], window)
        term = ((1.0 - local).abs() * region).sum() / region.sum().clamp_min(1.0)
        if name == "lncc":
            return term
        sel = mask > 0
        return (1.0 - ncc(fixed[sel], warped[sel])).abs() + term
    sel = mask > 0
    return similarity_loss(name, fixed[sel][None], warped[sel][None])


def _mind_distance(distance_mm: float, spacing: np.ndarray) -> int:
    """MIND-SSC's neighbour distance in whole voxels of a level (at least 1)."""
    return max(1, int(round(distance_mm / float(np.mean(spacing)))))


def _mind_difference(fixed_descriptors: torch.Tensor, warped: torch.Tensor, mask: torch.Tensor,
                     distance: int) -> torch.Tensor:
    """Mean squared MIND-SSC difference between ``fixed_descriptors`` ``(1, K, *crop)`` and the
    descriptors of ``warped`` ``(*crop)``, over the voxels of ``mask`` (0/1)."""
    warped_descriptors = mind_ssc(warped[None, None], distance)
    squared = (fixed_descriptors - warped_descriptors).pow(2).mean(1)[0]
    return (squared * mask).sum() / mask.sum().clamp_min(1.0)


def fit_svf(fixed: SpatialImage, moving: SpatialImage, affine: np.ndarray, settings: RegistrationSettings,
            device: torch.device, sampling_mask: np.ndarray, moving_mask: np.ndarray | None = None,
            progress: Progress | None = None, dilate_mask: bool = True
            ) -> tuple[VelocityField, dict[str, list[float]]]:
    """Optimise a velocity INR for the pair (intensities already rescaled); returns it and the loss history.

    ``affine``: ``(d+1, d+1)`` RAS fixed -> moving from the affine stage. ``sampling_mask``: fixed
    grid voxels compared (and whose bounding box the control grid covers). ``moving_mask``, when
    given, multiplies both intensities at the mapped points. ``dilate_mask``: compare
    ``sampling_mask`` dilated by ``svf.similarity_dilation_mm`` (False for a user's mask, which
    says where to compare). Torch's RNG must be seeded by the
    caller (network initialisation); the loop itself draws no random numbers.
    """
    s = settings.svf
    control_spacings = level_control_spacings(s)
    windows_mm = level_lncc_windows(s)
    mind_alphas = level_mind_alphas(s)

    def control_grid(spacing_mm: float) -> tuple[ControlGrid, np.ndarray]:
        grid = ControlGrid.around_mask(fixed, sampling_mask, spacing_mm, s.margin_mm)
        return grid, _taper(grid, fixed, sampling_mask, s.margin_mm)

    model = VelocityField(velocity_network(fixed, settings, device), *control_grid(control_spacings[0]), device,
                          s.velocity_smoothing_mm).to(device)
    a = torch.as_tensor(affine, dtype=torch.float32, device=device)
    d = fixed.ndim
    history: dict[str, list[float]] = {"similarity": [], "regulariser": [], "total": [], "level": []}
    optimiser = torch.optim.Adam(model.network.parameters(), lr=s.lr)
    # a user's mask says where to compare; only the automatic foreground is dilated
    dilation_mm = s.similarity_dilation_mm if dilate_mask else 0.0
    mask_f = dilate_mm(sampling_mask, fixed.spacing, dilation_mm).astype(np.float32)
    fixed_factors = level_shrink_factors(fixed, s)
    # a voxel count per image: in mm mode a 1 mm fixed and a 2 mm moving image meet at the level's size
    moving_factors = fixed_factors if s.level_spacing_mm is None else level_shrink_factors(moving, s)
    fade_in = _coarse_to_fine(model.network, s)
    frozen_levels = level_frozen_hash_levels(s)
    hold = CoarseHashHold(model.network) if any(frozen_levels) else None
    steps_before = 0
    for level, (factor, moving_factor, n_steps) in enumerate(zip(fixed_factors, moving_factors, s.iterations)):
        if control_spacings[level] != control_spacings[max(level - 1, 0)]:
            model.set_grid(*control_grid(control_spacings[level]), device)
        if n_steps == 0:
            continue
        for group in optimiser.param_groups:
            group["lr"] = s.lr
        if hold is not None:
            hold.set(frozen_levels[level], optimiser)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=n_steps,
                                                              eta_min=s.lr * s.lr_final_fraction)
        f_level = downsample(fixed, factor)
        m_level = downsample(moving, moving_factor)
        crop, crop_affine = model.grid.subgrid(fixed, factor)
        f_crop = torch.as_tensor(f_level.data[crop], dtype=torch.float32, device=device)
        inside = downsample(fixed.with_data(mask_f), factor).data[crop] > 0.5
        mask_crop = torch.as_tensor(inside.astype(np.float32), device=device)
        points = torch.as_tensor(voxel_grid_to_world(f_crop.shape, crop_affine), dtype=torch.float32, device=device)
        moving_sampler = GridSampler(m_level.shape, m_level.affine, device)
        moving_volume = torch.as_tensor(m_level.data, dtype=torch.float32, device=device)[None, None]
        fixed_sampler = GridSampler(f_level.shape, f_level.affine, device)
        fixed_volume = torch.as_tensor(f_level.data, dtype=torch.float32, device=device)[None, None]
        mmask = None
        if moving_mask is not None:
            mm = downsample(moving.with_data(moving_mask.astype(np.float32)), moving_factor)
            mmask = torch.as_tensor(mm.data, dtype=torch.float32, device=device)[None, None]
        window = _odd_window(windows_mm[level], f_level.spacing)
        to_level = model.on_level(factor, tuple(f_crop.shape), points)
        region = _lncc_region(mask_crop, window)
        mind_distance = _mind_distance(s.mind_distance_mm, f_level.spacing)
        mind_alpha = mind_alphas[level]
        fixed_mind = mind_ssc(f_crop[None, None], mind_distance) if mind_alpha > 0 else None

        def step(level=level, f_crop=f_crop, mask_crop=mask_crop, points=points, moving_sampler=moving_sampler,
                 moving_volume=moving_volume, fixed_sampler=fixed_sampler, fixed_volume=fixed_volume, mmask=mmask,
                 window=window, to_level=to_level, region=region, mind_distance=mind_distance,
                 mind_alpha=mind_alpha, fixed_mind=fixed_mind) -> dict:
            v = model.velocity()
            half = 0.5 if s.symmetric else 1.0
            phi_half = model.displacement(s.squaring_steps, half, v)  # exp(v) itself when not symmetric
            u = to_level(phi_half)
            mapped = (points + u) @ a[:d, :d].T + a[:d, d]
            warped = moving_sampler(moving_volume, mapped)[0]
            target = f_crop
            if s.symmetric:
                u_back = to_level(model.displacement(s.squaring_steps, -half, v))
                target = fixed_sampler(fixed_volume, points + u_back)[0]
            if mmask is not None:
                inside_m = moving_sampler(mmask, mapped)[0]
                warped, target = warped * inside_m, target * inside_m
            sim = _masked_similarity(settings.loss.similarity, target, warped, mask_crop, window, region)
            if mind_alpha > 0:
                # the fixed image's descriptors are the level's own unless the target moves or is masked
                target_mind = fixed_mind if target is f_crop else mind_ssc(target[None, None], mind_distance)
                sim = sim + mind_alpha * _mind_difference(target_mind, warped, mask_crop, mind_distance)
            # exp(v) itself, for the regularisers of the transform (integrated once more only when symmetric)
            phi = phi_half
            if s.symmetric and (settings.loss.regulariser == "jacobian" or s.folding_alpha > 0):
                phi = model.displacement(s.squaring_steps, 1.0, v)
            reg = model.log_jacobian_energy(phi) if settings.loss.regulariser == "jacobian" else model.diffusion(v)
            total = sim + settings.loss.alpha * reg
            if s.diffusion_alpha > 0:
                total = total + s.diffusion_alpha * model.diffusion(v)
            if s.folding_alpha > 0:
                total = total + s.folding_alpha * model.folding_energy(phi, s.folding_floor)
            return {"similarity": sim, "regulariser": reg, "total": total, "level": level}

        optimise(step, optimiser, n_steps, history, schedule=schedule, progress=progress,
                 before_step=None if fade_in is None else (lambda i, first=steps_before: fade_in(first + i)))
        steps_before += n_steps
    if fade_in is not None:
        fade_in(None)  # the written transform is the one the last step optimised: all levels whole
    if hold is not None:
        hold.set(0, optimiser)
    return model, history


class CoarseHashHold:
    """Keeps the coarsest levels of a hash-grid velocity's table where the earlier pyramid levels left them.

    :meth:`set` ``(n, optimiser)`` at the start of a pyramid level: from then on the gradient of the
    table entries of hash levels ``0..n-1`` (the first entries of the flat parameter vector, level
    after level) is masked to 0 and their Adam momentum is cleared, so Adam leaves them exactly as
    they are (its update is ``lr * m / (sqrt(v) + eps)`` with ``m = 0``); the finer levels and the
    MLP go on learning. ``n = 0`` releases every level.
    """

    def __init__(self, network: torch.nn.Module):
        self.encoding = network.encoding
        self._hook: torch.utils.hooks.RemovableHandle | None = None

    def set(self, n_levels: int, optimiser: torch.optim.Optimizer) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if n_levels <= 0:
            return
        layout = self.encoding.layout
        entries = layout.offsets[n_levels] if n_levels < layout.n_levels else layout.n_entries
        cut = entries * layout.features_per_level
        params = self.encoding.params
        learns = torch.ones_like(params)
        learns[:cut] = 0
        self._hook = params.register_hook(lambda grad: grad * learns)
        momentum = optimiser.state.get(params, {}).get("exp_avg")
        if momentum is not None:
            momentum[:cut] = 0


def _coarse_to_fine(network: torch.nn.Module, s: SVFSettings) -> Callable[[int | None], None] | None:
    """``set(step)``: the hash-grid velocity's level weights at that step of the whole fit (counted
    over all levels; ``None``: all levels whole) when ``s.network`` is ``hash-grid`` with
    ``hash.coarse_to_fine_steps``; else ``None``. ``alpha`` goes linearly from ``1 / levels`` (the
    coarsest level alone) to 1 over those steps."""
    n = s.hash.coarse_to_fine_steps
    if s.network != "hash-grid" or n <= 0:
        return None
    first = 1.0 / network.n_levels

    def set_alpha(step: int | None) -> None:
        network.set_alpha(None if step is None or step >= n else first + (1.0 - first) * step / n)
    return set_alpha


def dense_fields(model: VelocityField, fixed: SpatialImage, steps: int, device: torch.device,
                 chunk: int = 262144) -> tuple[np.ndarray, np.ndarray]:
    """``(u, w)`` on the whole fixed grid (mm, ``(*shape, d)``): ``exp(v) - id`` and ``exp(-v) - id``.

    Both are integrated on the control grid and interpolated (multilinearly, zero beyond the control
    grid) at every fixed voxel. The control grid is a sub-grid of the fixed one, so a fixed voxel one
    stride or more beyond its first or last point is exactly 0: only the voxels of the box
    :func:`_interpolated_box` are evaluated (about half of a 1 mm brain image), the rest stay 0.
    """
    box = _interpolated_box(model.grid, fixed.shape)
    with torch.no_grad():
        v = model.velocity()
        fields = [model.displacement(steps, sign, v) for sign in (1.0, -1.0)]
        world = voxel_grid_to_world(fixed.shape, fixed.affine)[box].reshape(-1, fixed.ndim)
        out = []
        for field in fields:
            parts = []
            for start in range(0, len(world), chunk):
                pts = torch.as_tensor(world[start:start + chunk], dtype=torch.float32, device=device)
                parts.append(model.at(field, pts).cpu().numpy())
            dense = np.zeros(fixed.shape + (fixed.ndim,), dtype=np.float32)
            dense[box] = np.concatenate(parts).reshape(dense[box].shape)
            out.append(dense)
    return out[0], out[1]


def _interpolated_box(grid: ControlGrid, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The fixed voxels within one stride of the control grid's points (per axis, clipped to the image):
    outside it multilinear interpolation with zero padding gives exactly 0."""
    last = grid.start + grid.stride * (np.array(grid.shape) - 1)
    lo = np.maximum(grid.start - grid.stride + 1, 0)
    hi = np.minimum(last + grid.stride, np.array(shape))  # exclusive
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def svf_iterations(settings: RegistrationSettings) -> int:
    """Total optimisation steps (for progress bars)."""
    return int(sum(settings.svf.iterations))



class VelocityINR:
    """:class:`~.method.RegistrationMethod` of ``svf``: fit the velocity, integrate ``exp(v)`` and ``exp(-v)``."""

    stage = "deformable"
    uses_affine_stage = True

    def iterations(self, settings: RegistrationSettings) -> int:
        return svf_iterations(settings)

    def fit(self, pair: PreparedPair, affine: np.ndarray, settings: RegistrationSettings, use_affine: bool,
            progress: Progress | None) -> Fit:
        model, history = fit_svf(pair.fixed_norm, pair.moving_norm, affine, settings, pair.device,
                                 pair.sampling_mask, pair.moving_mask, progress,
                                 dilate_mask=pair.fixed_mask is None)
        return Fit(model, history)

    def fields(self, fit: Fit, pair: PreparedPair, affine: np.ndarray, settings: RegistrationSettings) -> Fields:
        fit.model.eval()
        u, v = dense_fields(fit.model, pair.fixed, settings.svf.squaring_steps, pair.device)
        return Fields(u, v)

    def loss_summary(self, history: dict[str, list[float]]) -> dict:
        return similarity_and_regulariser(history)


METHOD = VelocityINR()
