"""Registration interfaces: inrreg's INR registration and the ANTs (antspyx) baseline.

Both have the outputs of ``nipype.interfaces.ants.Registration`` (with
``collapse_output_transforms=True``), so either can replace an ``ants.Registration`` node in a graph
without changing the connections downstream of it; their inputs also use ANTs' names
(``fixed_image``, ``moving_image``, ``fixed_image_mask``, ``moving_image_mask``, ``num_threads``,
``random_seed``, ``output_transform_prefix``), so the upstream connections carry over as well.

>>> from inrreg_pipeline.interfaces import INRRegistration
>>> reg = INRRegistration(preset="fast", use_gpu=True)       # doctest: +SKIP
>>> reg.inputs.fixed_image = "fixed.nii.gz"                  # doctest: +SKIP
"""
from __future__ import annotations

import json
import tempfile

import torch
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..baselines import BASELINE_PRESETS, run_baseline
from ..core.choices import VARIANT_METHODS
from ..core.config import RegistrationSettings
from ..core.svf import level_lncc_windows, level_mind_alphas
from ..io.images import InputError
from ..presets import PresetError, available_presets, resolve
from ..register import register_files
from .base import fail, optional, output_path, registration_outputs, resolve_device_for_node, single_file

#: Interface method -> ``variants.omega_mode`` of the preset.
OMEGA_METHODS = {"trainable-omega": "trainable", "width-omega": "width", "attention-omega": "attention"}
#: Interface method -> ``network.activation`` (``siren`` is the sine activation).
ACTIVATION_METHODS = {"siren": "sine", "relu": "relu", "snake": "snake", "sine+": "sine+", "chirp": "chirp",
                      "morlet": "morlet"}
#: ``method`` values of :class:`INRRegistration`: ``auto`` (what the preset says), ``siren``
#: (sine activation), ``two-network``, ``svf``, the other activations of the deformation MLP, the
#: omega controls of the INR (:data:`OMEGA_METHODS`) and the INR variants (``VARIANT_METHODS``).
INR_METHODS = ("auto", "siren", "two-network", "svf", *list(ACTIVATION_METHODS)[1:], *OMEGA_METHODS,
               *VARIANT_METHODS)
#: The classical baseline presets (``inrreg_pipeline.baselines.BASELINE_PRESETS``: antsRegistration through
#: antspyx, then greedy), the values of :class:`ANTsRegistration`'s ``preset``.
ANTS_PRESETS = tuple(BASELINE_PRESETS)


class _RegistrationInputSpecBase(BaseInterfaceInputSpec):
    fixed_image = InputMultiObject(
        File(exists=True), mandatory=True,
        desc="fixed (reference) image; one file (a one-element list, as ants.Registration takes, works)")
    moving_image = InputMultiObject(
        File(exists=True), mandatory=True, desc="moving image, registered to the fixed image")
    fixed_image_mask = File(exists=True, desc="mask on the fixed image's grid (similarity and sampling region)")
    moving_image_mask = File(exists=True, desc="mask on the moving image's grid")
    random_seed = traits.Int(0, usedefault=True, desc="random seed (same seed, same result on the CPU)")
    num_threads = traits.Int(1, usedefault=True, desc="CPU threads (also the node's n_procs)")
    output_transform_prefix = traits.Str(
        "transform", usedefault=True, desc="prefix of the output files, inside the node directory")


class RegistrationOutputSpec(TraitedSpec):
    forward_transforms = traits.List(
        File(exists=True), desc="[affine, warp] in stage order, as ants.Registration lists them")
    forward_invert_flags = traits.List(traits.Bool(), desc="flags of forward_transforms ([False, False])")
    reverse_forward_transforms = traits.List(
        File(exists=True), desc="[warp, affine]: forward_transforms in antsApplyTransforms order")
    reverse_forward_invert_flags = traits.List(traits.Bool(), desc="flags of reverse_forward_transforms")
    reverse_transforms = traits.List(
        File(exists=True), desc="[affine, inverse warp]: fixed image onto the moving grid")
    reverse_invert_flags = traits.List(traits.Bool(), desc="flags of reverse_transforms ([True, False])")
    composite_transform = File(exists=True, desc="ITK HDF5 composite, fixed -> moving points (Composite.h5)")
    inverse_composite_transform = File(exists=True, desc="its inverse (InverseComposite.h5)")
    warped_image = File(exists=True, desc="moving image on the fixed grid")
    inverse_warped_image = File(exists=True, desc="fixed image on the moving grid")
    jacobian = File(exists=True, desc="det(I + du/dx) of the deformable part, on the fixed grid")
    metadata = File(exists=True, desc="JSON: settings, seed, device, versions, runtime, quality summary")
    elapsed_time = traits.Float(desc="registration wall time in seconds")
    metric_value = traits.Float(desc="final similarity loss (lower is better), when reported")
    device = traits.Str(desc="device the registration ran on")
    fusion_weights = File(exists=True, desc="fusion variant only: its weight map (RGB NIfTI, moving grid; "
                                            "red moving, green Laplacian, blue Gaussian)")
    fusion_weights_figure = File(exists=True, desc="fusion variant only: PNG of the weight map's mid slices")


def _read_json(path) -> dict:
    try:
        return json.loads(open(path).read())
    except (OSError, ValueError):
        return {}


def inr_settings(method: str = "auto", preset: str | None = None) -> RegistrationSettings:
    """The settings :class:`INRRegistration` runs with for its ``method`` and ``preset`` inputs.

    The interface's one ``method`` input carries what the command line splits into ``--method``,
    ``--activation`` and ``--omega``: ``auto`` keeps the preset's settings; ``two-network``,
    ``svf`` and the variants are the method; ``siren`` (sine), ``relu``, ... the activation; the
    ``*-omega`` values the omega control. Everything else is
    :func:`inrreg_pipeline.presets.resolve` (``preset`` ``None``: the method's own preset; a
    method of another settings layout than the preset's is refused). A problem is an
    :class:`~inrreg_pipeline.interfaces.base.InterfaceInputError` naming ``method`` or ``preset``.
    """
    if method not in INR_METHODS:
        raise fail("method", f"unknown method '{method}' (choose from {', '.join(INR_METHODS)})")
    overrides: dict[str, str] = {}
    if method in OMEGA_METHODS:
        overrides["omega"] = OMEGA_METHODS[method]
    elif method in ACTIVATION_METHODS:
        overrides["activation"] = ACTIVATION_METHODS[method]
    elif method != "auto":
        overrides["method"] = method
    try:
        return resolve(preset, **overrides)
    except PresetError as err:
        if err.option == "preset" or (err.option is None and not overrides):
            raise fail("preset", str(err)) from None
        message = str(err)
        if err.option in ("omega", "activation"):  # name the value as this interface takes it
            message = f"'{method}'" + message[len(overrides[err.option]) + 2:]
        raise fail("method", message) from None


def available_inr_presets() -> list[str]:
    """Names of the presets shipped with inrreg (``inrreg_pipeline.core.config.available_presets``)."""
    return available_presets()


def describe_inr(method: str = "auto", preset: str | None = None) -> dict:
    """Plain values of the settings a method/preset pair runs with (for citation boilerplate).

    Keys whose section a preset does not have (another method's settings layout) are left out.
    """
    s = inr_settings(method, preset)

    def get(path: str):
        value = s
        for part in path.split("."):
            value = getattr(value, part, None)
            if value is None:
                return None
        return list(value) if isinstance(value, (list, tuple)) else value

    keys = {"hidden_layers": "network.hidden_layers", "hidden_features": "network.hidden_features",
            "activation": "network.activation", "omega": "network.omega",
            "iterations": "optimisation.iterations", "patches": "optimisation.patches",
            "patch_size": "optimisation.patch_size", "lr": "optimisation.lr",
            "optimizer": "optimisation.optimizer", "similarity": "loss.similarity",
            "regulariser": "loss.regulariser", "alpha": "loss.alpha", "affine": "affine.enabled",
            "affine_similarity": "affine.similarity", "affine_iterations": "affine.iterations",
            "shrink_factors": "affine.shrink_factors", "inverse_iterations": "inverse_iterations"}
    out = {"preset": s.name, "method": getattr(s, "method", "siren") or "siren"}
    if out["method"] == "svf":
        keys.update({"control_spacing_mm": "svf.control_spacing_mm", "squaring_steps": "svf.squaring_steps",
                     "svf_shrink_factors": "svf.shrink_factors", "svf_level_spacing_mm": "svf.level_spacing_mm",
                     "svf_iterations": "svf.iterations", "svf_network": "svf.network",
                     "velocity_smoothing_mm": "svf.velocity_smoothing_mm",
                     "svf_level_control_spacing_mm": "svf.level_control_spacing_mm",
                     "svf_diffusion_alpha": "svf.diffusion_alpha", "svf_folding_alpha": "svf.folding_alpha",
                     "svf_folding_floor": "svf.folding_floor"})
        if get("svf.network") == "hash-grid":
            keys.update({"hash_levels": "svf.hash.levels", "hash_finest_mm": "svf.hash.finest_mm",
                         "hash_base_resolution": "svf.hash.base_resolution",
                         "hash_coarse_to_fine_steps": "svf.hash.coarse_to_fine_steps",
                         "hidden_layers": "svf.hash.hidden_layers", "hidden_features": "svf.hash.hidden_features",
                         "hash_hidden_bias": "svf.hash.hidden_bias",
                         "svf_level_frozen_hash_levels": "svf.level_frozen_hash_levels"})
    if out["method"] == "two-network":
        keys = {"motion": "two_network.motion", "hidden_layers": "two_network.hidden_layers",
                "hidden_features": "two_network.hidden_features", "iterations": "two_network.iterations",
                "points": "two_network.points", "lr": "two_network.lr", "motion_lr": "two_network.motion_lr",
                "multimodal": "two_network.multimodal", "hash_levels": "two_network.image_hash.levels",
                "motion_hash_levels": "two_network.motion_hash.levels"}
    out.update({key: get(path) for key, path in keys.items() if get(path) is not None})
    if out["method"] == "svf" and "lncc" in str(out.get("similarity", "")):
        out["svf_lncc_window_mm"] = level_lncc_windows(s.svf)  # the LNCC window at each level, mm
    mind_alphas = level_mind_alphas(s.svf) if out["method"] == "svf" else []
    if any(w > 0 for w in mind_alphas):
        out["svf_mind_alpha"] = mind_alphas  # the MIND-SSC weight at each level
        out["svf_mind_distance_mm"] = s.svf.mind_distance_mm
    return out


class INRRegistrationInputSpec(_RegistrationInputSpecBase):
    method = traits.Enum(
        *INR_METHODS, usedefault=True,
        desc="'auto': as the preset says; 'siren' (sine activation) or another activation "
             "(relu, snake, sine+, chirp, morlet) of the deformation MLP; 'two-network' (presets "
             "two-network-rigid / two-network-deformable); the omega controls 'trainable-omega', "
             "'width-omega', 'attention-omega'; the INR variants 'joint-affine', 'ensemble', 'cascade', "
             "'cycle', 'fusion' (options from the preset's \"variants\"; e.g. "
             "benchmarks/presets/fast-cascade.json of the repository)")
    preset = traits.Str(
        desc="shipped preset name (see inrreg_pipeline.core.config.available_presets()) or a JSON file; "
             "default: 'svf'; 'default' (the displacement SIREN) for method='siren', a variant, an activation or "
             "an omega control; 'two-network-deformable' for method='two-network'")
    device = traits.Str("auto", usedefault=True, desc="auto, cpu, cuda or cuda:N")
    use_gpu = traits.Bool(
        False, usedefault=True,
        desc="a GPU node for Nipype's MultiProc (takes n_procs GPU slots); with device='auto' it asks "
             "for CUDA and falls back to the CPU when none is visible")
    use_affine = traits.Bool(True, usedefault=True, desc="run the affine stage before the INR")


def checked_pair_inputs(inputs) -> tuple[str, str]:
    """``(fixed, moving)`` paths of a registration interface's inputs (one file each), with
    ``num_threads >= 1``; a one-line interface error otherwise."""
    fixed = single_file(inputs.fixed_image, "fixed_image")
    moving = single_file(inputs.moving_image, "moving_image")
    if inputs.num_threads < 1:
        raise fail("num_threads", f"must be >= 1, got {inputs.num_threads}")
    return fixed, moving


class INRRegistration(SimpleInterface):
    """Register ``moving_image`` to ``fixed_image`` with an untrained implicit neural representation.

    Runs :func:`inrreg_pipeline.register.register_files` in the node directory; outputs are named
    as ``nipype.interfaces.ants.Registration`` names them, plus ``jacobian`` and ``metadata``.
    """

    input_spec = INRRegistrationInputSpec
    output_spec = RegistrationOutputSpec

    def _run_interface(self, runtime):
        fixed, moving = checked_pair_inputs(self.inputs)
        settings = inr_settings(self.inputs.method, optional(self.inputs.preset))
        device, note = resolve_device_for_node(self.inputs.device, self.inputs.use_gpu)
        prefix = output_path(runtime.cwd, self.inputs.output_transform_prefix)
        threads_before = torch.get_num_threads()
        try:
            paths = register_files(
                fixed, moving, prefix, preset=settings, device=device, seed=self.inputs.random_seed,
                fixed_mask=optional(self.inputs.fixed_image_mask),
                moving_mask=optional(self.inputs.moving_image_mask),
                use_affine=self.inputs.use_affine, threads=self.inputs.num_threads, progress=False)
        except InputError as err:  # its messages name the role ("fixed image '...' ...")
            raise fail(_role_to_input(str(err)), str(err)) from None
        finally:
            torch.set_num_threads(threads_before)
        metadata = _read_json(paths["metadata"])
        if note:
            metadata["nipype_note"] = note
            with open(paths["metadata"], "w") as fh:
                json.dump(metadata, fh, indent=2)
            runtime.stderr = (getattr(runtime, "stderr", "") or "") + note + "\n"
        self._results.update(registration_outputs(paths, metadata))
        self._results["device"] = str(metadata.get("device", device))
        if "fusion_weights" in paths:
            self._results["fusion_weights"] = str(paths["fusion_weights"])
            self._results["fusion_weights_figure"] = str(paths["fusion_weights_png"])
        return runtime


def _role_to_input(message: str) -> str:
    """Which input an error of ``register_files`` is about (its messages name roles)."""
    lowered = message.lower()
    for role, name in (("fixed mask", "fixed_image_mask"), ("moving mask", "moving_image_mask"),
                       ("fixed image", "fixed_image"), ("moving image", "moving_image"),
                       ("preset", "preset"), ("unknown preset", "preset"), ("device", "device"),
                       ("unknown device", "device"), ("--threads", "num_threads"), ("threads", "num_threads"),
                       ("seed", "random_seed"), ("scale_iterations", "scale_iterations"),
                       ("output", "output_transform_prefix"), ("cannot write", "output_transform_prefix")):
        if lowered.startswith(role):
            return name
    return "inputs"


class ANTsRegistrationInputSpec(_RegistrationInputSpecBase):
    preset = traits.Enum(*ANTS_PRESETS, usedefault=True,
                         desc="named baseline preset (antsRegistration through antspyx, or greedy)")
    scale_iterations = traits.Range(
        low=0.0, value=1.0, exclude_low=True, usedefault=True,
        desc="multiply every stage's iteration count (1.0: the preset; small values for sloppy/test runs)")


class ANTsRegistration(SimpleInterface):
    """A classical baseline (ANTs through antspyx, or greedy; :func:`inrreg_pipeline.baselines.run_baseline`),
    same outputs as :class:`INRRegistration`."""

    input_spec = ANTsRegistrationInputSpec
    output_spec = RegistrationOutputSpec

    def _run_interface(self, runtime):
        fixed, moving = checked_pair_inputs(self.inputs)
        prefix = output_path(runtime.cwd, self.inputs.output_transform_prefix)
        previous_tempdir = tempfile.tempdir
        tempfile.tempdir = runtime.cwd  # run_ants' scratch folder inside the node directory (removed after)
        try:
            paths = run_baseline(fixed, moving, prefix, preset=self.inputs.preset, threads=self.inputs.num_threads,
                                 seed=self.inputs.random_seed, fixed_mask=optional(self.inputs.fixed_image_mask),
                                 moving_mask=optional(self.inputs.moving_image_mask),
                                 scale_iterations=float(self.inputs.scale_iterations))
        except InputError as err:
            raise fail(_role_to_input(str(err)), str(err)) from None
        finally:
            tempfile.tempdir = previous_tempdir
        missing = [k for k in ("affine", "warp", "inverse_warp", "composite", "inverse_composite", "warped",
                               "inverse_warped", "jacobian", "metadata") if k not in paths]
        if missing:
            raise RuntimeError(f"run_baseline returned no {', '.join(missing)}")
        metadata = _read_json(paths["metadata"])
        self._results.update(registration_outputs(paths, metadata))
        self._results["device"] = "cpu"
        return runtime


__all__ = ["INRRegistration", "ANTsRegistration", "INR_METHODS", "ANTS_PRESETS", "inr_settings",
           "describe_inr", "available_inr_presets"]
