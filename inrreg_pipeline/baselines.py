"""ANTs baselines: real ``antsRegistration`` (the copy bundled with antspyx) with ``inrreg register``'s outputs.

:func:`run_ants` runs one of :data:`ANTS_PRESETS` on two image files and writes, for prefix ``P``,
exactly the files of :func:`inrreg_pipeline.register.register_files` (same keys,
:data:`~inrreg_pipeline.register.OUTPUT_SUFFIXES`), all together or none:

=========================  ===================================================================
``P0GenericAffine.mat``    the linear part as ANTs wrote it (``--collapse-output-transforms 1``
                           gives one; several would be composed into one ITK affine)
``P1Warp.nii.gz``          ANTs' forward warp, byte for byte; ``P1InverseWarp.nii.gz`` its inverse
``PComposite.h5``          affine + warp as one ITK HDF5 composite; ``PInverseComposite.h5`` the inverse
``PWarped.nii.gz``         ANTs' warped moving image (float32); ``PInverseWarped.nii.gz`` fixed on moving grid
``Pjacobian.nii.gz``       ``det(I + du/dx)`` of ``P1Warp`` on the fixed grid
``Pregistration.json``     preset name and parameters (verbatim), the antsRegistration arguments,
                           seed, threads, versions, runtime, peak memory, folding, affine
=========================  ===================================================================

How it runs
-----------
The inputs are validated with :func:`~inrreg_pipeline.io.images.load_image` (bad input ->
:class:`~inrreg_pipeline.io.images.InputError`), re-written as float32 NIfTI (qform = sform, so ANTs
reads the grid inrreg reads) into a private temporary folder, and the antsRegistration argument list
built by :func:`antsregistration_arguments` is passed to antspyx's bundled ``antsRegistration``
library function in a child Python process.  The child process makes the thread count exact
(``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` is read once per process by ITK, so it cannot be changed
after ITK has started in this one), lets ``peak_rss_mb`` be that of the registration alone (the
child's ``VmHWM``), and keeps a crash inside ANTs from taking the caller down.

Seeds: ANTs ignores ``--random-seed 0`` (0 means "do not reseed"), so ``seed`` ``s`` is passed as
``--random-seed s+1``; with one thread the result is then reproducible run to run.

Preset dictionaries (:data:`ANTS_PRESETS`) are recorded verbatim in the metadata.  Global keys:
``float``, ``collapse_output_transforms``, ``write_composite_transform``,
``initialize_transforms_per_stage``, ``interpolation``, ``winsorize_image_intensities``
(``[lower, upper]``), ``use_histogram_matching`` (one bool for all stages, or one per stage),
``initial_moving_transform`` (``"center_of_mass"``: ``[fixed,moving,1]``) and ``masks``
(``"all_stages"``: one ``--masks`` when a mask is given; ``"last_stage"``: antspyx's layout, one
``--masks`` per stage, ``[NA,NA]`` before the last).  A value of ``None`` means "not passed" (ANTs'
own default applies).  Each entry of ``stages`` gives ``transform``/``transform_parameters``, the
metric (``metric``, ``metric_weight``, ``radius_or_number_of_bins``, ``sampling_strategy``,
``sampling_percentage``), ``iterations``, ``convergence_threshold``, ``convergence_window_size``,
``shrink_factors``, ``smoothing_sigmas`` and ``sigma_units``.
"""
from __future__ import annotations

import copy
import importlib.metadata
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from .baseline_outputs import baseline_metadata, check_baseline_arguments, substitute_paths, write_baseline_outputs, write_inputs
from .core.choices import SEED_MAX
from .greedy import GREEDY_PRESETS, is_greedy_preset, run_greedy
from .io.images import InputError, StagedOutputs, load_pair, staging_prefix
from .io.itk import read_itk_affine, write_itk_affine
from .register import OUTPUT_SUFFIXES, check_prefix_outputs, library_versions, recorded_inputs

__all__ = ["ANTS_PRESETS", "BASELINE_PRESETS", "is_ants_preset", "is_baseline_preset", "antsregistration_arguments",
           "scaled_iterations", "run_ants", "run_baseline"]


def _linear_stage(transform: str, step: float, metric: str, bins: int, strategy: str, percentage: float,
                  iterations: list[int], threshold: float | None, window: int | None, shrink: list[int],
                  sigmas: list[float], units: str | None) -> dict[str, Any]:
    return {"transform": transform, "transform_parameters": [step], "metric": metric, "metric_weight": 1,
            "radius_or_number_of_bins": bins, "sampling_strategy": strategy, "sampling_percentage": percentage,
            "iterations": iterations, "convergence_threshold": threshold, "convergence_window_size": window,
            "shrink_factors": shrink, "smoothing_sigmas": sigmas, "sigma_units": units}


#: Named antsRegistration set-ups.  Recorded verbatim as ``parameters`` in ``Pregistration.json``.
ANTS_PRESETS: dict[str, dict[str, Any]] = {
    "ants-syn": {
        "description": "antspyx ants.registration(fixed, moving, type_of_transform='SyN') with its defaults: "
                       "centre-of-mass initialisation, one Affine stage (Mattes MI), SyN with Mattes MI",
        "source": "antspyx 0.6.3, ants/registration/registration.py, branch type_of_transform == 'SyN' "
                  "(argument for argument, files instead of in-memory image pointers)",
        "antspyx_arguments": {"type_of_transform": "SyN", "grad_step": 0.2, "flow_sigma": 3, "total_sigma": 0,
                              "aff_metric": "mattes", "aff_sampling": 32, "aff_random_sampling_rate": 0.2,
                              "syn_metric": "mattes", "syn_sampling": 32, "reg_iterations": [40, 20, 0],
                              "mask_all_stages": False, "singleprecision": True,
                              "use_legacy_histogram_matching": False, "write_composite_transform": False},
        "notes": "antspyx hard-codes the affine stage of 'SyN' (2100x1200x1200x0, shrink 4x2x2x1, sigmas 3x2x1x0); "
                 "its aff_iterations/aff_shrink_factors/aff_smoothing_sigmas arguments do not apply. SyN shrink "
                 "factors 2**k and sigmas k follow from len(reg_iterations). Masks act on the SyN stage only "
                 "(mask_all_stages=False).",
        "float": True,
        "collapse_output_transforms": True,
        "write_composite_transform": False,
        "initialize_transforms_per_stage": None,
        "initial_moving_transform": "center_of_mass",
        "interpolation": None,
        "winsorize_image_intensities": None,
        "use_histogram_matching": False,
        "masks": "last_stage",
        "stages": [
            _linear_stage("Affine", 0.25, "mattes", 32, "regular", 0.2, [2100, 1200, 1200, 0], None, None,
                          [4, 2, 2, 1], [3, 2, 1, 0], None),
            {"transform": "SyN", "transform_parameters": [0.2, 3.0, 0.0], "metric": "mattes", "metric_weight": 1,
             "radius_or_number_of_bins": 32, "sampling_strategy": None, "sampling_percentage": None,
             "iterations": [40, 20, 0], "convergence_threshold": 1e-7, "convergence_window_size": 8,
             "shrink_factors": [4, 2, 1], "smoothing_sigmas": [2, 1, 0], "sigma_units": None},
        ],
    },
    "ants-syn-cc": {
        "description": "antsRegistrationSyN.sh -t s: Rigid + Affine (Mattes MI) + SyN[0.1,3,0] with CC radius 4",
        "source": "ANTs Scripts/antsRegistrationSyN.sh -d D -f F -m M -t s with its defaults (-r 4 CC radius, "
                  "-p d double precision, -j 0 no histogram matching, SyN gradient step 0.1; the level "
                  "schedule for images of at most 256 voxels per axis)",
        "notes": "antspyx's type_of_transform='antsRegistrationSyN[s]' is not used: in antspyx 0.6.3 it passes "
                 "SyN[0.2,3,0] with CC radius 2, no winsorizing and no --use-histogram-matching, unlike the "
                 "script. The script switches to shrink 12x8x4x2 / SyN 10x6x4x2x1 for images over 256 voxels "
                 "along an axis; this preset keeps the schedule below.",
        "float": False,
        "collapse_output_transforms": True,
        "write_composite_transform": False,
        "initialize_transforms_per_stage": None,
        "initial_moving_transform": "center_of_mass",
        "interpolation": "Linear",
        "winsorize_image_intensities": [0.005, 0.995],
        "use_histogram_matching": False,
        "masks": "all_stages",
        "stages": [
            _linear_stage("Rigid", 0.1, "MI", 32, "Regular", 0.25, [1000, 500, 250, 100], 1e-6, 10,
                          [8, 4, 2, 1], [3, 2, 1, 0], "vox"),
            _linear_stage("Affine", 0.1, "MI", 32, "Regular", 0.25, [1000, 500, 250, 100], 1e-6, 10,
                          [8, 4, 2, 1], [3, 2, 1, 0], "vox"),
            {"transform": "SyN", "transform_parameters": [0.1, 3, 0], "metric": "CC", "metric_weight": 1,
             "radius_or_number_of_bins": 4, "sampling_strategy": None, "sampling_percentage": None,
             "iterations": [100, 70, 50, 20], "convergence_threshold": 1e-6, "convergence_window_size": 10,
             "shrink_factors": [8, 4, 2, 1], "smoothing_sigmas": [3, 2, 1, 0], "sigma_units": "vox"},
        ],
    },
    "ants-precise": {
        "description": "niworkflows/fMRIPrep T1w-to-template 'precise' settings: Rigid + Affine (Mattes MI, 56 bins) "
                       "+ SyN[0.1,3,0] with CC radius 4, histogram matching, winsorizing",
        "source": "nipreps/niworkflows niworkflows/data/t1w-mni_registration_precise_000.json (commit 52ae8eaa), "
                  "as nipype's ants.Registration turns it into an antsRegistration command",
        "notes": "niworkflows initialises with antsAffineInitializer; here the initial moving transform is the "
                 "centre-of-mass one ([fixed,moving,1]). niworkflows writes a composite transform; here "
                 "inrreg writes PComposite.h5 from the collapsed transforms. The JSON's "
                 "use_estimate_learning_rate_once is obsolete (ignored by ANTs >= 2.2) and not passed.",
        "float": True,
        "collapse_output_transforms": True,
        "write_composite_transform": False,
        "initialize_transforms_per_stage": False,
        "initial_moving_transform": "center_of_mass",
        "interpolation": "LanczosWindowedSinc",
        "winsorize_image_intensities": [0.005, 0.995],
        "use_histogram_matching": [True, True, True],
        "masks": "all_stages",
        "stages": [
            _linear_stage("Rigid", 0.05, "Mattes", 56, "Regular", 0.25, [100, 100], 1e-6, 20, [2, 1], [2, 1], "vox"),
            _linear_stage("Affine", 0.08, "Mattes", 56, "Regular", 0.25, [100, 100], 1e-6, 20, [2, 1], [1, 0], "vox"),
            {"transform": "SyN", "transform_parameters": [0.1, 3.0, 0.0], "metric": "CC", "metric_weight": 1,
             "radius_or_number_of_bins": 4, "sampling_strategy": "None", "sampling_percentage": 1.0,
             "iterations": [100, 70, 50, 20], "convergence_threshold": 1e-6, "convergence_window_size": 10,
             "shrink_factors": [8, 4, 2, 1], "smoothing_sigmas": [3, 2, 1, 0], "sigma_units": "vox"},
        ],
    },
}

def _antspyx_syn_preset(quick: bool) -> dict[str, Any]:
    """antspyx 0.6.3's ``type_of_transform='antsRegistrationSyN[s]'`` (``quick``: ``...SyNQuick[s]``)."""
    name = "antsRegistrationSyNQuick[s]" if quick else "antsRegistrationSyN[s]"
    linear_iterations = [1000, 500, 250, 0] if quick else [1000, 500, 250, 100]
    syn_metric = ("MI", 32) if quick else ("CC", 2)
    return {
        "description": f"antspyx ants.registration(fixed, moving, type_of_transform='{name}') with its defaults: "
                       f"Rigid + Affine (MI, 32 bins, 25 % regular sampling) + SyN[0.2,3,0] with "
                       f"{syn_metric[0]} {'32 bins' if quick else 'radius 2'}, shrink 8x4x2x1, sigmas 3x2x1x0 vox",
        "source": "antspyx 0.6.3, ants/registration/registration.py, branch 'antsRegistrationSyN' in "
                  f"type_of_transform (do_quick={quick}, subtype 's'), argument for argument",
        "antspyx_arguments": {"type_of_transform": name, "mask_all_stages": False, "singleprecision": True,
                              "write_composite_transform": False},
        "notes": "This is what antspyx users get from that one call; it differs from ANTs' shell script "
                 "antsRegistrationSyN" + ("Quick" if quick else "") + ".sh (see ants-syn-cc). antspyx passes one "
                 "--masks after the last stage, which antsRegistration applies to every stage; no "
                 "--collapse-output-transforms, whose default (1) is written here explicitly.",
        "float": True,
        "collapse_output_transforms": True,
        "write_composite_transform": False,
        "initialize_transforms_per_stage": None,
        "initial_moving_transform": "center_of_mass",
        "interpolation": None,
        "winsorize_image_intensities": None,
        "use_histogram_matching": False,
        "masks": "all_stages",
        "stages": [
            _linear_stage("Rigid", 0.1, "MI", 32, "Regular", 0.25, linear_iterations, 1e-6, 10,
                          [8, 4, 2, 1], [3, 2, 1, 0], "vox"),
            _linear_stage("Affine", 0.1, "MI", 32, "Regular", 0.25, linear_iterations, 1e-6, 10,
                          [8, 4, 2, 1], [3, 2, 1, 0], "vox"),
            {"transform": "SyN", "transform_parameters": [0.2, 3, 0], "metric": syn_metric[0], "metric_weight": 1,
             "radius_or_number_of_bins": syn_metric[1], "sampling_strategy": None, "sampling_percentage": None,
             "iterations": [100, 70, 50, 0] if quick else [100, 70, 50, 20], "convergence_threshold": 1e-6,
             "convergence_window_size": 10, "shrink_factors": [8, 4, 2, 1], "smoothing_sigmas": [3, 2, 1, 0],
             "sigma_units": "vox"},
        ],
    }


ANTS_PRESETS["antspyx-syn-s"] = _antspyx_syn_preset(quick=False)
ANTS_PRESETS["antspyx-synquick-s"] = _antspyx_syn_preset(quick=True)

#: ANTs reads ``--random-seed`` as a C int and treats 0 as "no seed": ``seed + 1`` must fit
#: (the command line's ``--seed`` range for every preset, :data:`inrreg_pipeline.cli.SEED_MAX`).
_MAX_SEED = SEED_MAX


def is_ants_preset(name: str) -> bool:
    """Whether ``name`` is one of :data:`ANTS_PRESETS`."""
    return isinstance(name, str) and name in ANTS_PRESETS


def _preset(name: str) -> dict[str, Any]:
    if not is_ants_preset(name):
        raise InputError(f"unknown ANTs preset '{name}'; choose one of: {', '.join(ANTS_PRESETS)}")
    return ANTS_PRESETS[name]


def _num(value: float) -> str:
    """A number as ANTs reads it: integers without a decimal point, floats in shortest form."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (int, np.integer)) or float(value).is_integer():
        return str(int(value))
    return format(float(value), "g")


def scaled_iterations(iterations: list[int], scale: float) -> list[int]:
    """Iterations per level times ``scale``, rounded, at least 1 (levels with 0 iterations stay 0)."""
    return [0 if int(n) == 0 else max(1, int(round(int(n) * scale))) for n in iterations]


def _stage_arguments(stage: dict[str, Any], fixed: str, moving: str, scale: float) -> list[str]:
    tp = ",".join(_num(p) for p in stage["transform_parameters"])
    metric = [fixed, moving, _num(stage["metric_weight"]), _num(stage["radius_or_number_of_bins"])]
    if stage["sampling_strategy"] is not None:
        metric.append(str(stage["sampling_strategy"]))
        if stage["sampling_percentage"] is not None:
            metric.append(_num(stage["sampling_percentage"]))
    iters = "x".join(str(n) for n in scaled_iterations(stage["iterations"], scale))
    if stage["convergence_threshold"] is None:
        convergence = iters
    else:
        convergence = f"[{iters},{_num(stage['convergence_threshold'])},{_num(stage['convergence_window_size'])}]"
    sigmas = "x".join(_num(s) for s in stage["smoothing_sigmas"]) + (stage["sigma_units"] or "")
    return ["--transform", f"{stage['transform']}[{tp}]",
            "--metric", f"{stage['metric']}[{','.join(metric)}]",
            "--convergence", convergence,
            "--shrink-factors", "x".join(str(int(f)) for f in stage["shrink_factors"]),
            "--smoothing-sigmas", sigmas]


def antsregistration_arguments(preset: str, ndim: int, fixed: str, moving: str, output_prefix: str,
                               warped: str, inverse_warped: str, seed: int = 0, fixed_mask: str | None = None,
                               moving_mask: str | None = None, scale_iterations: float = 1.0) -> list[str]:
    """The antsRegistration argument list (no program name) of ``preset`` for these files.

    ``seed`` is passed as ``--random-seed seed+1`` (ANTs ignores 0).  ``scale_iterations``
    multiplies every iteration count (see :func:`scaled_iterations`).
    """
    p = _preset(preset)
    if ndim not in (2, 3):
        raise InputError(f"ANTs baselines support 2-D and 3-D images, got {ndim}-D")
    stages = p["stages"]
    args = ["--dimensionality", str(ndim), "--float", _num(p["float"]),
            "--collapse-output-transforms", _num(p["collapse_output_transforms"]),
            "--write-composite-transform", _num(p["write_composite_transform"])]
    if p["initialize_transforms_per_stage"] is not None:
        args += ["--initialize-transforms-per-stage", _num(p["initialize_transforms_per_stage"])]
    args += ["--output", f"[{output_prefix},{warped},{inverse_warped}]"]
    if p["interpolation"] is not None:
        args += ["--interpolation", p["interpolation"]]
    if p["winsorize_image_intensities"] is not None:
        lo, hi = p["winsorize_image_intensities"]
        args += ["--winsorize-image-intensities", f"[{_num(lo)},{_num(hi)}]"]
    hist = p["use_histogram_matching"]
    if isinstance(hist, bool):
        args += ["--use-histogram-matching", _num(hist)]
    elif len(hist) != len(stages):
        raise ValueError(f"preset {preset}: use_histogram_matching needs one value per stage")
    if p["initial_moving_transform"] != "center_of_mass":
        raise ValueError(f"preset {preset}: unsupported initial_moving_transform {p['initial_moving_transform']!r}")
    args += ["--initial-moving-transform", f"[{fixed},{moving},1]"]
    if p["masks"] == "all_stages":
        if fixed_mask or moving_mask:
            args += ["--masks", f"[{fixed_mask or 'NULL'},{moving_mask or 'NULL'}]"]
    elif p["masks"] != "last_stage":
        raise ValueError(f"preset {preset}: unsupported masks mode {p['masks']!r}")
    for k, stage in enumerate(stages):
        args += _stage_arguments(stage, fixed, moving, scale_iterations)
        if not isinstance(hist, bool):
            args += ["--use-histogram-matching", _num(hist[k])]
        if p["masks"] == "last_stage":
            last = k == len(stages) - 1
            args += ["--masks", f"[{(fixed_mask if last else None) or 'NA'},{(moving_mask if last else None) or 'NA'}]"]
    args += ["--random-seed", str(int(seed) + 1)]
    return args


# --------------------------------------------------------------------------------------------
# Running antsRegistration (antspyx's bundled library) in a child process
# --------------------------------------------------------------------------------------------
_CHILD = r"""
import glob, importlib.machinery, importlib.util, json, os, sys

def antsregistration():
    # Load antspyx's compiled extension alone (importing the whole ants package takes seconds).
    try:
        spec = importlib.util.find_spec("ants")
        for folder in spec.submodule_search_locations:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(folder, "lib" + suffix)
                if os.path.exists(path):
                    lib_spec = importlib.util.spec_from_file_location("ants.lib", path)
                    lib = importlib.util.module_from_spec(lib_spec)
                    lib_spec.loader.exec_module(lib)
                    return lib.antsRegistration
    except Exception:
        pass
    from ants.internal import get_lib_fn
    return get_lib_fn("antsRegistration")

def peak_rss_kb():
    # VmHWM belongs to this process's own memory map; ru_maxrss would include the parent's size
    # at fork (Linux carries it over exec).
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None

fn = antsregistration()
with open(sys.argv[1]) as fh:
    args = json.load(fh)
fn(["--version"])
sys.stdout.flush()
rc = int(fn(args) or 0)
sys.stdout.flush()
with open(sys.argv[2], "w") as fh:
    json.dump({"exit_status": rc, "peak_rss_kb": peak_rss_kb()}, fh)
sys.exit(rc)
"""


def _antspyx_version() -> str:
    try:
        return importlib.metadata.version("antspyx")
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError("ANTs baselines need antspyx (pip install antspyx)") from None


def _run_child(args: list[str], work: Path, threads: int) -> tuple[float, float | None, str]:
    """Run antsRegistration with ``args``; return (wall seconds, peak RSS MB of the child, log text)."""
    args_file = work / "args.json"
    args_file.write_text(json.dumps(args))
    env = dict(os.environ)
    env["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(threads)
    env["OMP_NUM_THREADS"] = str(threads)
    log_path, result_path = work / "antsRegistration.log", work / "result.json"
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(args_file), str(result_path)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(work))
        try:
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    seconds = time.perf_counter() - start
    text = log_path.read_text(errors="replace")
    if proc.returncode != 0:
        tail = " | ".join(line.strip() for line in text.strip().splitlines()[-8:] if line.strip())
        raise RuntimeError(f"antsRegistration failed (exit status {proc.returncode}): {tail}")
    result = json.loads(result_path.read_text())
    peak_mb = None if result.get("peak_rss_kb") is None else result["peak_rss_kb"] / 1024.0
    return seconds, peak_mb, text


def _collect_transforms(work: Path, stem: str) -> tuple[list[Path], Path, Path]:
    """ANTs' output transforms: linear files in index order, forward warp, inverse warp."""
    linear, warps, inverse = [], [], []
    for path in work.iterdir():
        name = path.name
        if not name.startswith(stem):
            continue
        rest = name[len(stem):]
        if m := re.fullmatch(r"(\d+)[A-Za-z]*\.mat", rest):
            linear.append((int(m.group(1)), path))
        elif m := re.fullmatch(r"(\d+)Warp\.nii\.gz", rest):
            warps.append((int(m.group(1)), path))
        elif m := re.fullmatch(r"(\d+)InverseWarp\.nii\.gz", rest):
            inverse.append((int(m.group(1)), path))
    if len(warps) != 1 or len(inverse) != 1 or warps[0][0] != inverse[0][0]:
        raise RuntimeError(f"antsRegistration wrote {len(warps)} forward and {len(inverse)} inverse warps; "
                           "expected one of each (collapsed output)")
    if any(index > warps[0][0] for index, _ in linear):
        raise RuntimeError("antsRegistration wrote a linear transform after the warp; cannot express it as "
                           "[1Warp, 0GenericAffine]")
    return [p for _, p in sorted(linear)], warps[0][1], inverse[0][1]


def _check_ants_path(path: Path) -> None:
    if re.search(r"[\[\],]", str(path)):
        raise RuntimeError(f"temporary folder '{path}' contains '[', ']' or ',', which antsRegistration cannot "
                           "parse; set TMPDIR to a plain path")


def run_ants(fixed: str, moving: str, prefix: str, preset: str = "ants-syn-cc", threads: int | None = None,
             seed: int = 0, fixed_mask: str | None = None, moving_mask: str | None = None,
             scale_iterations: float = 1.0) -> dict[str, Path]:
    """Register ``moving`` to ``fixed`` with antsRegistration and write ``inrreg register``'s outputs.

    ``preset``: a key of :data:`ANTS_PRESETS`.  ``threads``: ITK threads for ANTs (``None`` = 1,
    for reproducibility).  ``seed``: passed as ``--random-seed seed+1``.  ``fixed_mask`` /
    ``moving_mask``: metric masks on the grids of their images.  ``scale_iterations``: multiplies
    every iteration count (at least 1 per level that had any), e.g. 0.1 for tests.

    Returns the output paths by key (:data:`~inrreg_pipeline.register.OUTPUT_SUFFIXES`).  Raises
    :class:`InputError` for bad inputs or arguments (nothing written), ``RuntimeError`` when
    antsRegistration fails (nothing written either).
    """
    start = time.perf_counter()
    check_prefix_outputs(prefix, fixed, moving, fixed_mask, moving_mask)
    params = _preset(preset)
    n_threads, scale = check_baseline_arguments(threads, seed, scale_iterations, _MAX_SEED)
    antspyx_version = _antspyx_version()

    fixed_img, moving_img, f_mask, m_mask = load_pair(fixed, moving, fixed_mask, moving_mask)
    d = fixed_img.ndim

    with StagedOutputs(prefix) as stage, tempfile.TemporaryDirectory(prefix=staging_prefix("ants"), dir=stage.directory) as tmp:
        work = Path(tmp)
        _check_ants_path(work)
        files = write_inputs(work, fixed_img, moving_img, f_mask, m_mask, ".nii")
        stem = "ants_"
        names = {"fixed": str(files["fixed"]), "moving": str(files["moving"]),
                 "fixed_mask": str(files["fixed_mask"]) if "fixed_mask" in files else None,
                 "moving_mask": str(files["moving_mask"]) if "moving_mask" in files else None,
                 "output_prefix": str(work / stem), "warped": str(work / f"{stem}Warped.nii.gz"),
                 "inverse_warped": str(work / f"{stem}InverseWarped.nii.gz")}
        args = antsregistration_arguments(preset, d, seed=seed, scale_iterations=scale, **names)
        reg_seconds, child_peak_mb, log = _run_child(args, work, int(n_threads))

        t0 = time.perf_counter()
        s = OUTPUT_SUFFIXES
        linear, warp_path, inverse_path = _collect_transforms(work, stem)
        affine = np.eye(d + 1)
        for path in linear:
            affine = affine @ read_itk_affine(path)
        if len(linear) == 1:
            shutil.copyfile(linear[0], stage.path(s["affine"]))
        else:
            write_itk_affine(stage.path(s["affine"]), affine)
        jacobian = write_baseline_outputs(stage, fixed_img, f_mask, warp_path, inverse_path, Path(names["warped"]),
                                          Path(names["inverse_warped"]), affine)
        output_seconds = time.perf_counter() - t0

        version = re.search(r"ANTs Version:\s*(\S+)", log)
        versions = {**library_versions(), "antspyx": antspyx_version, "ANTs": version.group(1) if version else None}
        placeholders = {v: f"{{{k}}}" for k, v in names.items() if v is not None}
        metadata = {
            "inputs": recorded_inputs(fixed, moving, fixed_mask, moving_mask),
            "method": "ants",
            "preset": preset,
            "parameters": copy.deepcopy(params),
            "scale_iterations": scale,
            "iterations_used": [scaled_iterations(st["iterations"], scale) for st in params["stages"]],
            "antsRegistration_arguments": [substitute_paths(a, placeholders) for a in args],
            "antsRegistration_placeholders": {
                "fixed": "inputs.fixed as float32 NIfTI (qform = sform)", "moving": "inputs.moving, likewise",
                "fixed_mask": "inputs.fixed_mask as uint8 0/1", "moving_mask": "inputs.moving_mask as uint8 0/1",
                "output_prefix": "temporary ANTs output prefix (files renamed to the outputs below)",
                "warped": "-> outputs.warped", "inverse_warped": "-> outputs.inverse_warped"},
            "seed": int(seed),
            "ants_random_seed": int(seed) + 1,
            "versions": versions,
            "memory": {"peak_rss_mb": child_peak_mb,
                       "peak_rss_mb_caller": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                       "measured": "peak_rss_mb: the antsRegistration child process (VmHWM); "
                                   "peak_rss_mb_caller: this Python process (getrusage)"},
            **baseline_metadata(stage, affine, jacobian, n_threads, {
                "registration": reg_seconds, "outputs": output_seconds, "total": time.perf_counter() - start}, d),
        }
        stage.path(s["metadata"]).write_text(json.dumps(metadata, indent=2))
    return {key: stage.final(suffix) for key, suffix in OUTPUT_SUFFIXES.items()}



#: Every classical baseline preset: ANTs (antsRegistration through antspyx) and greedy.
BASELINE_PRESETS: tuple[str, ...] = (*ANTS_PRESETS, *GREEDY_PRESETS)


def is_baseline_preset(name: str) -> bool:
    """Whether ``name`` names a classical baseline (ANTs or greedy) rather than an INR preset."""
    return is_ants_preset(name) or is_greedy_preset(name)


def run_baseline(fixed: str, moving: str, prefix: str, preset: str, threads: int | None = None, seed: int = 0,
                 fixed_mask: str | None = None, moving_mask: str | None = None,
                 scale_iterations: float = 1.0) -> dict[str, Path]:
    """Run the baseline ``preset`` (a key of :data:`BASELINE_PRESETS`) with :func:`run_ants`'s arguments."""
    runner = run_greedy if is_greedy_preset(preset) else run_ants
    return runner(fixed, moving, prefix, preset=preset, threads=threads, seed=seed, fixed_mask=fixed_mask,
                  moving_mask=moving_mask, scale_iterations=scale_iterations)
