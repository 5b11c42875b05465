"""The classical baseline presets, read from the JSON files shipped beside this module (stdlib only).

Each preset is one file ``presets/<name>.json`` holding exactly the parameters the tool runs with
and where they come from (``description``, ``source``, ``notes``, and for the antspyx presets
the ``antspyx_arguments`` of the ``ants.registration`` call they replicate). The dict read from
the file is recorded verbatim as ``parameters`` in ``Pregistration.json``. ``presets/index.json``
names the presets of each tool (``ants``: antsRegistration through antspyx, ``greedy``:
picsl-greedy, ``fireants``: FireANTs) in the order they are listed to users.

Adding a baseline preset: write ``presets/<name>.json`` and add ``<name>`` to its tool's list in
``presets/index.json`` (``tests/test_baselines.py`` checks that the two agree).

The keys of an ANTs preset are documented in :mod:`inrreg_pipeline.baselines.ants`; those of a
greedy preset in :mod:`inrreg_pipeline.baselines.greedy`; those of a FireANTs preset in
:mod:`inrreg_pipeline.baselines.fireants`.
"""
from __future__ import annotations

import json
from importlib import resources
from typing import Any

__all__ = ["PRESET_TOOLS", "PRESETS_BY_TOOL", "ANTS_PRESETS", "GREEDY_PRESETS", "FIREANTS_PRESETS", "BASELINE_PRESETS",
           "BASELINE_PARAMETERS", "load_presets", "is_ants_preset", "is_greedy_preset", "is_fireants_preset",
           "is_baseline_preset", "baseline_tool"]

#: The folder of the preset files (a package resource, so installed copies find it too).
PRESET_FILES = resources.files(__package__) / "presets"

#: The tools whose presets ``presets/index.json`` lists.
PRESET_TOOLS: tuple[str, ...] = ("ants", "greedy", "fireants")


def _read_json(name: str) -> Any:
    try:
        return json.loads((PRESET_FILES / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:  # a broken installation, not a user error
        raise RuntimeError(f"baseline preset file {name} cannot be read ({err})") from None


def load_presets(tool: str) -> dict[str, dict[str, Any]]:
    """The presets of ``tool`` (one of :data:`PRESET_TOOLS`) by name, in ``index.json``'s order."""
    if tool not in PRESET_TOOLS:
        raise ValueError(f"unknown baseline tool '{tool}' (choose from {', '.join(PRESET_TOOLS)})")
    names = _read_json("index.json")[tool]
    return {name: _read_json(f"{name}.json") for name in names}


#: Every tool's presets by name (``presets/<name>.json``, recorded verbatim as ``parameters``), in
#: :data:`PRESET_TOOLS`' order.
PRESETS_BY_TOOL: dict[str, dict[str, dict[str, Any]]] = {tool: load_presets(tool) for tool in PRESET_TOOLS}

#: Named antsRegistration set-ups.
ANTS_PRESETS: dict[str, dict[str, Any]] = PRESETS_BY_TOOL["ants"]

#: Named greedy set-ups; ``deformable.smoothing: null`` keeps greedy's default ``-s 1.732vox 0.7071vox``.
GREEDY_PRESETS: dict[str, dict[str, Any]] = PRESETS_BY_TOOL["greedy"]

#: Named FireANTs set-ups.
FIREANTS_PRESETS: dict[str, dict[str, Any]] = PRESETS_BY_TOOL["fireants"]

#: Every classical baseline preset's parameters by name: ANTs (antsRegistration through antspyx), greedy, FireANTs.
BASELINE_PARAMETERS: dict[str, dict[str, Any]] = {name: preset for presets in PRESETS_BY_TOOL.values()
                                                  for name, preset in presets.items()}

#: Every classical baseline preset, in the order they are listed to users.
BASELINE_PRESETS: tuple[str, ...] = tuple(BASELINE_PARAMETERS)


def is_ants_preset(name: object) -> bool:
    """Whether ``name`` is one of :data:`ANTS_PRESETS`."""
    return isinstance(name, str) and name in ANTS_PRESETS


def is_greedy_preset(name: object) -> bool:
    """Whether ``name`` is one of :data:`GREEDY_PRESETS`."""
    return isinstance(name, str) and name in GREEDY_PRESETS


def is_fireants_preset(name: object) -> bool:
    """Whether ``name`` is one of :data:`FIREANTS_PRESETS`."""
    return isinstance(name, str) and name in FIREANTS_PRESETS


def is_baseline_preset(name: object) -> bool:
    """Whether ``name`` names a classical baseline (ANTs, greedy or FireANTs) rather than an INR preset."""
    return isinstance(name, str) and name in BASELINE_PARAMETERS


def baseline_tool(name: str) -> str:
    """The tool of a baseline preset (``ants``, ``greedy`` or ``fireants``: its ``method`` in
    ``Pregistration.json``); ``KeyError`` for a name that is not one."""
    for tool, presets in PRESETS_BY_TOOL.items():
        if name in presets:
            return tool
    raise KeyError(name)
