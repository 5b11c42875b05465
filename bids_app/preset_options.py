"""The presets of a run: ``--preset`` / ``--method`` of the T1w registrations, ``--multimodal-preset``
of the co-registrations, ``--compare-ants``, and what ``--sloppy`` puts in their place.

Every one is checked here through the resolver the CLI and the interface use
(:func:`inrreg_pipeline.interfaces.registration.inr_settings`, i.e.
:func:`inrreg_pipeline.presets.resolve`), so a bad name is exit 64 before the graph is built.
``--sloppy`` runs the shipped ``sloppy`` preset (and, for the co-registrations, a work-folder preset
with ``"base": "sloppy"`` and mutual information) and scales the ANTs iterations by
:data:`SLOPPY_ANTS_SCALE`.
"""
from __future__ import annotations

import json
from pathlib import Path

from inrreg_pipeline.interfaces import ANTS_PRESETS
from inrreg_pipeline.interfaces.registration import inr_settings
from inrreg_pipeline.presets import SLOPPY
from inrreg_pipeline.workflows import default_multimodal_preset

from .parser import EXIT_USAGE, AppError

#: ``--sloppy``: the ANTs baseline's iteration counts are multiplied by this (tests and quick looks only)
SLOPPY_ANTS_SCALE = 0.05
#: ``--sloppy`` co-registrations (another contrast to the T1w): the sloppy preset with mutual information
SLOPPY_MULTIMODAL = {"base": SLOPPY, "description": "inrreg-bids --sloppy co-registrations: the sloppy preset "
                                                    "with mutual information in both stages (tests only)",
                     "affine": {"similarity": "mi"},
                     "loss": {"similarity": "mi", "regulariser": "jacobian", "alpha": 0.1}}


def resolve_presets(opts, work_dir: Path) -> tuple[str | None, str]:
    """``(preset, multimodal_preset)`` of the run, both checked (``AppError``, exit 64, otherwise).

    ``preset`` ``None`` leaves the choice to the method (:func:`inrreg_pipeline.presets.default_preset`).
    """
    preset, mm_preset = opts.preset, opts.multimodal_preset
    if opts.sloppy:
        if preset is None and opts.method != "two-network":
            preset = SLOPPY
        if mm_preset is None:
            path = work_dir / "presets" / "sloppy_multimodal.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(SLOPPY_MULTIMODAL, indent=2))
            mm_preset = str(path)
    mm_preset = mm_preset or default_multimodal_preset()
    for name, (method, value) in {"--preset": (opts.method, preset),
                                  "--multimodal-preset": ("auto", mm_preset)}.items():
        try:
            inr_settings(method, value)
        except (ValueError, OSError) as err:
            raise AppError(f"{name}/--method: {err}", EXIT_USAGE) from None
    if opts.compare_ants and opts.compare_ants not in ANTS_PRESETS:
        raise AppError(f"--compare-ants: unknown baseline preset '{opts.compare_ants}' "
                       f"(choose from {', '.join(ANTS_PRESETS)})", EXIT_USAGE)
    return preset, mm_preset
