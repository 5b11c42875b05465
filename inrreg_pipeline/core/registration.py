"""One pair, end to end, in memory: affine stage, deformation INR, dense outputs.

Inputs and outputs are :class:`~inrreg_pipeline.core.space.SpatialImage` objects and NumPy
arrays; file formats live in :mod:`inrreg_pipeline.io`.
"""
from __future__ import annotations

import random
import resource
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .affine import register_affine
from .config import RegistrationSettings
from .fields import (evaluate_displacement, field_jacobian_determinant, inverse_consistency, invert_displacement,
                     jacobian_summary)
from .optimisation import fit_deformation
from .space import SpatialImage, apply_affine, foreground_mask, rescale_intensity, sample_array, voxel_grid_to_world
from .svf import dense_fields, fit_svf, svf_iterations
from .variants import deformable_iterations, fit_variant, uses_variants, variant_outputs

ProgressFactory = Callable[[str, int], Callable[[int, float], None]]


@dataclass
class RegistrationResult:
    """Everything a registration produces, in RAS mm.

    ``affine`` maps fixed points to moving points; ``displacement`` (fixed grid) is ``u`` with
    ``phi(x) = A(x + u(x))``; ``inverse_displacement`` (fixed grid) is ``v`` with
    ``phi^-1(y) = z + v(z)``, ``z = A^-1 y``. ``warped`` is the moving image on the fixed grid,
    ``inverse_warped`` the fixed image on the moving grid, ``jacobian`` is ``det(I + du/dx)``
    on the fixed grid, by finite differences of ``displacement`` in physical space
    (:func:`inrreg_pipeline.core.fields.field_jacobian_determinant`).
    """

    affine: np.ndarray
    displacement: np.ndarray
    inverse_displacement: np.ndarray
    warped: np.ndarray
    inverse_warped: np.ndarray
    jacobian: np.ndarray
    summary: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None
    #: Variant outputs (:func:`inrreg_pipeline.core.variants.variant_outputs`): ``fusion_weights``
    #: ``(*moving.shape, 3)`` on the moving grid.
    extras: dict[str, np.ndarray] = field(default_factory=dict)


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch; return the NumPy generator used for sampling."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def prepare_pair(fixed: SpatialImage, moving: SpatialImage, device: torch.device, seed: int,
                 fixed_mask: np.ndarray | None, moving_mask: np.ndarray | None):
    """Common start of every method: start time, peak-memory reset, seeding, intensities rescaled
    to [0, 1], and the fixed-grid sampling mask (``fixed_mask`` or the foreground).

    Returns ``(start, rng, fixed_rescaled, moving_rescaled, sampling_mask)``.
    """
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rng = seed_everything(seed)
    f_norm = fixed.with_data(rescale_intensity(fixed.data, fixed_mask))
    m_norm = moving.with_data(rescale_intensity(moving.data, moving_mask))
    sampling_mask = fixed_mask > 0 if fixed_mask is not None else foreground_mask(f_norm.data)
    return start, rng, f_norm, m_norm, sampling_mask


def register(fixed: SpatialImage, moving: SpatialImage, settings: RegistrationSettings, device: torch.device,
             seed: int = 0, fixed_mask: np.ndarray | None = None, moving_mask: np.ndarray | None = None,
             use_affine: bool = True, progress: ProgressFactory | None = None) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` (both in their own physical space).

    ``settings.method == "two-network"`` runs the two-network method instead
    (:func:`inrreg_pipeline.core.two_network.register_two_network`, same result fields).

    ``progress(stage, total)`` may return a callback ``(steps, loss)`` for progress display.
    """
    if fixed.ndim != moving.ndim:
        raise ValueError(f"fixed image is {fixed.ndim}-D but moving image is {moving.ndim}-D")
    if getattr(settings, "method", "siren") == "two-network":
        from .two_network import register_two_network

        return register_two_network(fixed, moving, settings, device, seed=seed, fixed_mask=fixed_mask,
                                    moving_mask=moving_mask, use_affine=use_affine, progress=progress)
    start, rng, f_norm, m_norm, sampling_mask = prepare_pair(fixed, moving, device, seed, fixed_mask, moving_mask)
    d = fixed.ndim

    def callback(stage: str, total: int):
        return progress(stage, total) if (progress is not None and total > 0) else None

    # 1. affine
    aff_settings = settings.affine
    if not use_affine:
        aff_settings = type(aff_settings)(**{**aff_settings.__dict__, "enabled": False})
    aff_total = (aff_settings.rigid_iterations + sum(aff_settings.iterations)) if aff_settings.enabled else 0
    t0 = time.perf_counter()
    affine, affine_history = register_affine(f_norm, m_norm, aff_settings, device, rng, fixed_mask, moving_mask,
                                             callback("affine", aff_total))
    affine_seconds = time.perf_counter() - t0

    # 2. deformation INR
    t0 = time.perf_counter()
    if settings.method == "svf":  # the diffeomorphic velocity INR (core/svf.py)
        model, history = fit_svf(f_norm, m_norm, affine, settings, device, sampling_mask, moving_mask,
                                 callback("deformable", svf_iterations(settings)))
    elif uses_variants(settings):  # methods.md section 1 extensions (core/variants.py)
        model, history = fit_variant(f_norm, m_norm, affine, settings, device, rng, sampling_mask, moving_mask,
                                     callback("deformable", deformable_iterations(settings)))
    else:
        model, history = fit_deformation(f_norm, m_norm, affine, settings.network, settings.optimisation,
                                         settings.loss, device, rng, sampling_mask, moving_mask,
                                         callback("deformable", settings.optimisation.iterations))
    inr_seconds = time.perf_counter() - t0

    # 3. dense outputs on the fixed grid
    t0 = time.perf_counter()
    model.eval()
    extras: dict[str, np.ndarray] = {}
    variant_summary: dict = {}
    if settings.method == "svf":  # exp(v) and its exact inverse exp(-v)
        u, v = dense_fields(model, fixed, settings.svf.squaring_steps, device)
    else:
        u = evaluate_displacement(model, fixed.shape, fixed.affine, device)
        v, extras, variant_summary = variant_outputs(model, f_norm, m_norm, device)
        if v is None:
            v = invert_displacement(u, fixed.affine, device, settings.inverse_iterations)
    jac = field_jacobian_determinant(u, fixed.affine)  # finite differences of u, physical space
    consistency = inverse_consistency(u, v, fixed.affine, device, sampling_mask)
    grid = voxel_grid_to_world(fixed.shape, fixed.affine)
    warped = sample_array(moving.data, moving.affine, apply_affine(affine, grid + u), device)
    # Inverse: moving grid point y -> z = A^-1 y -> z + v(z), v interpolated on the fixed grid.
    z = apply_affine(np.linalg.inv(affine), voxel_grid_to_world(moving.shape, moving.affine))
    v_at_z = sample_array(v, fixed.affine, z, device, vector=True)
    inverse_warped = sample_array(fixed.data, fixed.affine, z + v_at_z, device)
    dense_seconds = time.perf_counter() - t0

    inside = sampling_mask > 0
    summary = {
        "affine_matrix_ras": affine.tolist(),
        "loss": {
            "affine_final": affine_history[-1] if affine_history else None,
            "similarity_final": float(np.mean(history["similarity"][-20:])) if history["similarity"] else None,
            "regulariser_final": float(np.mean(history["regulariser"][-20:])) if history["regulariser"] else None,
        },
        "jacobian": jacobian_summary(jac, inside),
        "inverse_consistency": consistency,
        "runtime_s": {"affine": affine_seconds, "deformable": inr_seconds, "dense_outputs": dense_seconds,
                      "total": time.perf_counter() - start},
        "memory": _peak_memory_mb(device),
        "dimension": d,
    }
    if uses_variants(settings):
        summary["variant"] = {"method": settings.method, "omega_mode": settings.variants.omega_mode,
                              "inverse": "backward network" if settings.method == "cycle" else "fixed-point",
                              **{k: [float(x) for x in vals] for k, vals in history.items()
                                 if k == "stage_start_gap_mm"},
                              **{f"{k}_final": float(np.mean(vals[-20:])) for k, vals in history.items()
                                 if k not in ("similarity", "regulariser", "total", "stage_start_gap_mm") and vals},
                              **variant_summary}
    return RegistrationResult(affine, u, v, warped, inverse_warped, jac, summary, model, extras)
