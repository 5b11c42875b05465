"""One resolver of INR presets, shared by ``inrreg register``, the Nipype interface and the BIDS App.

:func:`resolve` turns a preset (a shipped name, a JSON file, or a settings object) and the
method / motion / omega / activation overrides into validated
:class:`~inrreg_pipeline.core.config.RegistrationSettings`. Reading a file and its ``"base"`` chain
is :func:`inrreg_pipeline.core.config.load_preset`'s job (a ``"base"`` that is a plain name is a
shipped preset, one ending in ``.json`` a file next to the inheriting one); this module adds the
rules for the overrides, in one place:

1. **No preset** (``None``): the method's own shipped preset: ``two-network-rigid`` for
   ``method="two-network"`` with ``motion="rigid"``, ``two-network-deformable`` for any other
   two-network run, ``default`` (the displacement SIREN) for ``siren``, a variant, or an omega or
   activation override without a method (what those options always meant), and ``svf`` otherwise,
   with no method named too: the diffeomorphic velocity INR is the most accurate INR preset on
   unseen subjects and the only one that does not fold (benchmarks/results/
   oasis-trt-20_validation_2mm_cpu.md), and its levels are in millimetres, so it holds its accuracy
   and its cost on 1 mm images (benchmarks/results/profile_1mm_cpu.md). A preset that is named is
   used as named: ``--preset default --method svf`` is refused, not replaced.
2. **two-network and svf** keep their settings in sections of their own (``two_network``,
   ``svf``), so ``method`` may only confirm them: the preset must already be of that method. (The
   CLI used to switch the method and run with the section's untuned defaults; like an
   ``antsRegistration`` stage, a method comes with its own parameters.)
3. **siren and the variants** (``joint-affine``, ``ensemble``, ``cascade``, ``cycle``, ``fusion``)
   replace the preset's ``method`` when the preset is a single-network INR preset (``siren`` or a
   variant); the variant's options come from the preset's ``"variants"``.
4. **omega** (``variants.omega_mode``) applies to siren and the variants; **activation**
   (``network.activation``) also to an ``svf`` preset whose velocity network is that MLP
   (``svf.network: siren``, as ``svf-siren``), not to one whose velocity is a hash grid; **motion**
   (``two_network.motion``) to two-network only. An override that the method would ignore is an
   error, never silently dropped.
5. The result is validated; every problem is a :class:`PresetError` (a ``ValueError``, one line).

The classical baselines (``ants-*``, ``antspyx-*``, ``greedy*``) are not INR presets: callers
dispatch them with :func:`inrreg_pipeline.baselines.is_baseline_preset` before calling
:func:`resolve` (``baselines`` imports :mod:`inrreg_pipeline.register`, which uses this module, so
this module does not import ``baselines``).
"""
from __future__ import annotations

import copy
from pathlib import Path

from .core.choices import VARIANT_METHODS
from .core.config import PRESET_DIR, RegistrationSettings, available_presets, load_preset, validate

#: Methods whose settings live in the shared ``network`` / ``optimisation`` sections.
SINGLE_NETWORK_METHODS = ("siren",) + VARIANT_METHODS
#: Methods with a settings section of their own -> the shipped presets that set them.
OWN_SECTION_METHODS = {"two-network": ("two-network-rigid", "two-network-deformable"), "svf": ("svf", "svf-siren")}
#: The overrides :func:`resolve` takes, in the order it applies them.
OVERRIDES = ("method", "motion", "omega", "activation")
#: The shipped preset ``inrreg-bids --sloppy`` runs (tests and quick looks only).
SLOPPY = "sloppy"

__all__ = ["PresetError", "resolve", "default_preset", "available_presets", "PRESET_DIR", "SLOPPY",
           "SINGLE_NETWORK_METHODS", "OWN_SECTION_METHODS", "OVERRIDES"]


class PresetError(ValueError):
    """A preset that cannot be resolved; one line.

    ``option`` is what is at fault: ``"preset"`` (an unknown name, a bad file or ``"base"``), an
    override (``"method"``, ``"motion"``, ``"omega"``, ``"activation"``) that the preset's method
    does not take, or ``None`` for settings that fail validation (the message names the key).
    :meth:`for_cli` prefixes an override's command-line option.
    """

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option

    def for_cli(self) -> str:
        """The message with the command-line option in front (``--omega 'width' applies to ...``)."""
        return f"--{self.option} {self}" if self.option in OVERRIDES else str(self)


def default_preset(method: str | None = None, motion: str | None = None, omega: str | None = None,
                   activation: str | None = None) -> str:
    """The shipped preset a run takes when no preset is named (rule 1 of the module)."""
    if method == "two-network":
        return "two-network-rigid" if motion == "rigid" else "two-network-deformable"
    if method in SINGLE_NETWORK_METHODS or (method is None and (omega is not None or activation is not None)):
        return "default"
    return "svf"


def resolve(preset: str | Path | RegistrationSettings | None = None, method: str | None = None,
            motion: str | None = None, omega: str | None = None, activation: str | None = None
            ) -> RegistrationSettings:
    """Validated settings of ``preset`` with the overrides applied (rules in the module docstring).

    ``preset``: a shipped name, a JSON file path, a :class:`RegistrationSettings` (copied, never
    changed) or ``None`` (:func:`default_preset`). ``method``: ``siren``, ``two-network``, ``svf``
    or a variant; ``motion``: ``rigid``, ``deformable``, ``affine-param``; ``omega``: an omega
    mode; ``activation``: an activation of the INR layers; ``None`` keeps the preset's.
    Raises :class:`PresetError`.
    """
    if preset is None:
        preset = default_preset(method, motion, omega, activation)
    if isinstance(preset, RegistrationSettings):
        settings = copy.deepcopy(preset)
    else:
        try:
            settings = load_preset(str(preset))
        except ValueError as err:
            raise PresetError(str(err), "preset") from None
    have = settings.method or "siren"
    label = f"preset '{settings.name}' is a '{have}' preset"
    if method is not None:
        if method in OWN_SECTION_METHODS or have in OWN_SECTION_METHODS:
            if method != have:
                shipped = ", ".join(OWN_SECTION_METHODS.get(method, ("default", "fast")))
                raise PresetError(f"'{method}' needs a preset that sets \"method\": \"{method}\" ({shipped}); "
                                  f"{label}", "method")
        elif method not in SINGLE_NETWORK_METHODS:
            raise PresetError(f"'{method}' is not a method (choose from "
                              f"{', '.join((*SINGLE_NETWORK_METHODS, *OWN_SECTION_METHODS))})", "method")
        settings.method = method
    if motion is not None and settings.method != "two-network":
        raise PresetError(f"'{motion}' applies to method two-network only; {label}", "motion")
    if omega is not None and settings.method not in SINGLE_NETWORK_METHODS:
        raise PresetError(f"'{omega}' applies to the single-network INR methods (siren and its variants); "
                          f"{label}", "omega")
    if activation is not None and settings.method not in SINGLE_NETWORK_METHODS + ("svf",):
        raise PresetError(f"'{activation}' applies to the INR methods (siren, its variants, svf); {label}",
                          "activation")
    if activation is not None and settings.method == "svf" and settings.svf.network != "siren":
        raise PresetError(f"'{activation}' sets the SIREN's activation, and preset '{settings.name}' gives the "
                          f"velocity by its svf.network '{settings.svf.network}' (preset svf-siren has the SIREN)",
                          "activation")
    if motion is not None:
        settings.two_network.motion = motion
    if omega is not None:
        settings.variants.omega_mode = omega
    if activation is not None:
        settings.network.activation = activation
    try:
        return validate(settings)
    except ValueError as err:
        raise PresetError(str(err)) from None
