"""Classical baselines (antsRegistration through antspyx, greedy and FireANTs) with ``inrreg register``'s outputs.

One module an idea:

* :mod:`.presets`: the presets, read from ``presets/<name>.json`` (package data; each records its
  exact parameters and their source);
* :mod:`.ants`: antsRegistration's argument list and its run in a child process
  (:mod:`inrreg_pipeline._ants_child`, started with ``python -m``);
* :mod:`.greedy`: greedy's command lines and their run through its Python binding;
* :mod:`.fireants`: FireANTs' affine and greedy/SyN registrations through its Python API;
* :mod:`.arguments`: the checks and bookkeeping of threads, seed, iteration scaling and paths;
* :mod:`.outputs`: the file set and ``registration.json`` entries every baseline writes;
* :mod:`.run`: :func:`run_baseline`, the one entry point by preset name.

The names below are what the rest of inrreg (and its users) import from ``inrreg_pipeline.baselines``.
"""
from __future__ import annotations

from .ants import antsregistration_arguments, run_ants
from .arguments import scaled_iterations
from .fireants import run_fireants
from .greedy import greedy_commands, run_greedy
from .presets import (ANTS_PRESETS, BASELINE_PARAMETERS, BASELINE_PRESETS, FIREANTS_PRESETS, GREEDY_PRESETS,
                      baseline_tool, is_ants_preset, is_baseline_preset, is_fireants_preset, is_greedy_preset)
from .run import run_baseline

__all__ = ["ANTS_PRESETS", "GREEDY_PRESETS", "FIREANTS_PRESETS", "BASELINE_PRESETS", "BASELINE_PARAMETERS",
           "is_ants_preset", "is_greedy_preset", "is_fireants_preset", "is_baseline_preset", "baseline_tool",
           "antsregistration_arguments", "greedy_commands", "scaled_iterations", "run_ants", "run_greedy",
           "run_fireants", "run_baseline"]
