"""One pair, end to end, in memory: the dispatch table of the core's registration methods.

:func:`register` runs any method of :data:`METHODS` the same way (see :mod:`.method`): prepare the
pair, run the affine stage when the method uses it, fit the method's model with the one
optimisation loop, take the dense fields the model represents, then the dense outputs and the
summary that every method shares. This module imports the methods; none of them imports it.

Inputs and outputs are :class:`~inrreg_pipeline.core.space.SpatialImage` objects and NumPy
arrays; file formats live in :mod:`inrreg_pipeline.io`.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from . import displacement, svf, two_network
from .affine import register_affine
from .choices import VARIANT_METHODS
from .config import RegistrationSettings
from .method import RegistrationMethod
from .pair import prepare_pair, seed_everything
from .quality import check_overlap, start_affine
from .result import RegistrationResult, dense_outputs, summarise
from .scratch import no_empty_inductor_cache
from .space import SpatialImage

__all__ = ["METHODS", "RegistrationResult", "register", "method_for", "seed_everything"]

ProgressFactory = Callable[[str, int], Callable[[int, float], None]]

#: ``settings.method`` -> the method that runs it (docs/methods.md: section 1 the displacement INR and
#: its variants, section 2 the two-network method, section 3 the velocity INR).
METHODS: dict[str, RegistrationMethod] = {
    "siren": displacement.METHOD,
    **{name: displacement.METHOD for name in VARIANT_METHODS},
    "svf": svf.METHOD,
    "two-network": two_network.METHOD,
}


def method_for(settings: RegistrationSettings) -> RegistrationMethod:
    """The method of ``settings.method`` (``ValueError`` for a name no method has)."""
    try:
        return METHODS[settings.method]
    except KeyError:
        raise ValueError(f"unknown method '{settings.method}' (choose from {', '.join(METHODS)})") from None


def register(fixed: SpatialImage, moving: SpatialImage, settings: RegistrationSettings, device: torch.device,
             seed: int = 0, fixed_mask: np.ndarray | None = None, moving_mask: np.ndarray | None = None,
             use_affine: bool = True, progress: ProgressFactory | None = None) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` (both in their own physical space) with ``settings.method``.

    ``fixed_mask`` / ``moving_mask``: where to compare (own grids). ``use_affine=False``: the inputs
    are already aligned, ``A`` is the identity (no affine stage; the two-network method keeps its
    motion as the field). A preset's ``affine.enabled: false`` instead keeps the centre-of-mass
    translation that starts the affine stage and optimises nothing.
    ``progress(stage, total)`` may return a callback ``(steps, loss)`` for progress display.

    Raises :class:`~.quality.NoOverlapError` (a ``ValueError``) before any work when the images cannot
    overlap in world space; ``summary["quality"]`` says whether the result overlaps and improves on
    the start (:func:`~.quality.assess`).
    """
    with no_empty_inductor_cache():
        return _register(fixed, moving, settings, device, seed, fixed_mask, moving_mask, use_affine, progress)


def _register(fixed: SpatialImage, moving: SpatialImage, settings: RegistrationSettings, device: torch.device,
              seed: int, fixed_mask: np.ndarray | None, moving_mask: np.ndarray | None, use_affine: bool,
              progress: ProgressFactory | None) -> RegistrationResult:
    method = method_for(settings)
    pair = prepare_pair(fixed, moving, device, seed, fixed_mask, moving_mask)
    start = start_affine(pair.fixed_norm, pair.moving_norm, fixed_mask, moving_mask)  # where the affine stage starts
    check_overlap(pair.fixed_norm, pair.moving_norm, pair.sampling_mask, start)

    def callback(stage: str, total: int):
        return progress(stage, total) if (progress is not None and total > 0) else None

    # 1. affine stage
    affine, affine_history, affine_seconds = np.eye(fixed.ndim + 1), [], 0.0
    if method.uses_affine_stage and use_affine:
        aff = settings.affine
        total = (aff.rigid_iterations + sum(aff.iterations)) if aff.enabled else 0
        t0 = time.perf_counter()
        affine, affine_history = register_affine(pair.fixed_norm, pair.moving_norm, aff, device, pair.rng,
                                                 fixed_mask, moving_mask, callback("affine", total))
        affine_seconds = time.perf_counter() - t0

    # 2. the method's model
    t0 = time.perf_counter()
    fit = method.fit(pair, affine, settings, use_affine, callback(method.stage, method.iterations(settings)))
    fit_seconds = time.perf_counter() - t0 - fit.affine_seconds
    if fit.affine is not None:
        affine, affine_seconds = fit.affine, fit.affine_seconds

    # 3. dense outputs on the fixed grid
    t0 = time.perf_counter()
    fields = method.fields(fit, pair, affine, settings)
    outputs = dense_outputs(pair, affine, fields.u, fields.v, start)
    dense_seconds = time.perf_counter() - t0

    loss = {"affine_final": affine_history[-1] if affine_history else None, **method.loss_summary(fit.history)}
    summary = summarise(pair, affine, loss, outputs,
                        {"affine": affine_seconds, "deformable": fit_seconds, "dense_outputs": dense_seconds},
                        fields.summary)
    return RegistrationResult(affine, fields.u, fields.v, outputs.warped, outputs.inverse_warped, outputs.jacobian,
                              summary, fit.model, fields.extras)
