"""The one optimisation loop that every method, the affine stage and every variant run through.

A method hands :func:`optimise` a *step* — a function of no arguments that draws its samples,
evaluates its model and returns its loss terms of this iteration — and an optimiser. The loop
owns what is the same for all of them: clearing gradients, back-propagating ``terms["total"]``,
the optimiser and schedule steps, the per-term loss history and progress reporting. Nothing in it
depends on what the model is (displacement, velocity, affine matrix or two networks).
"""
from __future__ import annotations

from typing import Callable, Iterable, Mapping

import numpy as np
import torch

from .config import OptimisationSettings

#: What one iteration returns: named loss terms (scalar tensors, ``"total"`` is back-propagated) and
#: optionally plain numbers to record beside them (e.g. the pyramid level).
StepTerms = Mapping[str, "torch.Tensor | float | int"]
Progress = Callable[[int, float], None]


def optimise(step: Callable[[], StepTerms], optimiser: torch.optim.Optimizer, iterations: int,
             history: dict[str, list[float]], schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
             before_step: Callable[[int], None] | None = None, progress: Progress | None = None) -> None:
    """Run ``iterations`` optimiser steps of ``step``'s ``"total"``; append every term to ``history``.

    ``before_step(i)`` runs before iteration ``i`` draws anything (coarse-to-fine weights, learning-rate
    ramps); ``schedule`` steps after each optimiser step; ``progress(1, total)`` after each iteration.
    Tensors are recorded as Python floats (detached), other values as given.
    """
    for i in range(iterations):
        if before_step is not None:
            before_step(i)
        terms = step()
        optimiser.zero_grad(set_to_none=True)
        terms["total"].backward()
        optimiser.step()
        if schedule is not None:
            schedule.step()
        for name, value in terms.items():
            history.setdefault(name, []).append(float(value.detach()) if isinstance(value, torch.Tensor) else value)
        if progress is not None:
            progress(1, history["total"][-1])


def make_optimiser(params: Iterable, settings: OptimisationSettings) -> torch.optim.Optimizer:
    """``settings.optimizer`` (adam or adamw) at ``settings.lr`` with its weight decay."""
    name = settings.optimizer.lower()
    if name == "adamw":
        return torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    raise ValueError(f"unknown optimizer '{settings.optimizer}' (choose adam or adamw)")


def make_schedule(optimiser: torch.optim.Optimizer, settings: OptimisationSettings
                  ) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``cosine``: decay from ``lr`` to ``lr * lr_final_fraction`` over the iterations; else none."""
    if settings.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=settings.iterations,
                                                          eta_min=settings.lr * settings.lr_final_fraction)
    return None


def level_iterations(total: int, levels: int) -> list[int]:
    """``total`` iterations split as evenly as possible over ``levels`` (later levels take the rest)."""
    base, rest = divmod(total, levels)
    return [base + (1 if i >= levels - rest else 0) for i in range(levels)]


def tail_mean(values: list[float], n: int = 20) -> float | None:
    """Mean of the last ``n`` recorded values (what ``registration.json`` reports as a final loss)."""
    return float(np.mean(values[-n:])) if values else None
