"""Fitting a deformation INR to one image pair, from scratch.

Each iteration draws ``patches`` random patches of ``patch_size^d`` points of the fixed image's own
voxel grid (so fixed intensities need no interpolation and local windows are well defined), centred
on voxels of the sampling mask. The moving image is sampled at ``A(x + u(x))`` where ``A`` is the
affine found before (fixed -> moving, RAS mm) and ``u`` the network's displacement (mm).

Coarse to fine: the iterations are split over the levels of ``smoothing_mm``; at each level both
images are smoothed by that Gaussian sigma (mm), so early steps see the large structures only,
as ANTs' smoothing sigmas do. The network and its optimiser state carry over between levels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from .config import LossSettings, NetworkSettings, OptimisationSettings
from .encodings import NormalisedBox
from .losses import displacement_jacobian, regulariser_loss, similarity_loss
from .networks import DeformationINR
from .space import DeviceImage, SpatialImage, smooth, world_bounding_box


def build_network(fixed: SpatialImage, settings: NetworkSettings) -> DeformationINR:
    """A fresh deformation network over the fixed image's world bounding box."""
    lower, upper = world_bounding_box(fixed.shape, fixed.affine)
    return DeformationINR(NormalisedBox(lower, upper), fixed.ndim, hidden_layers=settings.hidden_layers,
                          hidden_features=settings.hidden_features, activation=settings.activation,
                          omega=settings.omega, fourier_frequencies=settings.fourier_frequencies,
                          skip_connection=settings.skip_connection)


class PatchSampler:
    """Random patches of the fixed grid, as world points (mm) and fixed intensities.

    Patch corners are chosen so that each patch lies inside the image and its centre voxel lies
    in ``mask``; for images smaller than the patch the patch is clipped to the image.
    """

    def __init__(self, fixed: SpatialImage, mask: np.ndarray, patch_size: int, device: torch.device):
        self.d = fixed.ndim
        self.size = tuple(min(patch_size, n) for n in fixed.shape)
        self.shape = np.array(fixed.shape)
        self.centres = np.argwhere(mask > 0)
        if len(self.centres) == 0:
            raise ValueError("the sampling mask is empty")
        self.set_values(fixed.data, device)
        self.affine = torch.as_tensor(fixed.affine, dtype=torch.float32, device=device)
        offsets = np.stack(np.meshgrid(*[np.arange(s) for s in self.size], indexing="ij"), -1).reshape(-1, self.d)
        self.offsets = torch.as_tensor(offsets, device=device)
        self.device = device

    def set_values(self, data: np.ndarray, device: torch.device) -> None:
        """Replace the fixed intensities (same grid), e.g. by a smoothed copy."""
        self.values = torch.as_tensor(np.asarray(data), dtype=torch.float32, device=device)

    def random_points(self, n_points: int, rng: np.random.Generator) -> torch.Tensor:
        """``(n_points, d)`` world points (mm): random mask voxels jittered uniformly within the voxel."""
        idx = self.centres[rng.integers(0, len(self.centres), size=n_points)] + rng.uniform(-0.5, 0.5, (n_points, self.d))
        idx = torch.as_tensor(idx, dtype=torch.float32, device=self.device)
        return idx @ self.affine[: self.d, : self.d].T + self.affine[: self.d, self.d]

    def sample(self, n_patches: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(points, values)``: points ``(P * p^d, d)`` world mm; values ``(P, 1, *patch)``."""
        centres = self.centres[rng.integers(0, len(self.centres), size=n_patches)]
        size = np.array(self.size)
        corners = np.clip(centres - size // 2, 0, self.shape - size)
        idx = torch.as_tensor(corners, device=self.device)[:, None, :] + self.offsets[None]
        idx = idx.reshape(-1, self.d)
        values = self.values[tuple(idx.T)].reshape((n_patches, 1) + self.size)
        points = idx.to(torch.float32) @ self.affine[: self.d, : self.d].T + self.affine[: self.d, self.d]
        return points, values


@dataclass
class LossContext:
    """What a deformation model's extra loss terms may use, for one iteration (see :func:`fit_deformation`).

    ``points``: ``(N, d)`` fixed-space world points (mm) of the patches; ``u``: the model's
    displacement there (mm, with its graph); ``mapped``: ``A(points + u)``, moving world points;
    ``fixed_values``: ``(P, 1, *patch)`` fixed intensities; ``inside``: moving-mask weights at
    ``mapped`` (same shape) or None; ``affine``: ``(d+1, d+1)`` fixed -> moving (torch);
    ``moving``/``fixed``: the images, sampled at world points (mm) with ``.sample``;
    ``moving_mask``: the moving mask as an image (or None);
    ``similarity(fixed_values, warped)`` and ``regulariser(fn)`` (the configured regulariser of a
    displacement function ``fn`` at this iteration's regulariser points, unweighted) are the
    loop's own losses; ``alpha`` is the regulariser weight.
    """

    points: torch.Tensor
    u: torch.Tensor
    mapped: torch.Tensor
    fixed_values: torch.Tensor
    inside: torch.Tensor | None
    affine: torch.Tensor
    moving: DeviceImage
    fixed: DeviceImage
    moving_mask: DeviceImage | None
    similarity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    regulariser: Callable[[Callable[[torch.Tensor], torch.Tensor]], torch.Tensor]
    alpha: float


def make_optimiser(params, settings: OptimisationSettings) -> torch.optim.Optimizer:
    name = settings.optimizer.lower()
    if name == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    raise ValueError(f"unknown optimizer '{settings.optimizer}' (choose adam or adamw)")


def make_schedule(optimiser: torch.optim.Optimizer, settings: OptimisationSettings
                  ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``cosine``: decay from ``lr`` to ``lr * lr_final_fraction`` over the iterations; else none."""
    if settings.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=settings.iterations,
                                                          eta_min=settings.lr * settings.lr_final_fraction)
    return None


def level_iterations(total: int, levels: int) -> list[int]:
    """``total`` iterations split as evenly as possible over ``levels`` (later levels take the rest)."""
    base, rest = divmod(total, levels)
    return [base + (1 if i >= levels - rest else 0) for i in range(levels)]


def fit_deformation(fixed: SpatialImage, moving: SpatialImage, affine: np.ndarray, network: NetworkSettings,
                    optimisation: OptimisationSettings, loss: LossSettings, device: torch.device,
                    rng: np.random.Generator, sampling_mask: np.ndarray,
                    moving_mask: np.ndarray | None = None,
                    progress: Callable[[int, float], None] | None = None,
                    model: torch.nn.Module | None = None
                    ) -> tuple[DeformationINR, dict[str, list[float]]]:
    """Optimise a new :class:`DeformationINR` for the pair; returns it and the loss history.

    ``model``: optimise this deformation model instead of a new network (the variants of
    :mod:`.variants`). A deformation model maps world points ``(N, d)`` (mm) to displacements
    (mm) and may define ``parameter_groups(lr) -> list[dict]`` (optimiser groups; frozen
    parameters left out), ``similarity_weight: float`` (weight of the loop's similarity term,
    default 1) and ``extra_losses(ctx: LossContext) -> dict[str, Tensor]`` (weighted terms added
    to the loss and recorded in the history under their names).

    ``affine``: ``(d+1, d+1)`` RAS fixed -> moving from the affine stage (identity if none).
    ``sampling_mask``: fixed-grid voxels where patches are centred. ``moving_mask`` (moving grid),
    when given, multiplies both intensities at the mapped points so only its inside is compared.
    Torch's global RNG must be seeded by the caller (network initialisation).
    """
    model = build_network(fixed, network).to(device) if model is None else model
    groups = model.parameter_groups(optimisation.lr) if hasattr(model, "parameter_groups") else model.parameters()
    optimiser = make_optimiser(groups, optimisation)
    schedule = make_schedule(optimiser, optimisation)
    with_extras = hasattr(model, "extra_losses")
    sampler = PatchSampler(fixed, sampling_mask, optimisation.patch_size, device)
    mask_dev = DeviceImage(moving_mask.astype(np.float32), moving.affine, device) if moving_mask is not None else None
    a = torch.as_tensor(affine, dtype=torch.float32, device=device)
    history: dict[str, list[float]] = {"similarity": [], "regulariser": [], "total": []}
    use_reg = loss.regulariser != "none" and loss.alpha > 0
    levels = optimisation.smoothing_mm
    steps = [(sigma, n) for sigma, n in zip(levels, level_iterations(optimisation.iterations, len(levels)))]
    for sigma, n_steps in steps:
        fixed_level = smooth(fixed, sigma)
        sampler.set_values(fixed_level.data, device)
        moving_dev = DeviceImage.from_image(smooth(moving, sigma), device)
        fixed_dev = DeviceImage.from_image(fixed_level, device) if with_extras else None
        for _ in range(n_steps):
            _step(model, optimiser, sampler, moving_dev, fixed_dev, mask_dev, a, optimisation, loss, use_reg, rng,
                  history)
            if schedule is not None:
                schedule.step()
            if progress is not None:
                progress(1, history["total"][-1])
    return model, history


def _step(model: torch.nn.Module, optimiser: torch.optim.Optimizer, sampler: PatchSampler, moving_dev: DeviceImage,
          fixed_dev: DeviceImage | None, mask_dev: DeviceImage | None, a: torch.Tensor,
          optimisation: OptimisationSettings, loss: LossSettings, use_reg: bool, rng: np.random.Generator,
          history: dict[str, list[float]]) -> None:
    """One optimisation step on freshly sampled patches; appends the losses to ``history``.

    ``fixed_dev`` is given for models with ``extra_losses`` (the variants), whose terms are added.
    """
    d = sampler.d
    device = a.device
    points, fixed_values = sampler.sample(optimisation.patches, rng)
    reg_on_patches = use_reg and optimisation.regulariser_points == 0
    points.requires_grad_(reg_on_patches)
    u = model(points)
    mapped = (points + u) @ a[:d, :d].T + a[:d, d]
    warped = moving_dev.sample(mapped).reshape(fixed_values.shape)
    inside = None
    if mask_dev is not None:
        inside = mask_dev.sample(mapped).reshape(fixed_values.shape)
        warped, fixed_values = warped * inside, fixed_values * inside
    sim = similarity_loss(loss.similarity, fixed_values, warped, loss.lncc_window)
    reg_points = None
    if use_reg:
        if reg_on_patches:
            reg_points, reg_u = points, u
        else:
            reg_points = sampler.random_points(optimisation.regulariser_points, rng).requires_grad_(True)
            reg_u = model(reg_points)
        grad_u = displacement_jacobian(reg_u, reg_points)
        reg = regulariser_loss(loss.regulariser, grad_u, reg_points)
        total = sim + loss.alpha * reg
    else:
        reg = torch.zeros(())
        total = sim
    if fixed_dev is not None:  # a variant's extra loss terms (LossContext)
        total = total + (getattr(model, "similarity_weight", 1.0) - 1.0) * sim

        def regularise(fn, pts=reg_points):
            pts = pts.detach().requires_grad_(True)
            return regulariser_loss(loss.regulariser, displacement_jacobian(fn(pts), pts), pts)

        extra = model.extra_losses(LossContext(
            points, u, mapped, fixed_values, inside, a, moving_dev, fixed_dev, mask_dev,
            lambda f, w: similarity_loss(loss.similarity, f, w, loss.lncc_window),
            regularise if use_reg else (lambda fn: torch.zeros((), device=device)),
            loss.alpha if use_reg else 0.0))
        for name, term in extra.items():
            total = total + term
            history.setdefault(name, []).append(float(term.detach()))
    optimiser.zero_grad(set_to_none=True)
    total.backward()
    optimiser.step()
    history["similarity"].append(float(sim.detach()))
    history["regulariser"].append(float(reg.detach()))
    history["total"].append(float(total.detach()))
