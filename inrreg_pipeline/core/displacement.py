"""The displacement INR (docs/methods.md section 1) and its variants, as one registration method.

The network gives the displacement ``u`` (mm) at any fixed-space world point, ``phi(x) = A(x + u(x))``
with ``A`` the affine stage's matrix. It is fitted on random patches by
:func:`~.optimisation.fit_deformation`; ``method`` ``siren`` is one network, the variants of
:mod:`.variants` (``joint-affine``, ``ensemble``, ``cascade``, ``cycle``, ``fusion``, and any
``variants.omega_mode``) other models of the same shape. The inverse field is the cycle model's
backward network, else the fixed-point inverse of ``u`` (:func:`~.fields.invert_displacement`).
"""
from __future__ import annotations

import numpy as np

from .config import RegistrationSettings
from .engine import Progress, tail_mean
from .fields import evaluate_displacement, invert_displacement
from .method import Fields, Fit, similarity_and_regulariser
from .pair import PreparedPair
from .variants import deformable_iterations, fit_variant, uses_variants, variant_outputs


class DisplacementINR:
    """:class:`~.method.RegistrationMethod` of ``siren`` and the variant methods."""

    stage = "deformable"
    uses_affine_stage = True

    def iterations(self, settings: RegistrationSettings) -> int:
        return deformable_iterations(settings)

    def fit(self, pair: PreparedPair, affine: np.ndarray, settings: RegistrationSettings, use_affine: bool,
            progress: Progress | None) -> Fit:
        model, history = fit_variant(pair.fixed_norm, pair.moving_norm, affine, settings, pair.device, pair.rng,
                                     pair.sampling_mask, pair.moving_mask, progress)
        return Fit(model, history)

    def fields(self, fit: Fit, pair: PreparedPair, affine: np.ndarray, settings: RegistrationSettings) -> Fields:
        model = fit.model.eval()
        fixed = pair.fixed
        u = evaluate_displacement(model, fixed.shape, fixed.affine, pair.device)
        v, extras, learned = variant_outputs(model, pair.fixed_norm, pair.moving_norm, pair.device)
        if v is None:
            v = invert_displacement(u, fixed.affine, pair.device, settings.inverse_iterations)
        summary = {}
        if uses_variants(settings):
            history = fit.history
            summary["variant"] = {
                "method": settings.method, "omega_mode": settings.variants.omega_mode,
                "inverse": "backward network" if settings.method == "cycle" else "fixed-point",
                **{k: [float(x) for x in vals] for k, vals in history.items() if k == "stage_start_gap_mm"},
                **{f"{k}_final": tail_mean(vals) for k, vals in history.items()
                   if k not in ("similarity", "regulariser", "total", "stage_start_gap_mm") and vals},
                **learned}
        return Fields(u, v, extras, summary)

    def loss_summary(self, history: dict[str, list[float]]) -> dict:
        return similarity_and_regulariser(history)


METHOD = DisplacementINR()
