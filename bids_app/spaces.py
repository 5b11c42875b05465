"""``--output-spaces``: TemplateFlow space identifiers as fMRIPrep spells them (parsing only).

An identifier is ``<template>[:cohort-<N>][:res-<N>]``, e.g. ``MNI152NLin2009cAsym:res-2``:

* ``<template>``: a TemplateFlow template name (letters and digits, the ``tpl-<template>`` folder);
* ``res-<N>``: TemplateFlow's resolution *index* (``res-02`` in its file names), not millimetres:
  for the MNI152 templates ``res-1`` is 1 mm and ``res-2`` is 2 mm, and the voxel size comes from
  the file. Leading zeros are accepted (``res-02``);
* ``cohort-<N>``: the cohort of a template that has several (``MNIPediatricAsym:cohort-1``).

``T1w`` and ``anat`` (fMRIPrep's names of the participant's own anatomical space) are accepted
and change nothing: the T1w-space outputs are always written. One template per run.

Derivatives name the space as TemplateFlow and fMRIPrep do: images carry
``space-<template>[_cohort-<N>]_res-<N>``, transforms ``to-<template>[_cohort-<N>]`` (a transform does
not depend on the output resolution). The files themselves are looked up in
:mod:`.templates` (``templateflow_files``).
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import Optional, Sequence

#: fMRIPrep's names of the participant's own anatomical space: always written, nothing to look up
NATIVE_SPACES = ("T1w", "anat")
_NAME = re.compile(r"[A-Za-z0-9]+")
_MODIFIER = re.compile(r"(res|cohort)-(\d+)")


@dataclass(frozen=True)
class OutputSpace:
    """One TemplateFlow space: ``template``, ``resolution`` index (None: chosen from the files)
    and ``cohort`` (None: the template's files without a cohort)."""

    template: str
    resolution: Optional[int] = None
    cohort: Optional[int] = None

    @property
    def identifier(self) -> str:
        """``MNI152NLin2009cAsym:res-2`` (the spelling ``--output-spaces`` takes)."""
        mods = ([f"cohort-{self.cohort}"] if self.cohort is not None else []) + \
               ([f"res-{self.resolution}"] if self.resolution is not None else [])
        return ":".join([self.template, *mods])

    def with_resolution(self, resolution: int) -> "OutputSpace":
        return OutputSpace(self.template, int(resolution), self.cohort)

    @property
    def xfm_entities(self) -> str:
        """What follows ``to-<template>`` in transform names: ``_cohort-N`` or nothing."""
        return f"_cohort-{self.cohort}" if self.cohort is not None else ""

    @property
    def image_entities(self) -> str:
        """What follows ``space-<template>`` in image names: ``[_cohort-N]_res-N``."""
        return self.xfm_entities + (f"_res-{self.resolution}" if self.resolution is not None else "")


def parse_space(text: str) -> OutputSpace | str:
    """One ``--output-spaces`` entry: an :class:`OutputSpace`, or ``"T1w"``/``"anat"`` as given.

    Raises :class:`argparse.ArgumentTypeError` (exit 64 through the parser) for a name that is not
    letters and digits, an unknown or repeated modifier, or an index that is not a positive integer.
    """
    value = str(text).strip()
    if value in NATIVE_SPACES:
        return value
    name, *mods = value.split(":")
    if not _NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(f"'{value}' is not a TemplateFlow space (NAME[:cohort-N][:res-N], "
                                         f"e.g. MNI152NLin2009cAsym:res-2)")
    found: dict[str, int] = {}
    for mod in mods:
        match = _MODIFIER.fullmatch(mod)
        if not match:
            raise argparse.ArgumentTypeError(f"'{value}': unknown modifier '{mod}' (res-N or cohort-N, N an integer)")
        key, number = match.group(1), int(match.group(2))
        if key in found:
            raise argparse.ArgumentTypeError(f"'{value}': '{key}' given twice")
        if number < 1 and key == "res":
            raise argparse.ArgumentTypeError(f"'{value}': res-{match.group(2)} is not a resolution index (1, 2, ...)")
        found[key] = number
    return OutputSpace(name, found.get("res"), found.get("cohort"))


def template_space(entries: Optional[Sequence[OutputSpace | str]]) -> Optional[OutputSpace]:
    """The one template space among ``--output-spaces`` entries (None when only T1w/anat or none).

    Raises ValueError when more than one template is named (one template per run).
    """
    spaces = [e for e in (entries or []) if isinstance(e, OutputSpace)]
    if len(set(spaces)) > 1:
        raise ValueError("--output-spaces: one template space per run, got "
                         + ", ".join(s.identifier for s in dict.fromkeys(spaces)))
    return spaces[0] if spaces else None
