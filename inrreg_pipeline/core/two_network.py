"""Untrained two-network registration: a motion network and an image network, fitted jointly per pair.

methods.md section 2. Both networks are randomly initialised for each pair and optimised together;
there is no training set. Inputs pass through a multi-resolution hash encoding
(:mod:`inrreg_pipeline.core.hash_encoding`) of world points normalised over the fixed image's world
bounding box (:class:`~inrreg_pipeline.core.encodings.NormalisedBox`), so any orientation and voxel
size, 2-D or 3-D, gives the same physical answer.

Direction convention
--------------------
The loss as written in methods.md, ``||g(x) - F(x)||^2 + ||g(x + m(x)) - M(x)||^2``, makes
``x -> x + m(x)`` map *moving* points to *fixed* points (``M(x) ~ F(x + m(x))``), the inverse of
inrreg's pull-back ``phi``. The method is symmetric in the two images, so we run it with their
roles swapped::

    L = mean_y || g_1(y) - M(y) ||^2  +  mean_x || g_2(x + m(x)) - F(x) ||^2

with ``y`` random voxel centres of the moving grid (moving world mm) and ``x`` random voxel centres of
the fixed grid (fixed world mm). At the optimum ``g_1 = M`` and ``M(x + m(x)) = F(x)``, so
``phi(x) = x + m(x)`` is inrreg's fixed -> moving point map and ``m`` is defined on the fixed image
(no numerical inversion of the motion). Single-modal: ``g_1 = g_2 = g`` (one output channel).
Multi-modal (``multimodal``): ``g`` has two output channels, channel 1 (index 0) for the moving
image's modality (first term), channel 2 (index 1) for the fixed image's (second term).

Networks
--------
Both networks map a world point to ``[0, 1]^d`` over the encoding domain (the fixed image's
normalised box enlarged by ``domain_margin``), encode it with a hash grid and feed a ReLU MLP:

* image network ``g``: ``image_hash`` levels, plus the normalised coordinate itself when
  ``include_input``; ``hidden_layers`` x ``hidden_features``; 1 or 2 linear output channels, or, for
  multi-modal pairs with ``shared_latent = k > 0``, ``k`` shared latent values followed by one small
  ReLU MLP per channel (``k -> latent_head_features -> 1``). With free linear channels a
  two-channel ``g`` can store both images without aligning them (on OASIS slices with a T2-like
  remap it moved away from a 0.2 degree motion); with the shared latent both images must be
  intensity functions of one field, which they only are once aligned.
* motion network ``m``: ``motion_hash`` levels (plus the normalised coordinate when
  ``motion_include_input``); ``motion_hidden_layers`` x ``motion_hidden_features``; ``d`` outputs,
  plus a linear term ``W x_norm`` when ``motion_linear``; output layer and ``W`` start at zero, so
  ``m = 0`` at the start; outputs are in units of the box's half-side (``NormalisedBox.scale``, mm).

Motion models (``TwoNetworkSettings.motion``)
--------------------------------------------
* ``rigid``: the motion network uses only the coarsest level of its hash grid (finest = coarsest), so
  ``m`` varies slowly (near-global motion). ``rigid_matrix_ras`` (summary) is the least-squares rigid
  fit (Kabsch) of ``x -> x + m(x)`` over the sampling mask; it is returned as ``affine`` and the
  displacement is the residual ``u(x) = A^-1 (x + m(x)) - x`` so that ``A(x + u(x)) = x + m(x)``.
* ``deformable``: all levels of the motion hash grid; ``affine`` is the identity and ``u = m``
  (``rigid_matrix_ras`` is still reported).
* ``affine-param``: no motion network; an explicit affine ``A(x) = R(r)(I + L)(x - c) + c + s t``
  (rotation, scales/shears, translation; rotation + translation only with ``affine_param_rigid``),
  returned as ``affine`` with ``u`` (numerically) 0. For comparison with the network motions.
With ``register(..., use_affine=False)`` the affine is always the identity and ``u = m``.

Optimisation
------------
Adam (betas 0.9/0.99, eps 1e-15, as instant-NGP), ``lr`` for the image network and ``motion_lr`` for
the motion model, ramped linearly from 0 over the first ``motion_warmup * iterations`` iterations
(the image network first fits blurred versions of the images, so the first motion gradients are
not random). Each iteration draws ``points`` voxels of each image (with replacement; inside the
masks when given). No regulariser. With ``centre_of_mass_init`` the motion starts as the constant
translation between the centres of the two foreground masks (moving minus fixed; a buffer added to
``m``, or the explicit affine's translation), independent of the contrast.

Coarse-to-fine
--------------
With ``coarse_to_fine``, at iteration ``i`` (0-based) of ``I`` every hash level ``l = 0..L-1`` of
*both* networks is multiplied by ``w_l(alpha) = (1 - cos(pi * clamp(alpha * L - l, 0, 1))) / 2``,
``alpha = i / (coarse_to_fine_target * I)`` (``L`` is each network's own number of levels in use;
the linear term and the raw coordinate input are not weighted). So both networks start as MLPs of
the (normalised) coordinate alone, which fit only smooth functions: the image network cannot store
the two images separately and the motion network has to align them; finer levels fade in one after
the other and all are fully on from ``alpha = 1``. Without it (all ``w_l = 1`` throughout) a
multi-modal image network stores both images as they are and the motion does not align them.
"""
from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from .affine import AffineModel
from .choices import MOTIONS
from .config import HashSettings, RegistrationSettings, TwoNetworkSettings
from .encodings import NormalisedBox
from .engine import Progress, optimise, tail_mean
from .fields import evaluate_displacement, invert_displacement
from .hash_grid_inr import EncodingDomain, HashMLP
from .method import Fields, Fit
from .pair import PreparedPair
from .space import SpatialImage, apply_affine, foreground_mask, voxel_grid_to_world, world_bounding_box



class ImageNetwork(HashMLP):
    """``g(y)``: intensities (``channels`` of them) at world points (mm).

    ``shared_latent = k > 0`` (multi-modal): the MLP ends in ``k`` latent values ``s(y)`` shared by
    the channels, and channel ``c`` is ``h_c(s(y))``, a small ReLU MLP of the latent alone
    (``k -> latent_head_features -> 1``): both images must be (possibly non-monotonic) intensity
    functions of one anatomical field, so they can only be stored cheaply once aligned.
    ``shared_latent = 0``: one linear output layer with a row per channel (the method as published).
    """

    def __init__(self, *args, shared_latent: int = 0, latent_head_features: int = 16, **kwargs):
        super().__init__(*args, **kwargs)
        self.heads = None
        if shared_latent > 0:
            channels = self.out.out_features
            self.out = nn.Linear(self.out.in_features, shared_latent)
            self.heads = nn.ModuleList([nn.Sequential(nn.Linear(shared_latent, latent_head_features), nn.ReLU(),
                                                      nn.Linear(latent_head_features, 1))
                                        for _ in range(channels)])

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        out = super().forward(points_mm)
        if self.heads is None:
            return out
        return torch.cat([head(out) for head in self.heads], -1)


class MotionNetwork(HashMLP):
    """``m(x)``: displacement (mm) at fixed world points (mm); output layer zero so ``m`` starts at
    the constant ``offset`` (mm, a buffer: 0, or the centre-of-mass translation)."""

    def __init__(self, *args, linear: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        d = self.out.out_features
        self.register_buffer("offset", torch.zeros(d))
        self.linear = nn.Linear(d, d, bias=False) if linear else None
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.zero_()
            if self.linear is not None:
                self.linear.weight.zero_()

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        out = super().forward(points_mm)
        if self.linear is not None:
            out = out + self.linear(self.domain.normalised(points_mm))
        return out * self.domain.box.scale + self.offset

    def set_offset(self, translation_mm: np.ndarray) -> None:
        with torch.no_grad():
            self.offset.copy_(torch.as_tensor(translation_mm, dtype=torch.float32))


class AffineMotion(nn.Module):
    """Explicit parameterisation ``m(x) = A(x) - x`` with ``A`` an :class:`AffineModel` (identity at start)."""

    def __init__(self, ndim: int, centre: np.ndarray, scale: float, rigid: bool):
        super().__init__()
        self.affine = AffineModel(ndim, centre, scale, np.zeros(ndim))
        self.rigid = rigid
        if rigid:
            self.affine.linear.requires_grad_(False)

    def set_alpha(self, alpha: float | None) -> None:  # no levels to re-weight
        pass

    def set_offset(self, translation_mm: np.ndarray) -> None:
        with torch.no_grad():
            self.affine.translation.copy_(torch.as_tensor(translation_mm / self.affine.scale, dtype=torch.float32))

    def matrix(self) -> np.ndarray:
        return self.affine.matrix().detach().cpu().double().numpy()

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return self.affine(points_mm) - points_mm


class DisplacementModel(nn.Module):
    """inrreg's ``u`` at world points: ``u(x) = A^-1 (x + m(x)) - x`` so that ``phi(x) = A(x + u(x)) =
    x + m(x)`` (``A`` the returned affine; ``u = m`` when ``A`` is the identity). Holds the two networks."""

    def __init__(self, motion: nn.Module, image: ImageNetwork, affine: np.ndarray):
        super().__init__()
        self.motion = motion
        self.image = image
        d = affine.shape[0] - 1
        inv = np.linalg.inv(affine)
        self.identity = bool(np.allclose(affine, np.eye(d + 1)))
        self.register_buffer("inv_linear", torch.as_tensor(inv[:d, :d].T.copy(), dtype=torch.float32))
        self.register_buffer("inv_offset", torch.as_tensor(inv[:d, d].copy(), dtype=torch.float32))

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        moved = points_mm + self.motion(points_mm)
        if self.identity:
            return moved - points_mm
        return moved @ self.inv_linear + self.inv_offset - points_mm


def kabsch(points: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Least-squares rigid map (rotation, det +1, and translation) taking ``points`` ``(N, d)`` to
    ``targets`` ``(N, d)``, as a ``(d+1, d+1)`` homogeneous matrix."""
    d = points.shape[1]
    p_mean, t_mean = points.mean(0), targets.mean(0)
    h = (points - p_mean).T @ (targets - t_mean)
    u, _, vt = np.linalg.svd(h)
    sign = np.ones(d)
    sign[-1] = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rot = vt.T @ np.diag(sign) @ u.T
    out = np.eye(d + 1)
    out[:d, :d] = rot
    out[:d, d] = t_mean - rot @ p_mean
    return out


class VoxelSampler:
    """Random voxel centres of an image (among ``candidates``), as world points and intensities."""

    def __init__(self, image: SpatialImage, candidates: np.ndarray, device: torch.device):
        if not candidates.any():
            raise ValueError("no voxel to sample (empty mask, or the image lies outside the encoding domain)")
        idx = np.argwhere(candidates)
        self.points = torch.as_tensor(apply_affine(image.affine, idx.astype(np.float64)), dtype=torch.float32,
                                      device=device)
        self.values = torch.as_tensor(image.data[tuple(idx.T)], dtype=torch.float32, device=device)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        pick = torch.as_tensor(rng.integers(0, len(self.values), size=n), device=self.values.device)
        return self.points[pick], self.values[pick]


def foreground_centre_of_mass(image: SpatialImage, candidates: np.ndarray) -> np.ndarray:
    """Centre (world mm) of the foreground voxels (:func:`~inrreg_pipeline.core.space.foreground_mask`
    of the [0, 1] intensities, within ``candidates``), unweighted: the same for any contrast of
    the same anatomy. All candidates when the foreground is empty."""
    mask = foreground_mask(image.data) & candidates
    if not mask.any():
        mask = candidates
    return apply_affine(image.affine, np.argwhere(mask).astype(np.float64)).mean(0)


def build_networks(fixed: SpatialImage, settings: TwoNetworkSettings, device: torch.device
                   ) -> tuple[nn.Module, ImageNetwork, EncodingDomain]:
    """Fresh motion model and image network over the fixed image's world bounding box.

    Torch's global RNG must be seeded by the caller (initialisation)."""
    if settings.motion not in MOTIONS:
        raise ValueError(f"unknown two_network.motion '{settings.motion}' (choose from {', '.join(MOTIONS)})")
    if settings.shared_latent < 0 or settings.latent_head_features < 1:
        raise ValueError("two_network.shared_latent must be >= 0 and two_network.latent_head_features >= 1")
    d = fixed.ndim
    lower, upper = world_bounding_box(fixed.shape, fixed.affine)
    domain = EncodingDomain(NormalisedBox(lower, upper), settings.domain_margin)
    channels = 2 if settings.multimodal else 1
    image = ImageNetwork(domain, d, settings.image_hash, settings.image_hash.levels, settings.hidden_features,
                         settings.hidden_layers, channels, settings.include_input, settings.backend, device,
                         shared_latent=settings.shared_latent if settings.multimodal else 0,
                         latent_head_features=settings.latent_head_features)
    if settings.motion == "affine-param":
        centre = (np.asarray(lower) + np.asarray(upper)) / 2.0
        motion: nn.Module = AffineMotion(d, centre, domain.box.scale, settings.affine_param_rigid)
    else:
        levels = 1 if settings.motion == "rigid" else settings.motion_hash.levels
        motion = MotionNetwork(domain, d, settings.motion_hash, levels, settings.motion_hidden_features,
                               settings.motion_hidden_layers, d, settings.motion_include_input, settings.backend,
                               device, linear=settings.motion_linear)
    return motion.to(device), image.to(device), domain


def fit_two_networks(fixed: SpatialImage, moving: SpatialImage, settings: TwoNetworkSettings,
                     device: torch.device, rng: np.random.Generator, fixed_candidates: np.ndarray | None = None,
                     moving_candidates: np.ndarray | None = None,
                     progress: Progress | None = None
                     ) -> tuple[nn.Module, ImageNetwork, dict[str, list[float]]]:
    """Optimise a new motion model and image network on the pair (intensities already in [0, 1]).

    Returns ``(motion, image, history)``; ``motion(x)`` is ``m`` (mm) at fixed world points with
    ``M(x + m(x)) ~ F(x)``. ``fixed_candidates`` / ``moving_candidates``: boolean masks of the voxels
    that may be drawn (default: all; moving voxels outside the encoding domain are never drawn).
    ``history``: per-iteration ``moving_term`` (first term), ``fixed_term`` (second term), ``total``.
    """
    motion, image, domain = build_networks(fixed, settings, device)
    if fixed_candidates is None:
        fixed_candidates = np.ones(fixed.shape, bool)
    if moving_candidates is None:
        moving_candidates = np.ones(moving.shape, bool)
    moving_candidates = moving_candidates & domain.contains(moving.world_grid())
    if settings.centre_of_mass_init:
        motion.set_offset(foreground_centre_of_mass(moving, moving_candidates)
                          - foreground_centre_of_mass(fixed, fixed_candidates))
    fixed_sampler = VoxelSampler(fixed, fixed_candidates, device)
    moving_sampler = VoxelSampler(moving, moving_candidates, device)
    groups = [{"params": list(image.parameters()), "lr": settings.lr}]
    motion_params = [p for p in motion.parameters() if p.requires_grad]
    if motion_params:
        groups.append({"params": motion_params, "lr": settings.motion_lr})
    optimiser = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
    fixed_channel = 1 if settings.multimodal else 0
    target = settings.coarse_to_fine_target * settings.iterations
    history: dict[str, list[float]] = {"moving_term": [], "fixed_term": [], "total": []}
    n = settings.points

    def before_step(it: int) -> None:
        alpha = it / target if settings.coarse_to_fine else None
        image.set_alpha(alpha)
        motion.set_alpha(alpha)
        if len(optimiser.param_groups) > 1:
            ramp = settings.motion_warmup * settings.iterations
            optimiser.param_groups[1]["lr"] = settings.motion_lr * (min(1.0, it / ramp) if ramp > 0 else 1.0)

    def step() -> dict[str, torch.Tensor]:
        y, m_values = moving_sampler.sample(n, rng)
        x, f_values = fixed_sampler.sample(n, rng)
        mapped = x + motion(x)
        out = image(torch.cat([y, mapped], 0))
        moving_term = ((out[:n, 0] - m_values) ** 2).mean()
        fixed_term = ((out[n:, fixed_channel] - f_values) ** 2).mean()
        return {"moving_term": moving_term, "fixed_term": fixed_term, "total": moving_term + fixed_term}

    optimise(step, optimiser, settings.iterations, history, before_step=before_step, progress=progress)
    image.set_alpha(None)
    motion.set_alpha(None)
    return motion, image, history


class TwoNetwork:
    """:class:`~.method.RegistrationMethod` of ``two-network`` (``settings.two_network``).

    No affine stage runs before it: its global part comes from the fitted motion (``rigid``: the
    Kabsch fit of ``x -> x + m(x)`` over the mask; ``affine-param``: the explicit affine; ``deformable``:
    the identity, the whole motion being the field). ``result.model`` is a :class:`DisplacementModel`
    giving ``u`` at any world point, with the motion and image networks as ``.motion`` and ``.image``.

    ``registration.json`` has the core's keys (``loss.similarity_final`` is the two-term L2 loss
    averaged over the last 20 iterations; ``loss.affine_final`` and ``loss.regulariser_final`` are
    ``None``: there is no affine stage and no regulariser; ``runtime_s.affine`` is the Kabsch fit,
    ``runtime_s.deformable`` the joint fit) plus ``method`` (``"two-network"``), ``rigid_matrix_ras``
    (Kabsch fit of ``x -> x + m(x)`` over the mask, fixed -> moving, RAS), ``loss.moving_term_final`` /
    ``loss.fixed_term_final`` (the two terms) and ``two_network`` (motion model, levels in use, hash
    backend, mean and max ``|m|`` in mm over the mask).
    """

    stage = "two-network"
    uses_affine_stage = False

    def iterations(self, settings: RegistrationSettings) -> int:
        return settings.two_network.iterations

    def fit(self, pair: PreparedPair, affine: np.ndarray, settings: RegistrationSettings, use_affine: bool,
            progress: Progress | None) -> Fit:
        t_set = settings.two_network
        motion, image, history = fit_two_networks(
            pair.fixed_norm, pair.moving_norm, t_set, pair.device, pair.rng,
            fixed_candidates=pair.fixed_mask > 0 if pair.fixed_mask is not None else None,
            moving_candidates=pair.moving_mask > 0 if pair.moving_mask is not None else None, progress=progress)
        motion.eval()
        image.eval()
        # the global part: Kabsch fit of x -> x + m(x) over the mask (or the explicit affine)
        t0 = time.perf_counter()
        fixed, d = pair.fixed, pair.ndim
        m_field = evaluate_displacement(motion, fixed.shape, fixed.affine, pair.device).astype(np.float64)
        grid = voxel_grid_to_world(fixed.shape, fixed.affine)
        inside = pair.sampling_mask > 0
        rigid = kabsch(grid[inside], grid[inside] + m_field[inside])
        if use_affine and t_set.motion == "rigid":
            global_part = rigid
        elif use_affine and t_set.motion == "affine-param":
            global_part = motion.matrix()
        else:
            global_part = np.eye(d + 1)
        model = DisplacementModel(motion, image, global_part).to(pair.device).eval()
        m_norm_mm = np.linalg.norm(m_field, axis=-1)[inside]
        learned = {
            "method": "two-network",
            "rigid_matrix_ras": rigid.tolist(),
            "two_network": {
                "motion": t_set.motion,
                "multimodal": t_set.multimodal,
                "coarse_to_fine": t_set.coarse_to_fine,
                "centre_of_mass_init": t_set.centre_of_mass_init,
                "shared_latent": t_set.shared_latent if t_set.multimodal else 0,
                "hash_backend": image.encoding.backend,
                "image_levels": image.n_levels,
                "motion_levels": motion.n_levels if isinstance(motion, HashMLP) else 0,
                "motion_mean_mm": float(m_norm_mm.mean()) if m_norm_mm.size else 0.0,
                "motion_max_mm": float(m_norm_mm.max()) if m_norm_mm.size else 0.0,
            },
        }
        return Fit(model, history, affine=global_part, affine_seconds=time.perf_counter() - t0, summary=learned)

    def fields(self, fit: Fit, pair: PreparedPair, affine: np.ndarray, settings: RegistrationSettings) -> Fields:
        fixed = pair.fixed
        u = evaluate_displacement(fit.model, fixed.shape, fixed.affine, pair.device)
        v = invert_displacement(u, fixed.affine, pair.device, settings.inverse_iterations)
        return Fields(u, v, summary=fit.summary)

    def loss_summary(self, history: dict[str, list[float]]) -> dict:
        return {"similarity_final": tail_mean(history["total"]), "regulariser_final": None,
                "moving_term_final": tail_mean(history["moving_term"]),
                "fixed_term_final": tail_mean(history["fixed_term"])}


METHOD = TwoNetwork()
