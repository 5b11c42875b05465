#!/usr/bin/env python
"""One-shot device check: the CUDA-marked tests, then one 1 mm OASIS-shaped pair with each shipped
preset, written as one JSON file. Meant for a single call of under 8 minutes on one H100/H200.

Run from the source tree with the machine's own Python (its torch; the other packages only if
it has them)::

    PYTHONPATH=. python benchmarks/gpu_check.py --out "$OUT"      # or: make gpu-check OUT=...

What it does, in order, each step skipped (with the reason in the JSON) rather than failed when a
package it needs is missing:

1. ``pytest -m cuda tests/test_cuda.py`` (CPU/CUDA agreement of world-point sampling, the
   similarity losses, the hash encoding, a short registration's Dice; same seed, same result on
   CUDA within a tolerance); its counts go into the JSON. Needs pytest and SciPy.
2. A fixed image on a 256 x 256 x 160 grid of 1 mm voxels oriented like the OASIS T1w images
   (array axes A, S, L): nilearn's MNI152 template (1 mm, shipped with nilearn, no download)
   resampled onto it, or, without nilearn, the head phantom of
   :func:`inrreg_pipeline.synthetic.phantom`. The moving image is the fixed one under a known
   smooth map ``psi`` (:func:`inrreg_pipeline.synthetic.random_deformation`: 5 mm Gaussian
   bumps, up to 5 degrees, 4 mm and 4 % of affine motion). Labels: the phantom's tissues, or
   three intensity classes of the template inside its head (fixed grid), carried to the moving
   grid by ``psi`` (nearest neighbour).
3. Each preset of :data:`PRESETS` registers the pair (``inrreg_pipeline.core.register``, in
   memory); the JSON gets the core's stage times (affine, deformable, dense outputs, total), the
   time to write the ANTs/ITK files (when nibabel and SimpleITK are importable; written to a
   temporary folder, then deleted), peak GPU memory and RSS, the registration error
   ``||psi(phi(x)) - x||`` (mm) inside the head before and after, and the mean Dice of the
   warped moving labels before and after.

``--cpu-smoke`` (automatic when CUDA is unavailable) runs the same steps on a 32 x 32 x 20 grid of
8 mm voxels with every stage cut to a few iterations (under a minute for all four presets on a
loaded 2-core machine), so the script itself is tested on CPU-only machines
(``tests/test_benchmarks.py``). ``--budget-s`` stops starting new presets once that much wall
time has gone (default 360 s, leaving the preset in progress two minutes of an 8-minute call;
the full run's per-preset time is not measured yet).

Output: ``<out>/gpu_check.json`` (``--out``, default ``$OUT``, else ``gpu_check_out``).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: The shipped presets registered in step 3: svf (what runs without --preset), the default and fast
#: displacement SIRENs, and the two-network method.
PRESETS = ("svf", "default", "fast", "two-network-deformable")
#: Grid of the pair in the full run (voxels, mm): the OASIS T1w shape at its native 1 mm.
FULL_GRID = ((256, 256, 160), 1.0)
#: The same field of view at 8 mm, for the CPU smoke run.
SMOKE_GRID = ((32, 32, 20), 8.0)
#: Optional packages whose absence makes a step skip; reported with their versions.
OPTIONAL = ("scipy", "nibabel", "SimpleITK", "nilearn", "pytest", "tinycudann")


def available(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it)."""
    return importlib.util.find_spec(module) is not None


def versions() -> dict[str, str | None]:
    """Versions of torch, NumPy and the optional packages (None: not importable)."""
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "numpy": np.__version__, "cuda": torch.version.cuda}
    for name in OPTIONAL:
        if not available(name):
            out[name] = None
            continue
        try:
            module = __import__(name)
            out[name] = str(getattr(module, "__version__", None) or getattr(module, "Version_VersionString",
                                                                             lambda: "?")())
        except Exception as err:  # a package that is present but broken counts as missing
            out[name] = None
            out[f"{name}_error"] = f"{type(err).__name__}: {err}"
    return out


def run_cuda_tests(out: Path, timeout_s: float) -> dict[str, Any]:
    """Step 1: ``pytest -m cuda tests/test_cuda.py``; counts from its JUnit XML."""
    if not available("pytest"):
        return {"status": "skipped", "reason": "pytest is not importable"}
    xml = out / "cuda_tests.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-rs", "-p", "no:cacheprovider",
           f"--junitxml={xml}", "-o", "addopts=", str(ROOT / "tests" / "test_cuda.py")]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout_s:.0f} s", "seconds": timeout_s}
    result: dict[str, Any] = {"returncode": proc.returncode, "seconds": time.perf_counter() - t0,
                              "output_tail": (proc.stdout + proc.stderr)[-3000:]}
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        result.update(counts)
        result["failed_tests"] = [case.get("name") for case in suite.iter("testcase")
                                  if case.find("failure") is not None or case.find("error") is not None]
    # pytest exits 5 when nothing ran: all CUDA tests deselected/skipped is not a failure here
    result["status"] = "ok" if proc.returncode in (0, 5) and not result.get("failed_tests") else "failed"
    return result


def oasis_like_affine(shape: tuple[int, ...], spacing: float, centre: np.ndarray) -> np.ndarray:
    """voxel -> RAS affine of an A, S, L grid (as the OASIS T1w images) centred on ``centre`` (mm)."""
    affine = np.array([[0.0, 0.0, -spacing, 0.0], [spacing, 0.0, 0.0, 0.0], [0.0, spacing, 0.0, 0.0],
                       [0.0, 0.0, 0.0, 1.0]])
    affine[:3, 3] = np.asarray(centre) - affine[:3, :3] @ ((np.asarray(shape, dtype=float) - 1.0) / 2.0)
    return affine


def make_pair(shape: tuple[int, ...], spacing: float, seed: int = 0) -> dict[str, Any]:
    """Step 2: fixed image, moving image under a known ``psi``, and labels on both grids."""
    from inrreg_pipeline.core.space import SpatialImage, voxel_grid_to_world, world_bounding_box
    from inrreg_pipeline.synthetic import deform, phantom, random_deformation, registration_error, sample_image

    source = "synthetic phantom (inrreg_pipeline.synthetic.phantom)"
    fixed = labels = None
    if available("nilearn") and available("nibabel"):
        try:
            from nilearn import datasets

            template = datasets.load_mni152_template(resolution=1)
            mni = SpatialImage(np.asarray(template.get_fdata(), np.float32), template.affine)
            lower, upper = world_bounding_box(mni.shape, mni.affine)
            affine = oasis_like_affine(shape, spacing, (lower + upper) / 2.0)
            data = sample_image(mni, voxel_grid_to_world(shape, affine), order=1).astype(np.float32)
            fixed = SpatialImage(data, affine)
            head = data > 0.1 * np.percentile(data, 99)
            cuts = np.percentile(data[head], [33.3, 66.7])
            labels = np.where(head, 1 + np.digitize(data, cuts), 0).astype(np.uint8)
            source = "nilearn MNI152 template (1 mm) on an OASIS-shaped grid"
        except Exception as err:  # no template data in this nilearn: fall back to the phantom
            source = f"synthetic phantom (nilearn template unavailable: {type(err).__name__})"
            fixed = None
    if fixed is None:
        fixed, labels = phantom(shape, spacing)
    psi = random_deformation(fixed, amplitude_mm=5.0, seed=seed)
    moving = deform(fixed, psi)
    moving_labels = np.rint(sample_image(fixed.with_data(labels.astype(np.float32)),
                                         psi(fixed.world_grid()), order=0)).astype(np.uint8)
    inside = labels > 0
    head = fixed.world_grid()[inside]  # fixed-grid points (mm) where the error is measured
    return {"fixed": fixed, "moving": moving, "labels": labels, "moving_labels": moving_labels, "psi": psi,
            "source": source, "inside": inside, "error_before_mm": registration_error(psi, head, head)}


def mean_dice(reference: np.ndarray, test: np.ndarray) -> float:
    """Unweighted mean Dice over the labels of ``reference`` (0 excluded)."""
    scores = []
    for k in np.unique(reference):
        if k == 0:
            continue
        a, b = reference == k, test == k
        scores.append(2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1))
    return float(np.mean(scores))


def cut_down(settings, smoke: bool):
    """The preset as shipped, or (smoke run) every stage cut to a few iterations."""
    settings = copy.deepcopy(settings)
    if not smoke:
        return settings
    settings.affine.iterations = [4, 4]
    settings.affine.shrink_factors = [2, 1]
    settings.affine.level_spacing_mm = None  # the two smoke levels are these shrink factors
    settings.affine.rigid_iterations = 4
    settings.affine.samples = 2000
    settings.optimisation.iterations = 6
    settings.two_network.iterations = 6
    settings.svf.iterations = [3] * len(settings.svf.iterations)
    settings.inverse_iterations = 4
    return settings


def write_seconds(result, fixed, moving) -> float | str:
    """Seconds to write the ANTs/ITK files of ``result`` (to a temporary folder, deleted after), or
    the reason it was skipped."""
    missing = [m for m in ("nibabel", "SimpleITK") if not available(m)]
    if missing:
        return f"skipped: {', '.join(missing)} not importable"
    from inrreg_pipeline.io.images import StagedOutputs
    from inrreg_pipeline.register import write_outputs

    folder = tempfile.mkdtemp(prefix="inrreg-gpu-check-")
    try:
        t0 = time.perf_counter()
        with StagedOutputs(os.path.join(folder, "pair_")) as stage:
            write_outputs(stage, result, fixed, moving)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_preset(name: str, pair: dict[str, Any], device: torch.device, smoke: bool) -> dict[str, Any]:
    """Step 3 for one preset: register, time, score against the known deformation."""
    from inrreg_pipeline.core.config import load_preset
    from inrreg_pipeline.core.registration import register
    from inrreg_pipeline.core.space import apply_affine, sample_labels
    from inrreg_pipeline.synthetic import registration_error

    fixed, moving = pair["fixed"], pair["moving"]
    settings = cut_down(load_preset(name), smoke)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    result = register(fixed, moving, settings, device, seed=0)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    grid = fixed.world_grid()
    inside = pair["inside"]
    phi = apply_affine(result.affine, grid + result.displacement)
    error = registration_error(pair["psi"], phi[inside], grid[inside])  # psi only where it is scored
    before = pair["error_before_mm"]
    warped_labels = sample_labels(pair["moving_labels"], moving.affine, phi, device)
    writing = write_seconds(result, fixed, moving)
    runtime = result.summary["runtime_s"]
    return {
        "status": "ok",
        "method": settings.method,
        "seconds": {"affine": runtime["affine"], "deformable": runtime["deformable"],
                    "dense_outputs": runtime["dense_outputs"], "registration_total": runtime["total"],
                    "registration_wall": wall,
                    "writing": writing if isinstance(writing, float) else None},
        "writing_note": None if isinstance(writing, float) else writing,
        "peak_gpu_mb": result.summary["memory"].get("peak_gpu_mb"),
        "peak_rss_mb": result.summary["memory"]["peak_rss_mb"],
        "error_mm": {"before_mean": float(before.mean()), "mean": float(error.mean()),
                     "p95": float(np.percentile(error, 95)), "max": float(error.max())},
        "dice": {"before": mean_dice(pair["labels"], pair["moving_labels"]),
                 "after": mean_dice(pair["labels"], warped_labels)},
        "folding_percent_in_head": float(100.0 * np.mean(result.jacobian[inside] <= 0)),
        "inverse_consistency_mean_mm": result.summary["inverse_consistency"]["mean_mm"],
        "iterations": settings.two_network.iterations if settings.method == "two-network"
        else settings.optimisation.iterations,
    }


def missing_module(err: BaseException) -> str | None:
    """The name of the missing package behind an import error, if that is what ``err`` is."""
    if isinstance(err, ModuleNotFoundError):
        return err.name
    if isinstance(err, (ImportError, RuntimeError)) and "cannot be imported" in str(err):
        return str(err)
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"),
                    help="folder for gpu_check.json (default: $OUT, else ./gpu_check_out)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny pair, few iterations, on the CPU (automatic when CUDA is unavailable)")
    ap.add_argument("--presets", nargs="+", default=list(PRESETS), help="presets to register (default: %(default)s)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the CUDA-marked tests")
    ap.add_argument("--tests-timeout-s", type=float, default=180.0)
    ap.add_argument("--budget-s", type=float, default=360.0,
                    help="start no new preset after this many seconds of wall time (default: %(default)s)")
    args = ap.parse_args(argv)

    start = time.perf_counter()
    cuda = torch.cuda.is_available()
    smoke = args.cpu_smoke or not cuda
    device = torch.device("cpu" if smoke else "cuda")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "mode": "cpu-smoke" if smoke else "full",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(0) if cuda else (platform.processor() or "cpu"),
        "cuda_available": cuda,
        "torch_version": torch.__version__,
        "versions": versions(),
        "cpu_threads": torch.get_num_threads(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = args.out / "gpu_check.json"

    def save() -> None:
        report["wall_s"] = time.perf_counter() - start
        path.write_text(json.dumps(report, indent=2, default=str))

    report["tests"] = ({"status": "skipped", "reason": "--skip-tests"} if args.skip_tests
                       else run_cuda_tests(args.out, args.tests_timeout_s))
    save()

    shape, spacing = SMOKE_GRID if smoke else FULL_GRID
    report["methods"] = {}
    if not available("scipy"):
        report["pair"] = {"status": "skipped", "reason": "scipy is not importable (the core's smoothing needs it)"}
        save()
        return report
    t0 = time.perf_counter()
    pair = make_pair(shape, spacing)
    report["pair"] = {"status": "ok", "source": pair["source"], "shape": list(shape), "spacing_mm": spacing,
                      "voxels": int(np.prod(shape)), "labels": int(len(np.unique(pair["labels"])) - 1),
                      "deformation": "random_deformation(amplitude_mm=5, seed=0)",
                      "seconds_to_make": time.perf_counter() - t0}
    save()
    for name in args.presets:
        if time.perf_counter() - start > args.budget_s:
            report["methods"][name] = {"status": "skipped",
                                       "reason": f"wall-time budget of {args.budget_s:.0f} s spent"}
            continue
        try:
            report["methods"][name] = run_preset(name, pair, device, smoke)
        except Exception as err:  # one method's failure must not lose the others' figures
            module = missing_module(err)
            report["methods"][name] = (
                {"status": "skipped", "reason": f"needs a missing package: {module}"} if module else
                {"status": "failed", "reason": f"{type(err).__name__}: {err}",
                 "traceback": traceback.format_exc()[-3000:]})
        if device.type == "cuda":
            torch.cuda.empty_cache()
        save()
    print(json.dumps({k: report[k] for k in ("mode", "device_name", "torch_version", "wall_s")}, indent=2))
    for name, row in report["methods"].items():
        if row["status"] == "ok":
            s = row["seconds"]
            print(f"{name}: total {s['registration_total']:.1f} s (affine {s['affine']:.1f}, deformable "
                  f"{s['deformable']:.1f}, dense {s['dense_outputs']:.1f}, writing {s['writing']}), "
                  f"Dice {row['dice']['before']:.3f} -> {row['dice']['after']:.3f}, error "
                  f"{row['error_mm']['before_mean']:.2f} -> {row['error_mm']['mean']:.2f} mm, "
                  f"peak GPU {row['peak_gpu_mb']} MB")
        else:
            print(f"{name}: {row['status']} ({row['reason']})")
    print(f"wrote {path}")
    return report


if __name__ == "__main__":
    main()
