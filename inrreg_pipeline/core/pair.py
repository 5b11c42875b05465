"""The start every method shares: one image pair made ready for optimisation.

:func:`prepare_pair` seeds every random generator, rescales both images' intensities to [0, 1]
(inside their masks when given) and fixes the fixed-grid sampling mask, so that methods see the
same inputs and the same seed gives the same result.
"""
from __future__ import annotations

import random
import resource
import time
from dataclasses import dataclass

import numpy as np
import torch

from .space import SpatialImage, foreground_mask, rescale_intensity


@dataclass
class PreparedPair:
    """One registration's inputs, ready for a method.

    ``fixed`` / ``moving``: the images as given (their intensities are what the outputs resample);
    ``fixed_norm`` / ``moving_norm``: the same grids with intensities rescaled to [0, 1];
    ``fixed_mask`` / ``moving_mask``: the user's masks (own grids) or None; ``sampling_mask``:
    fixed-grid voxels where the methods sample (``fixed_mask``, else the fixed foreground);
    ``rng``: the NumPy generator every method draws its samples from; ``start``: ``perf_counter``
    at preparation (the runtime's origin).
    """

    fixed: SpatialImage
    moving: SpatialImage
    fixed_norm: SpatialImage
    moving_norm: SpatialImage
    fixed_mask: np.ndarray | None
    moving_mask: np.ndarray | None
    sampling_mask: np.ndarray
    rng: np.random.Generator
    device: torch.device
    start: float

    @property
    def ndim(self) -> int:
        return self.fixed.ndim


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, NumPy and torch; return the NumPy generator used for sampling."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    """Peak resident memory of this process (MB) and, on CUDA, peak allocated GPU memory (MB)."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return out


def prepare_pair(fixed: SpatialImage, moving: SpatialImage, device: torch.device, seed: int,
                 fixed_mask: np.ndarray | None = None, moving_mask: np.ndarray | None = None) -> PreparedPair:
    """Start time, peak-memory reset, seeding, intensities rescaled to [0, 1] and the sampling mask."""
    if fixed.ndim != moving.ndim:
        raise ValueError(f"fixed image is {fixed.ndim}-D but moving image is {moving.ndim}-D")
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rng = seed_everything(seed)
    f_norm = fixed.with_data(rescale_intensity(fixed.data, fixed_mask))
    m_norm = moving.with_data(rescale_intensity(moving.data, moving_mask))
    sampling_mask = fixed_mask > 0 if fixed_mask is not None else foreground_mask(f_norm.data)
    return PreparedPair(fixed, moving, f_norm, m_norm, fixed_mask, moving_mask, sampling_mask, rng, device, start)
