"""Hash-grid coordinate networks: a ReLU MLP of a hash encoding of world points (mm), shared by the
two-network method's motion and image networks (:class:`HashMLP`) and the ``svf`` method's
``hash-grid`` velocity (:class:`HashGridINR`).

The SIREN of :mod:`.networks` represents the whole velocity with a few global sinusoids: every
parameter moves the field everywhere, and fine detail costs many steps. Here the field is a small
ReLU MLP of a multi-resolution hash encoding (instant-NGP; :mod:`.hash_encoding`) of the point:

    v(x) = scale * W_out relu(... relu(W_1 h(x) + b_1) ...) + b_out,
    h(x) = [trilinear interpolation of level l's feature table at x]_{l = 0..L-1}.

Level ``l`` is a grid of cells from ``box / (base_resolution - 1)`` (coarsest) down to about
``finest_mm`` (finest) over the fixed image's normalised world box (its longest side, the same
isotropic box as :class:`~.encodings.NormalisedBox`), so the sizes are physical (millimetres) and
mean the same anatomy on 1 mm and 2 mm images. A table entry moves the field only within its cell
at its level: the coarse levels give the large, smooth displacements and the fine ones local
detail, so each Adam step updates every scale at once, much as SyN's and greedy's Gaussian
smoothing of each update spreads it over several scales. The output layer starts at exactly 0
(the identity transform).

Both hash backends (PyTorch, tiny-cuda-nn) compute the same function, so a CUDA run differs from
a CPU run by float rounding only.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from .config import HashSettings, VelocityHashSettings
from .encodings import NormalisedBox
from .hash_encoding import HashEncoding, coarse_to_fine_weights

__all__ = ["EncodingDomain", "HashMLP", "HashGridINR", "growth_factor"]


def growth_factor(box_mm: float, settings: VelocityHashSettings) -> float:
    """The per-level scale ``b`` whose finest level has cells of about ``finest_mm`` over a box of
    ``box_mm`` (its longest side, mm): ``b = ((box_mm / finest_mm) / base_resolution) ** (1 / (L - 1))``,
    at least 1 (a single level, or a finest size coarser than the base, is the base level alone)."""
    if settings.levels <= 1:
        return 1.0
    ratio = (box_mm / settings.finest_mm) / settings.base_resolution
    return max(1.0, ratio ** (1.0 / (settings.levels - 1)))


class EncodingDomain(nn.Module):
    """World mm -> ``[0, 1]^d`` for the hash grids: the fixed image's :class:`NormalisedBox`
    (``[-1, 1]`` over its longest side, isotropic) enlarged by ``margin`` on every side."""

    def __init__(self, box: NormalisedBox, margin: float):
        super().__init__()
        self.box = box
        self.half_width = 1.0 + float(margin)

    def normalised(self, points_mm: torch.Tensor) -> torch.Tensor:
        """``(x - centre) / scale``: about ``[-1, 1]`` over the fixed image."""
        return self.box(points_mm)

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return (self.box(points_mm) / self.half_width + 1.0) / 2.0

    def contains(self, points_mm: np.ndarray) -> np.ndarray:
        """Which world points lie inside the encoding domain."""
        centre = self.box.centre.cpu().numpy().astype(np.float64)
        return np.all(np.abs(points_mm - centre) / self.box.scale <= self.half_width, axis=-1)


class HashMLP(nn.Module):
    """``MLP([hash(x), x_norm])``: hash encoding of the domain coordinate (the first ``use_levels``
    levels of ``hash_settings``), optionally concatenated with the normalised coordinate itself,
    then ``hidden_layers`` ReLU layers of ``hidden_features`` units and a linear output."""

    def __init__(self, domain: EncodingDomain, ndim: int, hash_settings: HashSettings, use_levels: int,
                 hidden_features: int, hidden_layers: int, out_features: int, include_input: bool,
                 backend: str, device: torch.device, hidden_bias: bool = True):
        super().__init__()
        self.domain = domain
        self.include_input = include_input
        h = hash_settings
        self.encoding = HashEncoding(ndim, n_levels=use_levels, features_per_level=h.features_per_level,
                                     log2_table_size=h.log2_table_size, base_resolution=h.base_resolution,
                                     growth_factor=h.growth_factor, backend=backend, device=device)
        layers: list[nn.Module] = []
        fan_in = self.encoding.out_features + (ndim if include_input else 0)
        for _ in range(hidden_layers):
            layers += [nn.Linear(fan_in, hidden_features, bias=hidden_bias), nn.ReLU()]
            fan_in = hidden_features
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(fan_in, out_features)

    @property
    def n_levels(self) -> int:
        return self.encoding.layout.n_levels

    def set_alpha(self, alpha: float | None) -> None:
        """Coarse-to-fine progress: level weights :func:`coarse_to_fine_weights` (``None``: all 1)."""
        n = self.n_levels
        self.encoding.set_level_weights(np.ones(n) if alpha is None else coarse_to_fine_weights(alpha, n))

    def features(self, points_mm: torch.Tensor) -> torch.Tensor:
        feats = self.encoding(self.domain(points_mm))
        if self.include_input:
            feats = torch.cat([feats, self.domain.normalised(points_mm)], -1)
        return self.mlp(feats)

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(points_mm))

    def at_points(self, points_mm: torch.Tensor) -> Callable[[], torch.Tensor]:
        """``lambda: self(points_mm)`` for world points ``(N, d)`` (mm) evaluated every step of a loop:
        the encoding's corner weights are computed once (:meth:`HashEncoding.at_points`)."""
        encoded = self.encoding.at_points(self.domain(points_mm))
        extra = self.domain.normalised(points_mm).detach() if self.include_input else None

        def evaluate() -> torch.Tensor:
            feats = encoded() if extra is None else torch.cat([encoded(), extra], -1)
            return self.out(self.mlp(feats))
        return evaluate


class HashGridINR(HashMLP):
    """``v(x)``: world points ``(..., d)`` (mm) -> vectors ``(..., d)`` (mm); starts at exactly 0.

    A :class:`HashMLP` over the fixed image's normalised world box (``box``; no margin: ``[-1, 1]``
    mapped to ``[0, 1]``, points outside clamped onto its faces), the hash levels' growth factor
    from ``settings.finest_mm`` (:func:`growth_factor`), no coordinate input, the output layer at 0
    and in the box's unit (mm = ``box.scale`` x output). ``device``: where the network will run
    (``backend: auto`` picks tiny-cuda-nn on CUDA when it is importable). Torch's global RNG must be
    seeded by the caller (the tables' ``U(-1e-4, 1e-4)`` initialisation, then the hidden layers').
    """

    def __init__(self, box: NormalisedBox, ndim: int, settings: VelocityHashSettings,
                 device: torch.device | str | None = None):
        levels = HashSettings(levels=settings.levels, features_per_level=settings.features_per_level,
                              log2_table_size=settings.log2_table_size, base_resolution=settings.base_resolution,
                              growth_factor=growth_factor(2.0 * box.scale, settings))
        super().__init__(EncodingDomain(box, 0.0), ndim, levels, settings.levels, settings.hidden_features,
                         settings.hidden_layers, ndim, include_input=False, backend=settings.backend, device=device,
                         hidden_bias=settings.hidden_bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def finest_cell_mm(self) -> float:
        """The finest level's cell size (mm) over the encoding box."""
        return 2.0 * self.domain.box.scale / self.encoding.layout.scales[-1]

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        """The vector (mm) at world points ``(..., d)`` (mm)."""
        lead, d = points_mm.shape[:-1], points_mm.shape[-1]
        return (super().forward(points_mm.reshape(-1, d)) * self.domain.box.scale).reshape(lead + (d,))

    def at_points(self, points_mm: torch.Tensor) -> Callable[[], torch.Tensor]:
        """``lambda: self(points_mm)`` for fixed world points ``(..., d)`` (mm), precomputed once
        (:meth:`HashMLP.at_points`): the velocity INR evaluates its control grid every step."""
        lead, d = points_mm.shape[:-1], points_mm.shape[-1]
        evaluate = super().at_points(points_mm.reshape(-1, d))
        return lambda: (evaluate() * self.domain.box.scale).reshape(lead + (d,))
