"""Affine stage: centre-of-mass initialisation, then gradient-based rigid -> affine, coarse to fine.

The result is a ``(d+1, d+1)`` RAS matrix ``A`` mapping fixed world points (mm) to moving world
points (mm), the pull-back convention of :mod:`inrreg_pipeline.core.space`. It is parameterised as

    ``A(x) = R(r) (I + L) (x - c) + c + s * t``

with ``c`` the fixed image's centre of mass, ``R(r)`` a rotation (matrix exponential of a
skew-symmetric matrix), ``L`` a free ``d x d`` matrix (scales and shears), ``t`` a translation
in units of ``s`` (half the fixed field of view, mm) so that one optimiser step has the same
meaning on any grid. ``t`` starts at the difference of the centres of mass.
"""
from __future__ import annotations

import numpy as np
import torch

from .config import AffineSettings
from .engine import Progress, optimise
from .losses import similarity_loss
from .space import (DeviceImage, SpatialImage, apply_affine, dilate_mm, downsample, shrink_factor,
                    world_bounding_box)


def centre_of_mass(image: SpatialImage, mask: np.ndarray | None = None) -> np.ndarray:
    """Intensity-weighted centre of mass in world mm (within ``mask`` when given)."""
    weights = np.clip(np.asarray(image.data, dtype=np.float64), 0, None)
    if mask is not None:
        weights = weights * (mask > 0)
    total = weights.sum()
    if total <= 0:
        weights = np.ones_like(weights)
        total = weights.sum()
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in image.shape], indexing="ij"), -1)
    centre_vox = (idx * weights[..., None]).reshape(-1, image.ndim).sum(0) / total
    return apply_affine(image.affine, centre_vox)


def _skew(params: torch.Tensor, d: int) -> torch.Tensor:
    if d == 2:
        z = torch.zeros((), dtype=params.dtype, device=params.device)
        return torch.stack([torch.stack([z, -params[0]]), torch.stack([params[0], z])])
    a, b, c = params
    z = torch.zeros((), dtype=params.dtype, device=params.device)
    return torch.stack([torch.stack([z, -c, b]), torch.stack([c, z, -a]), torch.stack([-b, a, z])])


class AffineModel(torch.nn.Module):
    """``A(x) = R(r) (I + L) (x - c) + c + s t`` (see module docstring)."""

    def __init__(self, d: int, centre: np.ndarray, scale: float, translation_mm: np.ndarray):
        super().__init__()
        self.d = d
        self.scale = float(scale)
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32))
        self.rotation = torch.nn.Parameter(torch.zeros(1 if d == 2 else 3))
        self.linear = torch.nn.Parameter(torch.zeros(d, d))
        self.translation = torch.nn.Parameter(torch.as_tensor(translation_mm / self.scale, dtype=torch.float32))

    def matrix(self) -> torch.Tensor:
        """The ``(d+1, d+1)`` homogeneous matrix (RAS, fixed -> moving)."""
        d = self.d
        eye = torch.eye(d, device=self.linear.device)
        m = torch.linalg.matrix_exp(_skew(self.rotation, d)) @ (eye + self.linear)
        t = self.centre + self.scale * self.translation - m @ self.centre
        top = torch.cat([m, t[:, None]], 1)
        bottom = torch.zeros(1, d + 1, device=m.device)
        bottom[0, d] = 1.0
        return torch.cat([top, bottom], 0)

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        a = self.matrix()
        return points @ a[: self.d, : self.d].T + a[: self.d, self.d]


def register_affine(fixed: SpatialImage, moving: SpatialImage, settings: AffineSettings, device: torch.device,
                    rng: np.random.Generator, fixed_mask: np.ndarray | None = None,
                    moving_mask: np.ndarray | None = None,
                    progress: Progress | None = None) -> tuple[np.ndarray, list[float]]:
    """Estimate ``A`` (fixed -> moving, RAS) and return it with the per-iteration loss history.

    ``fixed``/``moving`` intensities should be comparable in range (inrreg rescales them to
    [0, 1]). Iterations: ``rigid_iterations`` of rotation + translation at the coarsest level,
    then ``iterations[i]`` of the full affine at ``shrink_factors[i]`` (or ``level_spacing_mm[i]``).
    """
    d = fixed.ndim
    c_fixed = centre_of_mass(fixed, fixed_mask)
    c_moving = centre_of_mass(moving, moving_mask)
    lower, upper = world_bounding_box(fixed.shape, fixed.affine)
    scale = float(np.max(upper - lower) / 2.0)
    model = AffineModel(d, c_fixed, scale, c_moving - c_fixed).to(device)
    history: dict[str, list[float]] = {"total": []}
    if not settings.enabled:
        return model.matrix().detach().cpu().double().numpy(), history["total"]

    if fixed_mask is not None:
        fixed = fixed.with_data(fixed.data * (fixed_mask > 0))
    if moving_mask is not None:
        moving = moving.with_data(moving.data * (moving_mask > 0))

    # (fixed factor, moving factor, iterations, rigid only) per level; sizes in mm shrink each image by its own factor
    if settings.level_spacing_mm is None:
        factors = [(int(f), int(f)) for f in settings.shrink_factors]
    else:
        factors = [(shrink_factor(fixed, mm), shrink_factor(moving, mm)) for mm in settings.level_spacing_mm]
    schedule: list[tuple[int, int, int, bool]] = []
    if settings.rigid_iterations > 0 and factors:
        schedule.append((*factors[0], settings.rigid_iterations, True))
    schedule += [(f, m, n, False) for (f, m), n in zip(factors, settings.iterations)]

    for factor, moving_factor, iterations, rigid_only in schedule:
        f_low = downsample(fixed, factor)
        m_low = DeviceImage.from_image(downsample(moving, moving_factor), device)
        # the fixed foreground, grown into the background around it unless a user's mask bounds it
        candidates = np.argwhere(dilate_mm(f_low.data > 0.05 * f_low.data.max(), f_low.spacing,
                                           settings.sample_dilation_mm if fixed_mask is None else 0.0))
        if len(candidates) == 0:
            candidates = np.argwhere(np.ones(f_low.shape, bool))
        params = [model.rotation, model.translation] if rigid_only else list(model.parameters())
        optimiser = torch.optim.Adam(params, lr=settings.lr)
        f_values_all = torch.as_tensor(f_low.data, dtype=torch.float32, device=device)

        def step(f_low=f_low, m_low=m_low, candidates=candidates, f_values_all=f_values_all) -> dict:
            pick = candidates[rng.integers(0, len(candidates), size=min(settings.samples, len(candidates)))]
            idx = torch.as_tensor(pick, device=device)
            f_values = f_values_all[tuple(idx.T)]
            points = torch.as_tensor(apply_affine(f_low.affine, pick.astype(np.float64)), dtype=torch.float32,
                                     device=device)
            warped = m_low.sample(model(points))
            return {"total": similarity_loss(settings.similarity, f_values, warped)}

        optimise(step, optimiser, iterations, history, progress=progress)
    return model.matrix().detach().cpu().double().numpy(), history["total"]
