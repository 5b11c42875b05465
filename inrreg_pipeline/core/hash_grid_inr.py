"""A hash-grid coordinate network: world point (mm) -> vector (mm), the ``svf`` method's ``hash-grid`` network.

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

import torch
from torch import nn

from .config import VelocityHashSettings
from .encodings import NormalisedBox
from .hash_encoding import HashEncoding

__all__ = ["HashGridINR", "growth_factor"]


def growth_factor(box_mm: float, settings: VelocityHashSettings) -> float:
    """The per-level scale ``b`` whose finest level has cells of about ``finest_mm`` over a box of
    ``box_mm`` (its longest side, mm): ``b = ((box_mm / finest_mm) / base_resolution) ** (1 / (L - 1))``,
    at least 1 (a single level, or a finest size coarser than the base, is the base level alone)."""
    if settings.levels <= 1:
        return 1.0
    ratio = (box_mm / settings.finest_mm) / settings.base_resolution
    return max(1.0, ratio ** (1.0 / (settings.levels - 1)))


class HashGridINR(nn.Module):
    """``v(x)``: world points ``(..., d)`` (mm) -> vectors ``(..., d)`` (mm); starts at exactly 0.

    ``box``: the fixed image's normalised world box (the encoding domain is that box, ``[-1, 1]``
    mapped to ``[0, 1]``; points outside it are clamped onto its faces). ``device``: where the
    network will run (``backend: auto`` picks tiny-cuda-nn on CUDA when it is importable). Torch's
    global RNG must be seeded by the caller (the tables' ``U(-1e-4, 1e-4)`` initialisation, then the
    hidden layers').
    """

    def __init__(self, box: NormalisedBox, ndim: int, settings: VelocityHashSettings,
                 device: torch.device | str | None = None):
        super().__init__()
        self.box = box
        self.encoding = HashEncoding(ndim, n_levels=settings.levels, features_per_level=settings.features_per_level,
                                     log2_table_size=settings.log2_table_size,
                                     base_resolution=settings.base_resolution,
                                     growth_factor=growth_factor(2.0 * box.scale, settings),
                                     backend=settings.backend, device=device)
        layers: list[nn.Module] = []
        width = self.encoding.out_features
        for _ in range(settings.hidden_layers):
            layers += [nn.Linear(width, settings.hidden_features), nn.ReLU()]
            width = settings.hidden_features
        self.hidden = nn.Sequential(*layers)
        self.out = nn.Linear(width, ndim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def finest_cell_mm(self) -> float:
        """The finest level's cell size (mm) over the encoding box."""
        return 2.0 * self.box.scale / self.encoding.layout.scales[-1]

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        """The vector (mm) at world points ``(..., d)`` (mm)."""
        lead, d = points_mm.shape[:-1], points_mm.shape[-1]
        unit = (self.box(points_mm.reshape(-1, d)) + 1.0) / 2.0
        return (self.out(self.hidden(self.encoding(unit))) * self.box.scale).reshape(lead + (d,))

