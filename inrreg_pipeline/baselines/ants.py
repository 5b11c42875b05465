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
library function in a child Python process, the module :mod:`inrreg_pipeline._ants_child` run with
``python -m``.  The child process makes the thread count exact
(``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` is read once per process by ITK, so it cannot be changed
after ITK has started in this one), lets ``peak_rss_mb`` be that of the registration alone (the
child's ``VmHWM``), and keeps a crash inside ANTs from taking the caller down.

Seeds: ANTs ignores ``--random-seed 0`` (0 means "do not reseed"), so ``seed`` ``s`` is passed as
``--random-seed s+1``; with one thread the result is then reproducible run to run.

Presets (:data:`ANTS_PRESETS`) are data: one JSON file each, ``inrreg_pipeline/baselines/presets/<name>.json``
(:mod:`inrreg_pipeline.baselines.presets`), recorded verbatim in the metadata.  Global keys:
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

from ..core.choices import SEED_MAX
from ..io.images import InputError, StagedOutputs, load_pair, staging_prefix
from ..io.itk import read_itk_affine, write_itk_affine
from ..register import OUTPUT_SUFFIXES, check_prefix_outputs, library_versions, recorded_inputs
from .arguments import check_baseline_arguments, scaled_iterations, substitute_paths
from .outputs import baseline_metadata, write_baseline_outputs, write_inputs
from .presets import ANTS_PRESETS, is_ants_preset

__all__ = ["ANTS_PRESETS", "is_ants_preset", "antsregistration_arguments", "scaled_iterations", "run_ants"]

#: The child module that runs antsRegistration (``python -m``), and the folder to put on its path so
#: that it runs this copy of inrreg even from a source checkout that is not installed.
CHILD_MODULE = "inrreg_pipeline._ants_child"
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


#: ANTs reads ``--random-seed`` as a C int and treats 0 as "no seed": ``seed + 1`` must fit
#: (the command line's ``--seed`` range for every preset, :data:`inrreg_pipeline.cli.SEED_MAX`).
_MAX_SEED = SEED_MAX


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
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    log_path, result_path = work / "antsRegistration.log", work / "result.json"
    start = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", CHILD_MODULE, str(args_file), str(result_path)], stdout=log,
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
