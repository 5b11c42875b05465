"""The protocol every registration method of the core implements.

A method is one module with one class behind this protocol (:mod:`.displacement` for the
displacement INR and its variants, :mod:`.svf` for the velocity INR, :mod:`.two_network` for the
two-network method). :func:`inrreg_pipeline.core.registration.register` runs any of them the same
way:

1. :func:`~.pair.prepare_pair` (seeding, intensities in [0, 1], sampling mask);
2. the affine stage (:mod:`.affine`), when :attr:`RegistrationMethod.uses_affine_stage`;
3. :meth:`RegistrationMethod.fit`: build the model and optimise it with the one loop
   :func:`~.engine.optimise` (the method supplies the loss terms of one step and its parameter groups);
4. :meth:`RegistrationMethod.fields`: the transform the model represents, as dense displacements
   on the fixed grid (``u`` forward, ``v`` inverse; from a displacement network directly, from a
   velocity by integration);
5. :func:`~.result.dense_outputs` and :func:`~.result.summarise`, the same for every method.

Adding a method means one module with a class like these and one preset (``method`` names it),
plus its entry in :data:`inrreg_pipeline.core.registration.METHODS`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from .config import RegistrationSettings
from .engine import Progress, tail_mean
from .pair import PreparedPair


@dataclass
class Fit:
    """What a method's optimisation produced.

    ``model``: the fitted module (``result.model``); ``history``: per-iteration loss terms;
    ``affine``: the global part when the method finds it itself (two-network: from its motion),
    else None (the affine stage's matrix is used); ``affine_seconds``: the time that took;
    ``summary``: what the fit learned, for ``registration.json``.
    """

    model: torch.nn.Module
    history: dict[str, list[float]]
    affine: np.ndarray | None = None
    affine_seconds: float = 0.0
    summary: dict = field(default_factory=dict)


@dataclass
class Fields:
    """The transform a fitted model represents, on the fixed grid, and what is particular to the method.

    ``u``: ``(*fixed.shape, d)`` mm with ``phi(x) = A(x + u(x))``; ``v``: the inverse field on the
    fixed grid (``phi^-1(y) = z + v(z)``, ``z = A^-1 y``); ``extras``: extra arrays (e.g. fusion
    weights on the moving grid); ``summary``: method entries merged into ``registration.json``.
    """

    u: np.ndarray
    v: np.ndarray
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


class RegistrationMethod(Protocol):
    """One registration method (see the module docstring)."""

    #: label of its optimisation stage in progress displays
    stage: str
    #: whether the core's affine stage runs before :meth:`fit`
    uses_affine_stage: bool

    def iterations(self, settings: RegistrationSettings) -> int:
        """Optimiser steps :meth:`fit` will take (progress bars)."""

    def fit(self, pair: PreparedPair, affine: np.ndarray, settings: RegistrationSettings, use_affine: bool,
            progress: Progress | None) -> Fit:
        """Build the model and optimise it (``affine``: the affine stage's fixed -> moving RAS matrix)."""

    def fields(self, fit: Fit, pair: PreparedPair, affine: np.ndarray, settings: RegistrationSettings) -> Fields:
        """Dense forward and inverse displacements on the fixed grid, and the method's extras."""

    def loss_summary(self, history: dict[str, list[float]]) -> dict:
        """The ``loss`` entries of ``registration.json`` besides ``affine_final``."""


def similarity_and_regulariser(history: dict[str, list[float]]) -> dict:
    """``loss_summary`` of a method whose steps record ``similarity`` and ``regulariser`` terms: each
    term's mean over the last 20 iterations."""
    return {"similarity_final": tail_mean(history["similarity"]),
            "regulariser_final": tail_mean(history["regulariser"])}
