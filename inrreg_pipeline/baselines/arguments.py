"""The arguments every classical baseline checks and records: threads, seed, iteration scaling, paths.

:func:`check_baseline_arguments` validates what :func:`inrreg_pipeline.baselines.run_baseline`
takes (``InputError``, exit code 2, on bad values); :func:`scaled_iterations` is how
``scale_iterations`` shortens every tool's schedule; :func:`substitute_paths` keeps temporary paths
out of the command lines recorded in ``Pregistration.json``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np

from ..core.geometry import SpatialImage
from ..io.images import InputError, load_pair
from ..register import check_prefix_outputs

__all__ = ["check_baseline_arguments", "checked_baseline_inputs", "scaled_iterations", "substitute_paths"]


def scaled_iterations(iterations: list[int], scale: float) -> list[int]:
    """Iterations per level times ``scale``, rounded, at least 1 (levels with 0 iterations stay 0)."""
    return [0 if int(n) == 0 else max(1, int(round(int(n) * scale))) for n in iterations]


def check_baseline_arguments(threads: Any, seed: Any, scale_iterations: Any, max_seed: int) -> tuple[int, float]:
    """Validate a baseline's ``threads`` (``None`` = 1), ``seed`` (0..``max_seed``) and
    ``scale_iterations`` (a positive finite number); return ``(threads, scale)`` or raise
    :class:`InputError`."""
    n_threads = 1 if threads is None else threads
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
        raise InputError(f"threads must be an integer >= 1, got {threads!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= max_seed:
        raise InputError(f"seed must be an integer in [0, {max_seed}], got {seed!r}")
    try:
        scale = float(scale_iterations)
    except (TypeError, ValueError):
        raise InputError(f"scale_iterations must be a positive number, got {scale_iterations!r}") from None
    if not math.isfinite(scale) or scale <= 0:
        raise InputError(f"scale_iterations must be a positive number, got {scale_iterations!r}")
    return int(n_threads), scale


def checked_baseline_inputs(tool: str, presets: Mapping[str, Any], preset: str, fixed: str, moving: str,
                            prefix: str, threads: Any, seed: Any, scale_iterations: Any,
                            fixed_mask: str | None, moving_mask: str | None, max_seed: int
                            ) -> tuple[int, float, SpatialImage, SpatialImage, np.ndarray | None, np.ndarray | None]:
    """Every check a baseline run makes before it writes anything, in order: no output of ``prefix``
    is an input, ``preset`` is one of ``presets`` (``tool`` names them in the message), the arguments
    (:func:`check_baseline_arguments`), then the images and masks (:func:`load_pair`). Returns
    ``(threads, scale, fixed, moving, fixed_mask, moving_mask)``; :class:`InputError` otherwise."""
    check_prefix_outputs(prefix, fixed, moving, fixed_mask, moving_mask)
    if not (isinstance(preset, str) and preset in presets):
        raise InputError(f"unknown {tool} preset '{preset}'; choose one of: {', '.join(presets)}")
    n_threads, scale = check_baseline_arguments(threads, seed, scale_iterations, max_seed)
    return (n_threads, scale, *load_pair(fixed, moving, fixed_mask, moving_mask))


def substitute_paths(text: str, placeholders: dict[str, str]) -> str:
    """``text`` with each path of ``placeholders`` replaced by its placeholder, longest first (a
    prefix path is a prefix of the paths built from it), so recorded commands name no temporary folder."""
    for path in sorted(placeholders, key=len, reverse=True):
        text = text.replace(path, placeholders[path])
    return text
