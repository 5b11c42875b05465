"""greedy (PICSL, PyPI ``picsl-greedy``) baselines with ``inrreg register``'s outputs.

greedy is the fast classical tool neuroimaging users pick beside ANTs: a diffeomorphic greedy
(log-domain-free) registration with Gaussian regularisation of the update and of the field, on
WNCC. :func:`run_greedy` runs one of :data:`GREEDY_PRESETS` and writes exactly the files of
:func:`inrreg_pipeline.register.register_files` (same keys, all together or none), so every
method is scored by the same code from its own written transform.

The steps are those of greedy's documentation for inter-subject brain registration:

1. ``-moments 1``: translation matching the intensity centres of mass (moments of order 1);
2. ``-a -dof 12 -ia MOMENTS``: affine on NCC 2x2x2 (radius in voxels), 100x50x10 iterations;
3. ``-it AFFINE``: deformable on WNCC 2x2x2, 100x50x10 iterations, ``-s`` the smoothing of the
   update and of the field (greedy's defaults ``1.732vox 0.7071vox``; ``greedy-permissive``:
   ``1.5mm 0.5mm``), writing the warp and its inverse (``-oinv``);
4. ``-r``: the warped images, through greedy's own resampling.

File conventions (checked by the tests against greedy's own resampling): greedy's warps are ITK
displacement fields (LPS mm, on the fixed grid), copied byte for byte to ``1Warp``/``1InverseWarp``;
its affine matrices are 4x4 text in RAS mm mapping fixed points to moving points, written here as
the ITK ``0GenericAffine.mat``. ``[1Warp, 0GenericAffine]`` is then greedy's ``-r warp affine``.

Presets (:data:`GREEDY_PRESETS`) are data: ``inrreg_pipeline/baselines/presets/<name>.json``
(:mod:`inrreg_pipeline.baselines.presets`), recorded verbatim as ``parameters``. Keys: ``source``,
``description``, ``moments`` (the order of ``-moments``), ``affine`` (``dof``, ``metric``,
``radius`` in voxels per axis, ``iterations`` per level) and ``deformable`` (``metric``,
``radius``, ``iterations``, ``smoothing``: ``[update, field]`` for ``-s``, or ``null`` for
greedy's default).

greedy runs in this process through its Python binding (``picsl_greedy.Greedy3D/2D.execute``,
``-threads`` threads); the metadata records its command lines, and peak memory is this process's
peak RSS.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import io
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..core.choices import SEED_MAX
from ..io.images import InputError, StagedOutputs, staging_prefix
from ..io.itk import write_itk_affine
from ..register import OUTPUT_SUFFIXES, library_versions, recorded_inputs
from .arguments import checked_baseline_inputs, scaled_iterations, substitute_paths
from .outputs import baseline_metadata, write_baseline_outputs, write_inputs
from .presets import GREEDY_PRESETS, is_greedy_preset

__all__ = ["GREEDY_PRESETS", "is_greedy_preset", "greedy_commands", "run_greedy"]

#: greedy seeds nothing at random in these set-ups (dense metrics, deterministic optimisers); the seed
#: is checked against the command line's range (:data:`inrreg_pipeline.cli.SEED_MAX`) and recorded.
_MAX_SEED = SEED_MAX


def _radius(values: list[int], d: int) -> str:
    return "x".join(str(int(v)) for v in values[:d])


def _iterations(values: list[int], scale: float) -> str:
    return "x".join(str(n) for n in scaled_iterations(values, scale))


def greedy_commands(preset: str, ndim: int, fixed: str, moving: str, files: dict[str, str], threads: int,
                    fixed_mask: str | None = None, moving_mask: str | None = None,
                    scale_iterations: float = 1.0) -> list[str]:
    """The greedy command lines (no program name) of ``preset``, in order.

    ``files`` names ``moments``, ``affine``, ``warp``, ``inverse_warp``, ``warped`` and
    ``inverse_warped``. Masks (on their images' grids) go to every optimisation step as ``-gm``
    (fixed) and ``-mm`` (moving).
    """
    if not is_greedy_preset(preset):
        raise InputError(f"unknown greedy preset '{preset}'; choose one of: {', '.join(GREEDY_PRESETS)}")
    p = GREEDY_PRESETS[preset]
    head = f"-d {ndim} -threads {int(threads)} -i {fixed} {moving}"
    masks = (f" -gm {fixed_mask}" if fixed_mask else "") + (f" -mm {moving_mask}" if moving_mask else "")
    a, w = p["affine"], p["deformable"]
    smoothing = f" -s {w['smoothing'][0]} {w['smoothing'][1]}" if w["smoothing"] else ""
    return [
        f"{head}{masks} -moments {p['moments']} -o {files['moments']}",
        f"{head}{masks} -a -dof {a['dof']} -ia {files['moments']} -m {a['metric']} {_radius(a['radius'], ndim)} "
        f"-n {_iterations(a['iterations'], scale_iterations)} -o {files['affine']}",
        f"{head}{masks} -it {files['affine']} -m {w['metric']} {_radius(w['radius'], ndim)} "
        f"-n {_iterations(w['iterations'], scale_iterations)}{smoothing} -o {files['warp']} "
        f"-oinv {files['inverse_warp']}",
        f"-d {ndim} -threads {int(threads)} -rf {fixed} -rm {moving} {files['warped']} "
        f"-r {files['warp']} {files['affine']}",
        f"-d {ndim} -threads {int(threads)} -rf {moving} -rm {fixed} {files['inverse_warped']} "
        f"-r {files['affine']},-1 {files['inverse_warp']}",
    ]


def _greedy(ndim: int) -> Any:
    """greedy's ``Greedy3D`` or ``Greedy2D`` binding (picsl-greedy is optional: imported here)."""
    try:
        import picsl_greedy
    except ImportError:
        raise RuntimeError("greedy baselines need picsl-greedy (pip install picsl-greedy)") from None
    return picsl_greedy.Greedy3D() if ndim == 3 else picsl_greedy.Greedy2D()


@contextlib.contextmanager
def _output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr file descriptors to ``path`` (greedy's C++ code writes
    its iteration log there directly, past Python's ``sys.stdout``)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _execute(greedy: Any, commands: list[str], log_path: Path) -> None:
    """Run greedy's command lines in order, its log in ``log_path``; ``RuntimeError`` with the log's
    last lines when one fails."""
    for command in commands:
        text = io.StringIO()
        try:
            with _output_to(log_path):
                greedy.execute(command, out=text, err=text)
        except Exception as err:  # greedy raises RuntimeError with its own message
            lines = (log_path.read_text(errors="replace") + text.getvalue()).strip().splitlines()
            tail = " | ".join(x.strip() for x in lines[-4:] if x.strip())
            raise RuntimeError(f"greedy failed ({' '.join(str(err).split())}): {tail}") from None


def run_greedy(fixed: str, moving: str, prefix: str, preset: str = "greedy", threads: int | None = None,
               seed: int = 0, fixed_mask: str | None = None, moving_mask: str | None = None,
               scale_iterations: float = 1.0) -> dict[str, Path]:
    """Register ``moving`` to ``fixed`` with greedy and write ``inrreg register``'s outputs.

    Arguments as :func:`inrreg_pipeline.baselines.ants.run_ants` (``threads`` ``None`` = 1). Returns the
    output paths by key; raises :class:`InputError` for bad input (nothing written) and
    ``RuntimeError`` when greedy fails (nothing written either).
    """
    start = time.perf_counter()
    n_threads, scale, fixed_img, moving_img, f_mask, m_mask = checked_baseline_inputs(
        "greedy", GREEDY_PRESETS, preset, fixed, moving, prefix, threads, seed, scale_iterations, fixed_mask,
        moving_mask, _MAX_SEED)
    d = fixed_img.ndim
    greedy = _greedy(d)

    with StagedOutputs(prefix) as stage, tempfile.TemporaryDirectory(prefix=staging_prefix("greedy"),
                                                                     dir=stage.directory) as tmp:
        work = Path(tmp)
        names = write_inputs(work, fixed_img, moving_img, f_mask, m_mask, ".nii.gz")
        files = {key: str(work / f"greedy_{key}{ext}") for key, ext in (
            ("moments", ".mat"), ("affine", ".mat"), ("warp", ".nii.gz"), ("inverse_warp", ".nii.gz"),
            ("warped", ".nii.gz"), ("inverse_warped", ".nii.gz"))}
        commands = greedy_commands(preset, d, str(names["fixed"]), str(names["moving"]), files, int(n_threads),
                                   str(names["fixed_mask"]) if "fixed_mask" in names else None,
                                   str(names["moving_mask"]) if "moving_mask" in names else None, scale)
        t0 = time.perf_counter()
        _execute(greedy, commands, work / "greedy.log")
        reg_seconds = time.perf_counter() - t0

        t0 = time.perf_counter()
        s = OUTPUT_SUFFIXES
        affine = np.loadtxt(files["affine"])
        if affine.shape != (d + 1, d + 1):
            raise RuntimeError(f"greedy wrote an affine of shape {affine.shape} for a {d}-D pair")
        write_itk_affine(stage.path(s["affine"]), affine)
        jacobian = write_baseline_outputs(stage, fixed_img, f_mask, Path(files["warp"]), Path(files["inverse_warp"]),
                                          Path(files["warped"]), Path(files["inverse_warped"]), affine)
        output_seconds = time.perf_counter() - t0

        placeholders = {str(v): f"{{{k}}}" for k, v in names.items()}
        placeholders.update({v: f"{{{k}}}" for k, v in files.items()})
        metadata = {
            "inputs": recorded_inputs(fixed, moving, fixed_mask, moving_mask),
            "method": "greedy",
            "preset": preset,
            "parameters": copy.deepcopy(GREEDY_PRESETS[preset]),
            "scale_iterations": scale,
            "greedy_commands": [substitute_paths(c, placeholders) for c in commands],
            "seed": int(seed),
            "versions": {**library_versions(), "picsl-greedy": importlib.metadata.version("picsl-greedy")},
            "memory": {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                       "measured": "peak_rss_mb: this process (getrusage), greedy running in it"},
            **baseline_metadata(stage, affine, jacobian, n_threads, {
                "registration": reg_seconds, "outputs": output_seconds, "total": time.perf_counter() - start}, d),
        }
        stage.path(s["metadata"]).write_text(json.dumps(metadata, indent=2))
    return {key: stage.final(suffix) for key, suffix in OUTPUT_SUFFIXES.items()}

