"""Variants of the deformation INR (methods.md section 1, "Extensions" and "omega variants").

Every variant is a *deformation model*: an ``nn.Module`` mapping fixed-space world points
``(N, d)`` (RAS mm) to displacements ``u`` (mm), with ``phi(x) = A(x + u(x))`` and ``A`` the affine
stage's fixed -> moving map, trained by the one training loop
:func:`~inrreg_pipeline.core.optimisation.fit_deformation`. Every model is a
:class:`~inrreg_pipeline.core.optimisation.DeformationModel`: it may add loss terms
(``extra_losses``), weight the loop's similarity (``similarity_weight``) and give optimiser
groups (``parameter_groups``; frozen parameters left out, omega-control parameters at their own
step ``omega_lr``).

=================  ========================================================================
``method``         model
=================  ========================================================================
``siren``          one network (:class:`SingleDeformation`)
``joint-affine``   network + 12 (2-D: 6) affine parameters, identity start (:class:`JointAffineDeformation`)
``ensemble``       mean of N networks of different omegas, trained jointly (:class:`EnsembleDeformation`)
``cascade``        K networks trained one after the other, ``u_C = u_1 + ... + u_K``, earlier
                   stages frozen, one regulariser weight per stage (:class:`CascadeDeformation`)
``cycle``          forward and backward networks with the cycle loss (:class:`CycleDeformation`)
``fusion``         network + a weight network fusing M with its Laplacian- and Gaussian-filtered
                   versions (:class:`FusionDeformation`)
=================  ========================================================================

``variants.omega_mode`` (trainable, width, attention omega) applies to the networks of every
method except the ensemble, whose members have the fixed omegas ``ensemble_omegas``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from .choices import VARIANT_METHODS
from .config import RegistrationSettings
from .encodings import NormalisedBox
from .engine import Progress
from .fields import evaluate_displacement
from .networks import DeformationINR
from .optimisation import DeformationModel, LossContext, build_network, fit_deformation
from .space import (DeviceImage, SpatialImage, downsample, rescale_intensity, shrink_factor, voxel_grid_to_world,
                    world_bounding_box)


def uses_variants(settings: RegistrationSettings) -> bool:
    """Whether ``settings`` asks for a variant (a variant method or a non-fixed omega)."""
    return settings.method in VARIANT_METHODS or settings.variants.omega_mode != "fixed"


def deformable_iterations(settings: RegistrationSettings) -> int:
    """Optimiser steps of the deformable stage (all cascade stages together)."""
    if settings.method == "cascade":
        return sum(_cascade_iterations(settings))
    return settings.optimisation.iterations


def _cascade_iterations(settings: RegistrationSettings) -> list[int]:
    v = settings.variants
    return list(v.cascade_iterations) or [settings.optimisation.iterations] * len(v.cascade_alphas)


class VariantModel(DeformationModel):
    """Base of the variant models: optimiser groups with the omega-control parameters apart."""

    def __init__(self, omega_lr: float):
        super().__init__()
        self.omega_lr = float(omega_lr)

    def parameter_groups(self, lr: float) -> list[dict]:
        """Trainable parameters: omega control (trainable omega, attention ``a``, ``b``) at
        ``omega_lr``, the rest at ``lr``."""
        omega_ids = {id(p) for m in self.modules() if isinstance(m, DeformationINR) for p in m.omega_parameters()}
        trainable = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in trainable if id(p) not in omega_ids], "lr": lr}]
        omega = [p for p in trainable if id(p) in omega_ids]
        if omega:
            groups.append({"params": omega, "lr": self.omega_lr})
        return groups

    def summary(self) -> dict:
        """What the variant learned, for ``registration.json`` (learned omegas, ...)."""
        out: dict = {}
        controlled = [m for m in self.modules() if isinstance(m, DeformationINR) and m.frequencies is not None]
        omegas = [[float(f.omega.detach()) for f in m.frequencies] for m in controlled
                  if m.frequencies[0].mode == "trainable"]
        if omegas:
            out["learned_omega_per_layer"] = omegas
        attention = [[[float(f.a.detach()), float(f.b.detach())] for f in m.frequencies] for m in controlled
                     if m.frequencies[0].mode == "attention"]
        if attention:
            out["attention_a_b_per_layer"] = attention
        return out


class SingleDeformation(VariantModel):
    """One network (the plain SIREN family) with omega control: ``u(x) = f(x)``."""

    def __init__(self, network: DeformationINR, omega_lr: float):
        super().__init__(omega_lr)
        self.network = network

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return self.network(points_mm)


class JointAffineDeformation(VariantModel):
    """Network + an affine trained with it, on top of the affine stage:
    ``u(x) = f(x) + L (x - c) + s t``, so ``phi(x) = A((I + L)(x - c) + c + s t + f(x))``.

    ``L`` (``d x d``, dimensionless) and ``t`` (``d``, in units of the network box's half-extent
    ``s`` mm, centred at the box centre ``c``) are the 12 (2-D: 6) affine parameters, 0 at the
    start (identity). The written displacement field therefore includes this affine part.
    """

    def __init__(self, network: DeformationINR, omega_lr: float):
        super().__init__(omega_lr)
        d = network.ndim
        self.network = network
        self.linear = nn.Parameter(torch.zeros(d, d))
        self.translation = nn.Parameter(torch.zeros(d))

    def affine_displacement(self, points_mm: torch.Tensor) -> torch.Tensor:
        box = self.network.box
        return box.scale * (box(points_mm) @ self.linear.T + self.translation)

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return self.network(points_mm) + self.affine_displacement(points_mm)

    def matrix(self) -> np.ndarray:
        """The learned affine ``x -> x + L (x - c) + s t`` as a ``(d+1, d+1)`` RAS mm matrix."""
        d = self.network.ndim
        lin = self.linear.detach().cpu().double().numpy()
        c = self.network.box.centre.cpu().double().numpy()
        m = np.eye(d + 1)
        m[:d, :d] += lin
        m[:d, d] = -lin @ c + self.network.box.scale * self.translation.detach().cpu().double().numpy()
        return m

    def summary(self) -> dict:
        return {**super().summary(), "joint_affine_ras": self.matrix().tolist()}


class EnsembleDeformation(VariantModel):
    """``u(x) = (1/N) sum_k f_k(x)``: N networks (different omegas) trained jointly."""

    def __init__(self, members: list[DeformationINR], omega_lr: float):
        super().__init__(omega_lr)
        self.members = nn.ModuleList(members)

    def member_displacements(self, points_mm: torch.Tensor) -> torch.Tensor:
        """``(N_members, N, d)`` displacements (mm) of each member."""
        return torch.stack([m(points_mm) for m in self.members])

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return self.member_displacements(points_mm).mean(0)

    def summary(self) -> dict:
        return {**super().summary(), "ensemble_omegas": [m.activation.omega for m in self.members]}


class CascadeDeformation(VariantModel):
    """``u_C(x) = u_1(x) + ... + u_K(x)`` (methods.md: ``phi_C = phi + u'``): each stage refines the
    sum of the earlier ones, which are frozen while it trains. Stages after the first start with a
    zero last layer, so a stage starts exactly from the previous stages' field."""

    def __init__(self, stages: list[DeformationINR], omega_lr: float):
        super().__init__(omega_lr)
        self.stages = nn.ModuleList(stages)

    def forward(self, points_mm: torch.Tensor, n_stages: int | None = None) -> torch.Tensor:
        """Displacement (mm) of the first ``n_stages`` stages (all by default)."""
        stages = list(self.stages)[: n_stages if n_stages is not None else len(self.stages)]
        u = stages[0](points_mm)
        for stage in stages[1:]:
            u = u + stage(points_mm)
        return u


class CycleDeformation(VariantModel):
    """Forward network ``u`` (fixed -> moving, the model's output) and backward network ``v``
    (moving -> fixed) trained together, both in the affine-aligned fixed space ``z = A^-1 y``.

    Extra terms: the backward registration ``L_sim(M o A, F o (x + v)) + alpha L_reg(v)`` on the
    same patch points, and ``cycle_alpha * L_cyc`` with
    ``L_MF = |v(x + u(x)) + u(x)|^2``, ``L_FM = |u(x + v(x)) + v(x)|^2``, ``L_cyc = mean(L_MF + L_FM) / 2``,
    the residuals in units of the box half-extent ``s`` (mm), see
    :class:`~inrreg_pipeline.core.config.VariantSettings`. ``v`` on the fixed grid is the inverse
    field written to ``1InverseWarp`` (``phi^-1(y) = z + v(z)``).
    """

    uses_fixed_image = True

    def __init__(self, forward_net: DeformationINR, backward_net: DeformationINR, cycle_alpha: float,
                 omega_lr: float):
        super().__init__(omega_lr)
        self.forward_net = forward_net
        self.backward_net = backward_net
        self.cycle_alpha = float(cycle_alpha)

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return self.forward_net(points_mm)

    def backward_displacement(self, points_mm: torch.Tensor) -> torch.Tensor:
        """``v`` (mm) at affine-aligned fixed-space points (mm)."""
        return self.backward_net(points_mm)

    def cycle_residuals(self, x: torch.Tensor, u: torch.Tensor, v: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v(x + u) + u, u(x + v) + v)``, mm, each ``(N, d)``."""
        return self.backward_net(x + u) + u, self.forward_net(x + v) + v

    def extra_losses(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        d = ctx.points.shape[-1]
        x = ctx.points
        v = self.backward_net(x)
        a = ctx.affine
        reference = ctx.moving.sample(x @ a[:d, :d].T + a[:d, d]).reshape(ctx.fixed_values.shape)
        warped_fixed = ctx.fixed.sample(x + v).reshape(ctx.fixed_values.shape)
        if ctx.moving_mask is not None:
            inside = ctx.moving_mask.sample(x @ a[:d, :d].T + a[:d, d]).reshape(ctx.fixed_values.shape)
            reference, warped_fixed = reference * inside, warped_fixed * inside
        r_mf, r_fm = self.cycle_residuals(x, ctx.u, v)
        scale = self.forward_net.box.scale
        cycle = ((r_mf ** 2).sum(-1).mean() + (r_fm ** 2).sum(-1).mean()) / (2.0 * scale ** 2)
        return {"similarity_backward": ctx.similarity(reference, warped_fixed),
                "regulariser_backward": ctx.alpha * ctx.regulariser(self.backward_net),
                "cycle": self.cycle_alpha * cycle}


class WeightINR(DeformationINR):
    """A coordinate network for ``k`` softmax logits (not a displacement: no mm scaling)."""

    def __init__(self, box: NormalisedBox, ndim: int, k: int, **kwargs):
        super().__init__(box, ndim, **kwargs)
        self.out = nn.Linear(self.out.in_features, k)
        with torch.no_grad():
            self.out.weight.uniform_(-1e-4, 1e-4)
            self.out.bias.zero_()

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(points_mm))


def filtered_moving(moving: SpatialImage, sigma_mm: float) -> np.ndarray:
    """``(*shape, 3)``: the moving image ``M``, its Laplacian ``M_L`` (negated Laplacian of Gaussian,
    so bright thin structures are bright) and Gaussian ``M_G`` versions (sigma in mm, per axis
    converted to voxels), each rescaled to [0, 1] like ``M``."""
    sigma = sigma_mm / np.asarray(moving.spacing)
    data = np.asarray(moving.data, np.float32)
    lap = rescale_intensity(-ndimage.gaussian_laplace(data, sigma))
    gauss = rescale_intensity(ndimage.gaussian_filter(data, sigma))
    return np.stack([data, lap, gauss], -1).astype(np.float32)


class FusionDeformation(VariantModel):
    """Registration-guided fusion (methods.md): ``M'(y) = s_M(y) M(y) + s_L(y) M_L(y) + s_G(y) M_G(y)``
    with ``s`` the softmax of a weight network over the moving image's world box (``y`` moving
    world mm, sums to 1 per point), and ``L = (L_sim(F, M o phi) + L_sim(F, M' o phi)) / 2 + alpha L_reg``.
    """

    similarity_weight = 0.5

    def __init__(self, network: DeformationINR, weight_net: WeightINR, filtered: DeviceImage, omega_lr: float):
        super().__init__(omega_lr)
        self.network = network
        self.weight_net = weight_net
        self.filtered = filtered

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return self.network(points_mm)

    def weights(self, moving_points_mm: torch.Tensor) -> torch.Tensor:
        """``(N, 3)`` fusion weights ``(s_M, s_L, s_G)`` at moving-space world points (mm)."""
        return torch.softmax(self.weight_net(moving_points_mm), -1)

    def extra_losses(self, ctx: LossContext) -> dict[str, torch.Tensor]:
        fused = (self.weights(ctx.mapped) * self.filtered.sample(ctx.mapped)).sum(-1).reshape(ctx.fixed_values.shape)
        if ctx.inside is not None:
            fused = fused * ctx.inside
        return {"similarity_fused": 0.5 * ctx.similarity(ctx.fixed_values, fused)}


def build_model(fixed: SpatialImage, moving: SpatialImage, settings: RegistrationSettings, device: torch.device
                ) -> VariantModel:
    """A fresh model for ``settings.method`` (not ``cascade``, built stage by stage in :func:`fit_variant`)."""
    n, v = settings.network, settings.variants
    if settings.method == "ensemble":
        return EnsembleDeformation([build_network(fixed, n, v, omega=w, omega_mode="fixed")
                                    for w in v.ensemble_omegas], v.omega_lr).to(device)
    network = build_network(fixed, n, v)
    if settings.method == "joint-affine":
        return JointAffineDeformation(network, v.omega_lr).to(device)
    if settings.method == "cycle":
        return CycleDeformation(network, build_network(fixed, n, v), v.cycle_alpha, v.omega_lr).to(device)
    if settings.method == "fusion":
        lower, upper = world_bounding_box(moving.shape, moving.affine)
        weight_net = WeightINR(NormalisedBox(lower, upper), moving.ndim, 3, hidden_layers=n.hidden_layers,
                               hidden_features=n.hidden_features, activation="sine", omega=30.0,
                               skip_connection=n.skip_connection)
        filtered = DeviceImage(filtered_moving(moving, v.fusion_sigma_mm), moving.affine, device, vector=True)
        return FusionDeformation(network, weight_net, filtered, v.omega_lr).to(device)
    return SingleDeformation(network, v.omega_lr).to(device)


def shrink_to(spacing_mm: float, fixed: SpatialImage, moving: SpatialImage, sampling_mask: np.ndarray,
              moving_mask: np.ndarray | None) -> tuple[SpatialImage, SpatialImage, np.ndarray, np.ndarray | None]:
    """The pair and its masks shrunk to about ``spacing_mm`` voxels (``optimisation.image_spacing_mm``;
    each image by its own :func:`~.space.shrink_factor`, masks kept where more than half the shrunk
    voxel was inside); unchanged when ``spacing_mm`` is 0 or the images are already that coarse."""
    if spacing_mm <= 0:
        return fixed, moving, sampling_mask, moving_mask
    f, m = shrink_factor(fixed, spacing_mm), shrink_factor(moving, spacing_mm)

    def mask_at(image: SpatialImage, mask: np.ndarray, factor: int) -> np.ndarray:
        return mask if factor == 1 else downsample(image.with_data(mask.astype(np.float32)), factor).data > 0.5

    shrunk_mask = mask_at(fixed, sampling_mask, f)
    if not shrunk_mask.any():  # a mask thinner than the shrunk voxels: keep every voxel it touches
        shrunk_mask = downsample(fixed.with_data(sampling_mask.astype(np.float32)), f).data > 0
    return (downsample(fixed, f), downsample(moving, m), shrunk_mask,
            None if moving_mask is None else mask_at(moving, moving_mask, m))


def fit_variant(fixed: SpatialImage, moving: SpatialImage, affine: np.ndarray, settings: RegistrationSettings,
                device: torch.device, rng: np.random.Generator, sampling_mask: np.ndarray,
                moving_mask: np.ndarray | None = None, progress: Progress | None = None
                ) -> tuple[VariantModel, dict[str, list[float]]]:
    """Build ``settings.method``'s model and train it with :func:`fit_deformation` (intensities already
    rescaled; the plain ``siren`` too); cascades train stage by stage. Returns the model and the loss
    history (cascades: the stages' histories one after the other, plus ``stage_start_gap_mm``, the
    largest ``|u_C - u_previous|`` (mm) at 4096 mask points when each stage starts)."""
    fixed, moving, sampling_mask, moving_mask = shrink_to(settings.optimisation.image_spacing_mm, fixed, moving,
                                                          sampling_mask, moving_mask)
    fit = dict(optimisation=settings.optimisation, loss=settings.loss, device=device, rng=rng,
               sampling_mask=sampling_mask, moving_mask=moving_mask, progress=progress)
    if settings.method != "cascade":
        model = build_model(fixed, moving, settings, device)
        return model, fit_deformation(fixed, moving, affine, model, **fit)
    v = settings.variants
    history: dict[str, list[float]] = {"stage_start_gap_mm": []}
    probe = voxel_grid_to_world(fixed.shape, fixed.affine)[sampling_mask > 0]
    probe = torch.as_tensor(probe[np.linspace(0, len(probe) - 1, min(4096, len(probe))).astype(int)],
                            dtype=torch.float32, device=device)
    stages: list[DeformationINR] = []
    model: CascadeDeformation | None = None
    for k, (alpha, iterations) in enumerate(zip(v.cascade_alphas, _cascade_iterations(settings))):
        for stage in stages:
            stage.requires_grad_(False)
        previous = model
        stages.append(build_network(fixed, settings.network, v, zero_last=k > 0).to(device))
        model = CascadeDeformation(list(stages), v.omega_lr).to(device)
        if previous is not None:
            with torch.no_grad():
                gap = float((model(probe) - previous(probe)).abs().max())
            history["stage_start_gap_mm"].append(gap)
        stage_history = fit_deformation(
            fixed, moving, affine, model, **{**fit, "optimisation": dataclasses.replace(settings.optimisation,
                                                                                        iterations=iterations),
                                             "loss": dataclasses.replace(settings.loss, alpha=alpha)})
        for key, values in stage_history.items():
            history.setdefault(key, []).extend(values)
    assert model is not None
    return model, history


def variant_outputs(model: nn.Module, fixed: SpatialImage, moving: SpatialImage, device: torch.device,
                    chunk: int = 65536) -> tuple[np.ndarray | None, dict[str, np.ndarray], dict]:
    """Dense outputs particular to a variant: ``(inverse, extras, summary)``.

    ``inverse``: the cycle model's backward field ``v`` on the fixed grid (mm, ``(*shape, d)``), or
    None (use the numerical inverse). ``extras``: ``fusion_weights``, ``(*moving.shape, 3)``
    weights ``(s_M, s_L, s_G)`` on the moving grid. ``summary``: what the model learned.
    """
    summary = model.summary() if isinstance(model, VariantModel) else {}
    inverse, extras = None, {}
    if isinstance(model, CycleDeformation):
        inverse = evaluate_displacement(model.backward_net, fixed.shape, fixed.affine, device, chunk)
    if isinstance(model, FusionDeformation):
        points = voxel_grid_to_world(moving.shape, moving.affine).reshape(-1, moving.ndim)
        with torch.no_grad():
            weights = [model.weights(torch.as_tensor(points[s:s + chunk], dtype=torch.float32, device=device)).cpu()
                       for s in range(0, len(points), chunk)]
        extras["fusion_weights"] = torch.cat(weights).numpy().reshape(moving.shape + (3,)).astype(np.float32)
        summary["fusion_weight_means"] = dict(zip(("moving", "laplacian", "gaussian"),
                                                  extras["fusion_weights"].reshape(-1, 3).mean(0).tolist()))
    return inverse, extras, summary
