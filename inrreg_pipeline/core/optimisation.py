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
from torch import nn

from .config import LossSettings, NetworkSettings, OptimisationSettings, VariantSettings
from .encodings import NormalisedBox
from .engine import Progress, level_iterations, make_optimiser, make_schedule, optimise
from .losses import displacement_jacobian, regulariser_loss, similarity_loss
from .networks import DeformationINR
from .space import DeviceImage, SpatialImage, smooth, world_bounding_box


def build_network(image: SpatialImage, network: NetworkSettings, variants: VariantSettings | None = None,
                  omega: float | None = None, zero_last: bool = False, omega_mode: str | None = None
                  ) -> DeformationINR:
    """A fresh deformation network over ``image``'s world bounding box (the network's ``[-1, 1]`` box).

    ``variants``: its omega control (``omega_mode``, ``omega_delta``; default fixed omega);
    ``omega`` / ``omega_mode`` override the settings' (ensemble members); ``zero_last``: the output
    layer starts at 0 (a cascade stage starts from the previous stages' field). Torch's global RNG
    must be seeded by the caller (initialisation).
    """
    variants = variants or VariantSettings()
    lower, upper = world_bounding_box(image.shape, image.affine)
    return DeformationINR(NormalisedBox(lower, upper), image.ndim, hidden_layers=network.hidden_layers,
                          hidden_features=network.hidden_features, activation=network.activation,
                          omega=network.omega if omega is None else omega,
                          fourier_frequencies=network.fourier_frequencies,
                          skip_connection=network.skip_connection,
                          omega_mode=variants.omega_mode if omega_mode is None else omega_mode,
                          omega_delta=variants.omega_delta, zero_last=zero_last)


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


class DeformationModel(nn.Module):
    """What :func:`fit_deformation` optimises: a module mapping fixed-space world points ``(N, d)``
    (RAS mm) to displacements ``u`` (mm), ``phi(x) = A(x + u(x))``.

    The defaults describe a plain network; the variants of :mod:`.variants` override them:
    ``parameter_groups(lr)`` (optimiser groups, frozen parameters left out), ``similarity_weight``
    (weight of the loop's similarity term), ``uses_fixed_image`` (whether :meth:`extra_losses` samples
    the fixed image, which the loop then keeps on the device), ``extra_losses(ctx)`` (weighted terms
    added to the loss, recorded under their names) and ``summary()`` (what the model learned, for
    ``registration.json``).
    """

    similarity_weight: float = 1.0
    uses_fixed_image: bool = False

    def parameter_groups(self, lr: float) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    def extra_losses(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        return {}

    def summary(self) -> dict:
        return {}


def fit_deformation(fixed: SpatialImage, moving: SpatialImage, affine: np.ndarray, model: DeformationModel,
                    optimisation: OptimisationSettings, loss: LossSettings, device: torch.device,
                    rng: np.random.Generator, sampling_mask: np.ndarray,
                    moving_mask: np.ndarray | None = None, progress: Progress | None = None,
                    history: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """Optimise ``model`` on the pair with :func:`~.engine.optimise`; returns the loss history.

    ``affine``: ``(d+1, d+1)`` RAS fixed -> moving from the affine stage (identity if none).
    ``sampling_mask``: fixed-grid voxels where patches are centred. ``moving_mask`` (moving grid),
    when given, multiplies both intensities at the mapped points so only its inside is compared.
    ``history``: appended to (a cascade's stages share one). Torch's global RNG must be seeded by
    the caller (network initialisation).
    """
    optimiser = make_optimiser(model.parameter_groups(optimisation.lr), optimisation)
    schedule = make_schedule(optimiser, optimisation)
    sampler = PatchSampler(fixed, sampling_mask, optimisation.patch_size, device)
    mask_dev = DeviceImage(moving_mask.astype(np.float32), moving.affine, device) if moving_mask is not None else None
    a = torch.as_tensor(affine, dtype=torch.float32, device=device)
    history = {"similarity": [], "regulariser": [], "total": []} if history is None else history
    use_reg = loss.regulariser != "none" and loss.alpha > 0
    levels = optimisation.smoothing_mm
    for sigma, n_steps in zip(levels, level_iterations(optimisation.iterations, len(levels))):
        fixed_level = smooth(fixed, sigma)
        sampler.set_values(fixed_level.data, device)
        moving_dev = DeviceImage.from_image(smooth(moving, sigma), device)
        fixed_dev = DeviceImage.from_image(fixed_level, device) if model.uses_fixed_image else None
        step = _PatchStep(model, sampler, moving_dev, fixed_dev, mask_dev, a, optimisation, loss, use_reg, rng)
        optimise(step, optimiser, n_steps, history, schedule=schedule, progress=progress)
    return history


@dataclass
class _PatchStep:
    """The loss terms of one iteration on freshly sampled patches (``similarity``, ``regulariser``,
    the model's extra terms and ``total``)."""

    model: DeformationModel
    sampler: PatchSampler
    moving_dev: DeviceImage
    fixed_dev: DeviceImage | None
    mask_dev: DeviceImage | None
    a: torch.Tensor
    optimisation: OptimisationSettings
    loss: LossSettings
    use_reg: bool
    rng: np.random.Generator

    def __call__(self) -> dict[str, torch.Tensor]:
        model, loss, a = self.model, self.loss, self.a
        d = self.sampler.d
        points, fixed_values = self.sampler.sample(self.optimisation.patches, self.rng)
        reg_on_patches = self.use_reg and self.optimisation.regulariser_points == 0
        points.requires_grad_(reg_on_patches)
        u = model(points)
        mapped = (points + u) @ a[:d, :d].T + a[:d, d]
        warped = self.moving_dev.sample(mapped).reshape(fixed_values.shape)
        inside = None
        if self.mask_dev is not None:
            inside = self.mask_dev.sample(mapped).reshape(fixed_values.shape)
            warped, fixed_values = warped * inside, fixed_values * inside
        sim = similarity_loss(loss.similarity, fixed_values, warped, loss.lncc_window)
        reg_points = None
        if self.use_reg:
            if reg_on_patches:
                reg_points, reg_u = points, u
            else:
                reg_points = self.sampler.random_points(self.optimisation.regulariser_points, self.rng)
                reg_points.requires_grad_(True)
                reg_u = model(reg_points)
            reg = regulariser_loss(loss.regulariser, displacement_jacobian(reg_u, reg_points), reg_points)
            total = sim + loss.alpha * reg
        else:
            reg = torch.zeros(())
            total = sim
        if model.similarity_weight != 1.0:
            total = total + (model.similarity_weight - 1.0) * sim
        terms: dict[str, torch.Tensor] = {}
        for name, term in model.extra_losses(self._context(points, u, mapped, fixed_values, inside, reg_points)).items():
            total = total + term
            terms[name] = term
        return {"similarity": sim, "regulariser": reg, **terms, "total": total}

    def _context(self, points, u, mapped, fixed_values, inside, reg_points) -> LossContext:
        loss, use_reg = self.loss, self.use_reg

        def regularise(fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
            if not use_reg:
                return torch.zeros((), device=self.a.device)
            pts = reg_points.detach().requires_grad_(True)
            return regulariser_loss(loss.regulariser, displacement_jacobian(fn(pts), pts), pts)

        return LossContext(points, u, mapped, fixed_values, inside, self.a, self.moving_dev, self.fixed_dev,
                           self.mask_dev, lambda f, w: similarity_loss(loss.similarity, f, w, loss.lncc_window),
                           regularise, loss.alpha if use_reg else 0.0)
