"""One entry point for every classical baseline preset: the tool is chosen by the preset's name."""
from __future__ import annotations

from pathlib import Path

from .ants import run_ants
from .fireants import run_fireants
from .greedy import run_greedy
from .presets import baseline_tool, is_baseline_preset

__all__ = ["run_baseline"]

#: The runner of each tool's presets (:data:`~inrreg_pipeline.baselines.presets.PRESET_TOOLS`).
RUNNERS = {"ants": run_ants, "greedy": run_greedy, "fireants": run_fireants}


def run_baseline(fixed: str, moving: str, prefix: str, preset: str, threads: int | None = None, seed: int = 0,
                 fixed_mask: str | None = None, moving_mask: str | None = None,
                 scale_iterations: float = 1.0) -> dict[str, Path]:
    """Run the baseline ``preset`` (a key of :data:`~inrreg_pipeline.baselines.presets.BASELINE_PRESETS`)
    with :func:`~inrreg_pipeline.baselines.ants.run_ants`'s arguments: greedy presets go to
    :func:`~inrreg_pipeline.baselines.greedy.run_greedy`, FireANTs presets to
    :func:`~inrreg_pipeline.baselines.fireants.run_fireants`, every other name to ``run_ants`` (which
    refuses an unknown one with ``InputError``). Returns the output paths by key."""
    runner = RUNNERS[baseline_tool(preset)] if is_baseline_preset(preset) else run_ants
    return runner(fixed, moving, prefix, preset=preset, threads=threads, seed=seed, fixed_mask=fixed_mask,
                  moving_mask=moving_mask, scale_iterations=scale_iterations)
