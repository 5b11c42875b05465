"""Multi-resolution hash encoding (instant-NGP), in pure PyTorch or through tiny-cuda-nn.

Both backends compute the same function from the same parameters (tiny-cuda-nn's ``HashGrid``
conventions are reproduced exactly), so one configuration describes both:

* ``L`` levels (``n_levels``), ``F`` features per level, ``T = 2**log2_table_size`` table entries
  per level at most, base resolution ``N_min`` and growth factor ``b`` (``per_level_scale``).
* Level ``l`` has the scale ``s_l = N_min * b**l - 1`` and ``R_l = ceil(s_l) + 1`` vertices per
  axis. An input ``x`` in ``[0, 1]^d`` sits at ``p = s_l x + 0.5`` in the level's vertex units (the
  half-vertex offset staggers the levels, as tiny-cuda-nn does); its cell is ``floor(p)`` and its
  fractional position ``p - floor(p)`` gives the multilinear (bilinear in 2-D, trilinear in 3-D)
  weights of the ``2^d`` cell corners.
* Level ``l`` holds ``T_l = min(T, next_multiple_of_8(R_l^d))`` entries of ``F`` features. A corner
  ``c = (c_0, .., c_{d-1})`` (integers) has the *dense* index ``sum_i c_i R_l^i`` when the level fits
  (``R_l^d <= T_l``), else the *spatial hash* ``XOR_i (c_i * pi_i mod 2^32)`` with the primes
  ``pi = (1, 2654435761, 805459861)``; either way taken modulo ``T_l``. (As in tiny-cuda-nn, the
  half-vertex offset lets the upper corners of the last cell reach index ``R_l``, which on a dense
  level wraps onto the next row: harmless, and kept so that both backends agree exactly.)
* Parameters: one flat vector, level after level (``offset_l = sum_{k<l} T_k`` entries), entry-major
  with the ``F`` features of an entry contiguous (tiny-cuda-nn's ``params`` layout), initialised
  ``U(-1e-4, 1e-4)``.
* Output: ``(N, L * F)``, level-major (level 0's ``F`` features first).

Coarse-to-fine (:func:`coarse_to_fine_weights`): every level's features can be multiplied by a
weight ``w_l`` in ``[0, 1]`` (:meth:`HashEncoding.set_level_weights`), the same for both backends.
"""
from __future__ import annotations

import importlib
import math
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn

from .choices import BACKENDS

#: Spatial-hash primes per dimension (instant-NGP / tiny-cuda-nn's ``CoherentPrime``).
PRIMES = (1, 2654435761, 805459861)


def tcnn_available() -> bool:
    """Whether :mod:`tinycudann` can be imported (it needs CUDA; it is not on PyPI)."""
    try:
        importlib.import_module("tinycudann")
    except Exception:  # ImportError, or a CUDA/driver error raised at import
        return False
    return True


def coarse_to_fine_weights(alpha: float, n_levels: int) -> np.ndarray:
    """Level weights ``w_l(alpha) = (1 - cos(pi * clamp(alpha * L - l, 0, 1))) / 2``, ``l = 0..L-1``.

    The BARF / Nerfies cosine window: level ``l`` fades in while ``alpha`` goes from ``l / L`` to
    ``(l + 1) / L``; all weights are 0 at ``alpha = 0`` and 1 from ``alpha = 1`` on.
    """
    levels = np.arange(n_levels, dtype=np.float64)
    t = np.clip(alpha * n_levels - levels, 0.0, 1.0)
    return (1.0 - np.cos(np.pi * t)) / 2.0


def spatial_hash(corners: torch.Tensor) -> torch.Tensor:
    """``XOR_i (c_i * pi_i mod 2^32)`` for integer corners ``(..., d)``, ``d <= 3``, as int64 in ``[0, 2^32)``."""
    d = corners.shape[-1]
    if d > len(PRIMES):
        raise ValueError(f"the spatial hash has primes for up to {len(PRIMES)} dimensions, got {d}")
    result = torch.zeros(corners.shape[:-1], dtype=torch.int64, device=corners.device)
    for i in range(d):
        result = result ^ ((corners[..., i].to(torch.int64) * PRIMES[i]) & 0xFFFFFFFF)
    return result


class GridLayout:
    """Per-level geometry of a hash grid (scales, vertex counts, table sizes, offsets), tiny-cuda-nn's rules."""

    def __init__(self, n_dims: int, n_levels: int, features_per_level: int, log2_table_size: int,
                 base_resolution: int, growth_factor: float):
        if n_dims not in (1, 2, 3):
            raise ValueError(f"hash encoding supports 1-3 input dimensions, got {n_dims}")
        if n_levels < 1 or features_per_level < 1 or base_resolution < 2 or growth_factor < 1.0:
            raise ValueError("hash encoding needs n_levels >= 1, features_per_level >= 1, base_resolution >= 2 "
                             "and growth_factor >= 1")
        if not 4 <= log2_table_size <= 30:
            raise ValueError(f"log2_table_size must be in 4..30, got {log2_table_size}")
        self.n_dims = int(n_dims)
        self.n_levels = int(n_levels)
        self.features_per_level = int(features_per_level)
        self.log2_table_size = int(log2_table_size)
        self.base_resolution = int(base_resolution)
        self.growth_factor = float(growth_factor)
        # float32 arithmetic as in tiny-cuda-nn: scale = exp2(l * log2(b)) * N_min - 1.
        log2_b = np.float32(math.log2(self.growth_factor))
        self.scales = [float(np.float32(np.exp2(np.float32(l) * log2_b)) * np.float32(self.base_resolution)
                             - np.float32(1.0)) for l in range(self.n_levels)]
        self.resolutions = [int(math.ceil(s)) + 1 for s in self.scales]
        table = 1 << self.log2_table_size
        self.sizes, self.offsets, self.hashed = [], [], []
        offset = 0
        for r in self.resolutions:
            dense = r ** self.n_dims
            size = min(table, -(-dense // 8) * 8)
            self.sizes.append(size)
            self.offsets.append(offset)
            self.hashed.append(dense > size)
            offset += size
        self.n_entries = offset

    @property
    def n_params(self) -> int:
        return self.n_entries * self.features_per_level

    @property
    def out_features(self) -> int:
        return self.n_levels * self.features_per_level

    def tcnn_config(self) -> dict:
        return {"otype": "HashGrid", "n_levels": self.n_levels, "n_features_per_level": self.features_per_level,
                "log2_hashmap_size": self.log2_table_size, "base_resolution": self.base_resolution,
                "per_level_scale": self.growth_factor, "interpolation": "Linear", "hash": "CoherentPrime"}


class TorchHashEncoding(nn.Module):
    """Pure-PyTorch hash grid (CPU or GPU), differentiable in its parameters and in its input."""

    def __init__(self, layout: GridLayout):
        super().__init__()
        self.layout = layout
        self.params = nn.Parameter(torch.empty(layout.n_params).uniform_(-1e-4, 1e-4))
        d = layout.n_dims
        corners = [[(k >> i) & 1 for i in range(d)] for k in range(1 << d)]  # bit i of corner k: axis i
        self.register_buffer("corner_bits", torch.as_tensor(corners, dtype=torch.int64), persistent=False)
        self.register_buffer("scales", torch.as_tensor(layout.scales, dtype=torch.float32), persistent=False)
        strides = [[r ** i for i in range(d)] for r in layout.resolutions]
        self.register_buffer("strides", torch.as_tensor(strides, dtype=torch.int64), persistent=False)
        self.register_buffer("sizes", torch.as_tensor(layout.sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("offsets", torch.as_tensor(layout.offsets, dtype=torch.int64), persistent=False)
        self.register_buffer("hashed", torch.as_tensor(layout.hashed, dtype=torch.bool), persistent=False)

    def table(self) -> torch.Tensor:
        """The parameters as ``(n_entries, F)`` (all levels, level after level)."""
        return self.params.view(-1, self.layout.features_per_level)

    def indices(self, corners: torch.Tensor) -> torch.Tensor:
        """Row of :meth:`table` for integer corners ``(..., L, d)`` of every level: ``(..., L)``."""
        dense = (corners * self.strides).sum(-1)
        hashed = spatial_hash(corners)
        index = torch.where(self.hashed, hashed, dense)
        return index % self.sizes + self.offsets

    def _rows(self, cell: torch.Tensor, levels: slice, hashed: bool) -> torch.Tensor:
        """Table rows ``(N, l, 2^d)`` of the ``2^d`` corners of ``cell`` ``(N, l, d)`` for a run of
        levels that are all dense or all hashed (the same numbers as :meth:`indices`, faster)."""
        d = self.layout.n_dims
        total = None
        for i in range(d):  # per-axis contributions of the lower (bit 0) and upper (bit 1) corner
            c = torch.stack([cell[..., i], cell[..., i] + 1], -1)  # (N, l, 2)
            part = (c * PRIMES[i]) & 0xFFFFFFFF if hashed else c * self.strides[levels, i, None]
            shape = (part.shape[0], part.shape[1]) + (1,) * (d - 1 - i) + (2,) + (1,) * i
            part = part.reshape(shape)  # corner k = sum_i bit_i 2^i: axis i varies with stride 2^i
            total = part if total is None else (total ^ part if hashed else total + part)
        total = total.reshape(cell.shape[0], cell.shape[1], 1 << d)
        return total % self.sizes[levels, None] + self.offsets[levels, None]

    def corners(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Table rows and multilinear weights of the ``2^d`` cell corners of points ``x`` ``(N, d)`` in
        ``[0, 1]^d`` at every level: two ``(N, L, 2^d)`` tensors (int64, float32); corner
        ``k = sum_i bit_i(k) 2^i``. A level's features at a point are ``sum_k weights_k table[rows_k]``."""
        lay = self.layout
        d = lay.n_dims
        n = x.shape[0]
        pos = x.to(torch.float32)[:, None, :] * self.scales[:, None] + 0.5  # (N, L, d)
        cell = torch.floor(pos)
        frac = pos - cell
        cell = cell.to(torch.int64)
        weights = None
        for i in range(d):
            w = torch.stack([1.0 - frac[..., i], frac[..., i]], -1)
            w = w.reshape((n, lay.n_levels) + (1,) * (d - 1 - i) + (2,) + (1,) * i)
            weights = w if weights is None else weights * w
        weights = weights.reshape(n, lay.n_levels, 1 << d)
        n_dense = lay.hashed.index(True) if True in lay.hashed else lay.n_levels
        rows = []
        if n_dense > 0:
            rows.append(self._rows(cell[:, :n_dense], slice(0, n_dense), hashed=False))
        if n_dense < lay.n_levels:
            rows.append(self._rows(cell[:, n_dense:], slice(n_dense, lay.n_levels), hashed=True))
        rows = torch.cat(rows, 1) if len(rows) > 1 else rows[0]
        return rows, weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``(N, L * F)`` at points ``x`` ``(N, d)`` in ``[0, 1]^d``."""
        lay = self.layout
        rows, weights = self.corners(x)
        # index_select, not table[rows]: its backward (index_add_) sums each entry's gradient in a fixed
        # order, where advanced indexing's accumulates across threads in any order, so that a multi-threaded
        # CPU run was not reproducible (two-network results varied by up to 0.7 mm between runs)
        feats = torch.index_select(self.table(), 0, rows.reshape(-1)).reshape(rows.shape + (lay.features_per_level,))
        out = torch.matmul(weights[..., None, :], feats)  # (N, L, 1, F)
        return out.reshape(x.shape[0], lay.out_features)

    def at_points(self, x: torch.Tensor) -> "FixedPointsInterpolation":
        """The features at fixed points ``x`` ``(N, d)`` as a precomputed linear map of the table
        (:class:`FixedPointsInterpolation`): the same numbers as ``self(x)`` up to float rounding, for
        loops that evaluate the same points every step (the velocity INR's control grid)."""
        with torch.no_grad():
            rows, weights = self.corners(x)
        return FixedPointsInterpolation(rows, weights, self.layout.n_entries)


class _SparseProduct(torch.autograd.Function):
    """``matrix @ table`` with the gradient ``transposed @ grad``: both CSR products are row-parallel
    sums in a fixed order, so a multi-threaded run is reproducible (as with ``index_select``)."""

    @staticmethod
    def forward(ctx, table: torch.Tensor, matrix: torch.Tensor, transposed: torch.Tensor) -> torch.Tensor:
        ctx.transposed = transposed
        return matrix @ table

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return ctx.transposed @ grad.contiguous(), None, None


class FixedPointsInterpolation:
    """A hash grid's features at ``N`` fixed points, as a sparse ``(N * L, entries)`` matrix ``W`` of
    corner weights (``2^d`` per row; CSR) applied to the ``(entries, F)`` table: ``W @ table``, with
    ``W^T`` stored for the gradient.

    Why not :meth:`TorchHashEncoding.forward`: on a fixed point set the corner rows and weights are
    constants, and recomputing them (integer hashing, ``floor``, the weight products) and gathering
    per corner was half of a velocity-INR step on the CPU (355 ms of fitting a 92 000-point control
    grid's 8-level encoding, forward and backward, against 46 ms for the two sparse products).
    """

    def __init__(self, rows: torch.Tensor, weights: torch.Tensor, n_entries: int):
        n, levels, corners = rows.shape
        self.n_points = n
        crow = torch.arange(0, n * levels * corners + 1, corners, device=rows.device)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the two products used are stable
            warnings.simplefilter("ignore", UserWarning)
            self.matrix = torch.sparse_csr_tensor(crow, rows.reshape(-1), weights.reshape(-1),
                                                  size=(n * levels, n_entries), check_invariants=False)
            self.transposed = self.matrix.to_sparse_coo().t().coalesce().to_sparse_csr()

    def __call__(self, table: torch.Tensor) -> torch.Tensor:
        """Features ``(N, L * F)`` from the ``(entries, F)`` table."""
        out = _SparseProduct.apply(table, self.matrix, self.transposed)
        return out.reshape(self.n_points, -1)


class TcnnHashEncoding(nn.Module):
    """tiny-cuda-nn's ``HashGrid`` with the same layout (CUDA only; float32 parameters and output)."""

    def __init__(self, layout: GridLayout):
        super().__init__()
        import tinycudann as tcnn

        self.layout = layout
        self.encoding = tcnn.Encoding(layout.n_dims, layout.tcnn_config(), dtype=torch.float32)

    @property
    def params(self) -> nn.Parameter:
        return self.encoding.params

    def table(self) -> torch.Tensor:
        return self.params.view(-1, self.layout.features_per_level)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoding(x.to(torch.float32).contiguous()).to(torch.float32)


class HashEncoding(nn.Module):
    """A multi-resolution hash encoding with per-level weights, on either backend.

    ``backend``: ``"torch"`` (pure PyTorch, any device), ``"tcnn"`` (tiny-cuda-nn; ``RuntimeError``
    when it is not importable) or ``"auto"`` (tiny-cuda-nn when importable and ``device`` is CUDA,
    else PyTorch). Inputs outside ``[0, 1]^d`` are clamped onto it.
    """

    def __init__(self, n_dims: int, n_levels: int = 12, features_per_level: int = 2, log2_table_size: int = 16,
                 base_resolution: int = 4, growth_factor: float = 1.5, backend: str = "auto",
                 device: torch.device | str | None = None):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown hash backend '{backend}' (choose from {', '.join(BACKENDS)})")
        self.layout = GridLayout(n_dims, n_levels, features_per_level, log2_table_size, base_resolution,
                                 growth_factor)
        on_cuda = device is not None and torch.device(device).type == "cuda"
        if backend == "auto":
            backend = "tcnn" if (on_cuda and tcnn_available()) else "torch"
        if backend == "tcnn" and not tcnn_available():
            raise RuntimeError("hash backend 'tcnn' requested but tinycudann cannot be imported")
        self.backend = backend
        self.grid = TcnnHashEncoding(self.layout) if backend == "tcnn" else TorchHashEncoding(self.layout)
        self.register_buffer("level_weights", torch.ones(n_levels))

    @property
    def out_features(self) -> int:
        return self.layout.out_features

    @property
    def params(self) -> torch.Tensor:
        return self.grid.params

    def set_level_weights(self, weights) -> None:
        """Multiply level ``l``'s features by ``weights[l]`` from now on (coarse-to-fine)."""
        w = torch.as_tensor(np.asarray(weights, dtype=np.float32), device=self.level_weights.device)
        if w.shape != self.level_weights.shape:
            raise ValueError(f"expected {self.layout.n_levels} level weights, got {tuple(w.shape)}")
        self.level_weights.copy_(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Weighted features ``(..., L * F)`` at points ``(..., d)`` in ``[0, 1]^d``."""
        lead = x.shape[:-1]
        return self._weighted(self.grid(x.reshape(-1, x.shape[-1]).clamp(0.0, 1.0)), lead)

    def at_points(self, x: torch.Tensor) -> Callable[[], torch.Tensor]:
        """``lambda: self(x)`` for points ``x`` ``(..., d)`` that do not change between calls: with the
        PyTorch backend a precomputed sparse map (:class:`FixedPointsInterpolation`), the same features
        up to float rounding, on the CPU (where it pays: see that class); tiny-cuda-nn, and the PyTorch
        backend on other devices, evaluate ``x`` each call (the path the GPU check measures)."""
        if not isinstance(self.grid, TorchHashEncoding) or x.device.type != "cpu":
            return lambda: self(x)
        lead = x.shape[:-1]
        interpolation = self.grid.at_points(x.reshape(-1, x.shape[-1]).clamp(0.0, 1.0))
        return lambda: self._weighted(interpolation(self.grid.table()), lead)

    def _weighted(self, feats: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
        lay = self.layout
        feats = (feats.view(-1, lay.n_levels, lay.features_per_level) * self.level_weights[:, None])
        return feats.reshape(lead + (lay.out_features,))
