"""Input encodings for coordinate networks.

Inputs are points normalised to roughly ``[-1, 1]^d`` (see :class:`NormalisedBox`).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class NormalisedBox(nn.Module):
    """Maps world points (mm) to network coordinates and back for displacements.

    ``x_norm = (x - centre) / scale`` with one isotropic ``scale`` (half the longest side of the
    fixed image's world bounding box, mm), so distances keep their physical proportions in every
    direction. Network outputs are displacements in the same normalised unit: ``u_mm = scale * out``.
    """

    def __init__(self, lower: np.ndarray, upper: np.ndarray):
        super().__init__()
        centre = (np.asarray(lower, float) + np.asarray(upper, float)) / 2.0
        scale = float(np.max(np.asarray(upper, float) - np.asarray(lower, float)) / 2.0)
        self.register_buffer("centre", torch.as_tensor(centre, dtype=torch.float32))
        self.scale = max(scale, 1e-6)

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return (points_mm - self.centre) / self.scale


class FourierFeatures(nn.Module):
    """Positional encoding ``[x, sin(2^k pi x), cos(2^k pi x)]`` for ``k = 0 .. n_frequencies-1``.

    With ``n_frequencies == 0`` this is the identity. Output width: ``d * (1 + 2 n)``.
    """

    def __init__(self, in_features: int, n_frequencies: int = 6):
        super().__init__()
        self.in_features = in_features
        self.n_frequencies = int(n_frequencies)
        freqs = (2.0 ** torch.arange(self.n_frequencies, dtype=torch.float32)) * math.pi
        self.register_buffer("frequencies", freqs)

    @property
    def out_features(self) -> int:
        return self.in_features * (1 + 2 * self.n_frequencies)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.n_frequencies == 0:
            return x
        proj = x[..., None] * self.frequencies  # (..., d, n)
        return torch.cat([x, torch.sin(proj).flatten(-2), torch.cos(proj).flatten(-2)], dim=-1)
