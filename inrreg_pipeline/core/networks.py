"""Coordinate networks: the deformation MLP (SIREN and its activation variants).

A :class:`DeformationINR` maps a world point ``x`` (mm) to a displacement ``u(x)`` (mm) of the
pull-back transform ``phi(x) = x + u(x)`` (see :mod:`inrreg_pipeline.core.space`).
Formulas: ``shared/docs/methods.md`` section 1.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .encodings import FourierFeatures, NormalisedBox

ACTIVATIONS = ("relu", "sine", "snake", "sine+", "chirp", "morlet")
#: Activations whose layers use the SIREN initialisation (they oscillate with frequency omega).
PERIODIC = {"sine", "snake", "sine+", "chirp", "morlet"}


class Activation(nn.Module):
    """``sigma(z)`` for one of :data:`ACTIVATIONS`, ``z`` the layer's pre-activation.

    omega (default 30) is the frequency; ``chirp_a`` is the chirp rate ``a`` (10 in the reference study).
    """

    def __init__(self, name: str, omega: float = 30.0, chirp_a: float = 10.0):
        super().__init__()
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation '{name}' (choose from {', '.join(ACTIVATIONS)})")
        self.name = name
        self.omega = float(omega)
        self.chirp_a = float(chirp_a)
        w = self.omega
        # Morlet normalisation constants a_w, b_w (methods.md).
        self.morlet_b = math.exp(-(w ** 2) / 2.0)
        self.morlet_a = math.pi ** -0.25 * (1.0 + math.exp(-(w ** 2)) - 2.0 * math.exp(-0.75 * w ** 2)) ** -0.5

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w = self.omega
        if self.name == "relu":
            return torch.relu(z)
        if self.name == "sine":
            return torch.sin(w * z)
        if self.name == "snake":
            return z + torch.cos(w * z) / w + 1.0 / w
        if self.name == "sine+":
            return z + torch.sin(w * z)
        if self.name == "chirp":
            return torch.sin(w * z + self.chirp_a * z * torch.tanh(w * z))
        # morlet
        return self.morlet_a * torch.exp(-z * z / 2.0) * (torch.sin(w * z) - self.morlet_b)


class DeformationINR(nn.Module):
    """MLP ``u(x)``: world point (mm) -> displacement (mm).

    Reference architecture (methods.md): ``hidden_layers`` layers of ``hidden_features`` units,
    optional Fourier features, the encoded input concatenated again at the middle layer
    (``skip_connection``), last layer initialised ``U(-1e-4, 1e-4)`` so ``u`` starts near 0.
    Periodic activations use the SIREN initialisation: first layer ``U(-1/n, 1/n)``, later
    layers ``U(-sqrt(6/n)/omega, sqrt(6/n)/omega)`` with ``n`` the fan-in; biases keep
    PyTorch's default ``U(-1/sqrt(n), 1/sqrt(n))`` as in the SIREN reference code.
    """

    def __init__(self, box: NormalisedBox, ndim: int, hidden_layers: int = 5, hidden_features: int = 256,
                 activation: str = "sine", omega: float = 30.0, fourier_frequencies: int = 0,
                 skip_connection: bool = True, chirp_a: float = 10.0):
        super().__init__()
        if hidden_layers < 1:
            raise ValueError("hidden_layers must be >= 1")
        self.box = box
        self.ndim = ndim
        self.encoding = FourierFeatures(ndim, fourier_frequencies)
        self.skip_at = hidden_layers // 2 if (skip_connection and hidden_layers > 1) else -1
        enc = self.encoding.out_features
        self.layers = nn.ModuleList()
        fan_in = enc
        for i in range(hidden_layers):
            if i == self.skip_at:
                fan_in += enc
            self.layers.append(nn.Linear(fan_in, hidden_features))
            fan_in = hidden_features
        self.activation = Activation(activation, omega=omega, chirp_a=chirp_a)
        self.out = nn.Linear(hidden_features, ndim)
        self._initialise(activation, omega)

    @torch.no_grad()
    def _initialise(self, activation: str, omega: float) -> None:
        for i, layer in enumerate(self.layers):
            n = layer.in_features
            if activation in PERIODIC:
                bound = 1.0 / n if i == 0 else math.sqrt(6.0 / n) / omega
                layer.weight.uniform_(-bound, bound)
            else:
                nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
        self.out.weight.uniform_(-1e-4, 1e-4)
        self.out.bias.zero_()

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Displacement (mm) at world points ``(..., d)`` (mm)."""
        x = self.encoding(self.box(points_mm))
        h = x
        for i, layer in enumerate(self.layers):
            if i == self.skip_at:
                h = torch.cat([h, x], dim=-1)
            h = self.activation(layer(h))
        return self.out(h) * self.box.scale
