"""Coordinate networks: the deformation MLP (SIREN and its activation variants).

A :class:`DeformationINR` maps a world point ``x`` (mm) to a displacement ``u(x)`` (mm) of the
pull-back transform ``phi(x) = x + u(x)`` (see :mod:`inrreg_pipeline.core.space`).
Formulas: ``shared/docs/methods.md`` section 1.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .choices import ACTIVATIONS, OMEGA_MODES, PERIODIC
from .encodings import FourierFeatures, NormalisedBox

# ACTIVATIONS; PERIODIC: activations whose layers use the SIREN initialisation (they oscillate with
# frequency omega). Both in .choices.
#: How a layer's frequency omega is set (methods.md section 1, "omega variants"):
#: ``fixed`` (one constant), ``trainable`` (one learned scalar per layer, initialised at omega),
#: ``width`` (constant, linear across the layer's units from omega - delta to omega + delta),
#: ``attention`` (per point: omega + delta * tanh(a / n * sum_i |z_i| + b), learned a, b per layer).
# (OMEGA_MODES, in .choices)


def activation_value(name: str, z: torch.Tensor, omega: float | torch.Tensor, chirp_a: float = 10.0
                     ) -> torch.Tensor:
    """``sigma(z)`` of methods.md's activation table with ``omega`` a float or a tensor that
    broadcasts against ``z`` (per unit or per point). Morlet's ``a_w``, ``b_w`` follow omega."""
    w = omega
    if name == "relu":
        return torch.relu(z)
    if name == "sine":
        return torch.sin(w * z)
    if name == "snake":
        return z + torch.cos(w * z) / w + 1.0 / w
    if name == "sine+":
        return z + torch.sin(w * z)
    if name == "chirp":
        return torch.sin(w * z + chirp_a * z * torch.tanh(w * z))
    if name == "morlet":
        w = torch.as_tensor(w, dtype=z.dtype, device=z.device)
        b_w = torch.exp(-(w ** 2) / 2.0)
        a_w = math.pi ** -0.25 * (1.0 + torch.exp(-(w ** 2)) - 2.0 * torch.exp(-0.75 * w ** 2)) ** -0.5
        return a_w * torch.exp(-z * z / 2.0) * (torch.sin(w * z) - b_w)
    raise ValueError(f"unknown activation '{name}' (choose from {', '.join(ACTIVATIONS)})")


class LayerFrequency(nn.Module):
    """The frequency omega of one layer's activation, for one of :data:`OMEGA_MODES`.

    ``forward(z)`` returns omega broadcastable against the pre-activation ``z`` ``(N, width)``:
    a scalar (``fixed``, ``trainable``), a ``(width,)`` row (``width``: ``omega - delta`` on the
    first unit to ``omega + delta`` on the last, 10..50 for the defaults) or an ``(N, 1)`` column
    (``attention``: ``omega + delta * tanh(a * mean_i |z_i| + b)``; ``a = b = 0`` at the start, so
    training starts from the plain SIREN and learns how to modulate). Dimensionless (omega
    multiplies pre-activations of normalised coordinates).
    """

    def __init__(self, mode: str, omega: float, delta: float, width: int):
        super().__init__()
        if mode not in OMEGA_MODES:
            raise ValueError(f"unknown omega mode '{mode}' (choose from {', '.join(OMEGA_MODES)})")
        self.mode = mode
        self.delta = float(delta)
        if mode == "trainable":
            self.omega = nn.Parameter(torch.tensor(float(omega)))
        elif mode == "width":
            self.register_buffer("omega", torch.linspace(omega - delta, omega + delta, width))
        else:
            self.register_buffer("omega", torch.tensor(float(omega)))
        if mode == "attention":
            self.a = nn.Parameter(torch.zeros(()))
            self.b = nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.mode != "attention":
            return self.omega
        return self.omega + self.delta * torch.tanh(self.a * z.abs().mean(-1, keepdim=True) + self.b)


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

    def forward(self, z: torch.Tensor, omega: torch.Tensor | None = None) -> torch.Tensor:
        """``sigma(z)``; ``omega`` (a tensor broadcasting against ``z``) replaces the constant one."""
        if omega is not None:
            return activation_value(self.name, z, omega, self.chirp_a)
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
    PyTorch's default ``U(-1/sqrt(n), 1/sqrt(n))`` as in the SIREN reference code. The first
    layer's frequency is omega too (``sin(omega (W x + b))``, SIREN's ``omega_0 = 30``).

    ``omega_mode`` (:data:`OMEGA_MODES`, periodic activations only) gives every hidden layer a
    :class:`LayerFrequency`; ``omega_delta`` is its spread (``width``) or modulation depth
    (``attention``); the SIREN initialisation then uses the central omega. ``zero_last``
    starts the last layer at exactly 0 (cascade stages that must start from the previous field).
    """

    def __init__(self, box: NormalisedBox, ndim: int, hidden_layers: int = 5, hidden_features: int = 256,
                 activation: str = "sine", omega: float = 30.0, fourier_frequencies: int = 0,
                 skip_connection: bool = True, chirp_a: float = 10.0, omega_mode: str = "fixed",
                 omega_delta: float = 20.0, zero_last: bool = False):
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
        if omega_mode != "fixed" and activation not in PERIODIC:
            raise ValueError(f"omega_mode '{omega_mode}' needs a periodic activation, not '{activation}'")
        self.frequencies = nn.ModuleList(
            [LayerFrequency(omega_mode, omega, omega_delta, hidden_features) for _ in range(hidden_layers)]
        ) if omega_mode != "fixed" else None
        self.out = nn.Linear(hidden_features, ndim)
        self._initialise(activation, omega)
        if zero_last:
            with torch.no_grad():
                self.out.weight.zero_()

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

    def features(self, points_mm: torch.Tensor) -> torch.Tensor:
        """The last hidden layer's activations at world points ``(..., d)`` (mm)."""
        x = self.encoding(self.box(points_mm))
        h = x
        for i, layer in enumerate(self.layers):
            if i == self.skip_at:
                h = torch.cat([h, x], dim=-1)
            z = layer(h)
            h = self.activation(z) if self.frequencies is None else self.activation(z, self.frequencies[i](z))
        return h

    def forward(self, points_mm: torch.Tensor) -> torch.Tensor:
        """Displacement (mm) at world points ``(..., d)`` (mm)."""
        return self.out(self.features(points_mm)) * self.box.scale

    def omega_parameters(self) -> list[nn.Parameter]:
        """The learned parameters of the omega control (trainable omega; attention a, b)."""
        return [] if self.frequencies is None else list(self.frequencies.parameters())
