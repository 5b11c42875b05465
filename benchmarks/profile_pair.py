#!/usr/bin/env python
"""Where the time of one registration goes: ``inrreg register`` on one pair, profiled by stage.

Runs :func:`inrreg_pipeline.register.register_files` (the code path of ``inrreg register``, nothing
re-implemented) under :mod:`cProfile` and reports the cumulative wall time of the functions that make
up a pair: loading, the affine stage, the deformable stage (and its time per iteration), the dense
outputs on the fixed grid (displacement field, Jacobian determinant by finite differences of that
field, numerical inverse, inverse consistency, resampling) and writing the ANTs/ITK files (in all,
and by kind: warps, composites, images). The heavy work is in torch/ITK/zlib
calls, so cProfile's per-call overhead is negligible here; on CUDA the stages end in host copies
(``.cpu()``, ``float(loss)``), which synchronise, so the stage times are real device times.

``--iterations N`` shortens the deformable stage for a quick profile (the per-iteration time
extrapolates linearly to the preset's iteration count; the dense outputs do not depend on it).

    python benchmarks/profile_pair.py --data ../shared/data/oasis-trt-20 --fixed 01 --moving 02 \\
        --spacing 1 --preset default --iterations 60 --threads 2 --out /tmp/profile_1mm

Output in ``--out``: ``profile.json`` (seconds per part, iterations, device, peak memory, the
extrapolated full-preset time) and ``profile.md`` (the same as a table), plus the registration's files.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from pathlib import Path

import nibabel as nib

sys.path.insert(0, str(Path(__file__).resolve().parent))

import oasis_pairs  # noqa: E402  (finding and resampling OASIS-shaped subjects)

from inrreg_pipeline.core.config import load_preset  # noqa: E402
from inrreg_pipeline.core.registration import method_for  # noqa: E402
from inrreg_pipeline.register import register_files  # noqa: E402

#: (part, ((module file suffix, function name), ...)): the functions whose cumulative time is one part
#: (one per method where methods differ: the displacement INR's and svf's stages are separate functions).
PARTS = (
    ("load inputs", (("io/images.py", "load_pair"),)),
    ("affine stage", (("core/affine.py", "register_affine"),)),
    ("deformable stage", (("core/optimisation.py", "fit_deformation"), ("core/svf.py", "fit_svf"))),
    ("dense: displacement field", (("core/fields.py", "evaluate_displacement"),
                                   ("core/svf.py", "dense_fields"))),
    ("dense: Jacobian determinant (finite differences)", (("core/jacobian.py", "jacobian_determinant_fd"),)),
    ("dense: numerical inverse", (("core/fields.py", "invert_displacement"),)),
    ("dense: inverse consistency", (("core/fields.py", "inverse_consistency"),)),
    ("dense: resampling (warped, inverse warped)", (("core/space.py", "sample_array"),)),
    ("write ANTs/ITK outputs", (("inrreg_pipeline/register.py", "write_outputs"),)),
    ("write: warps (1Warp, 1InverseWarp)", (("io/itk.py", "write_ants_displacement_field"),)),
    ("write: Composite.h5", (("io/itk.py", "write_itk_composite_h5"),)),
    ("write: InverseComposite.h5", (("io/itk.py", "write_itk_inverse_composite_h5"),)),
    ("write: images (Warped, InverseWarped, jacobian)", (("io/images.py", "save_image"),)),
)


def cumulative_seconds(stats: pstats.Stats, file_suffix: str, function: str) -> tuple[float, int]:
    """Cumulative seconds and primitive call count of ``function`` defined in a file ending in ``file_suffix``."""
    total, calls = 0.0, 0
    for (filename, _line, name), (primitive, _ncalls, _tottime, cumtime, _callers) in stats.stats.items():
        if name == function and filename.replace("\\", "/").endswith(file_suffix):
            total, calls = total + cumtime, calls + primitive
    return total, calls


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="BIDS folder shaped like OASIS-TRT-20")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--fixed", default="01")
    ap.add_argument("--moving", default="02")
    ap.add_argument("--spacing", type=float, default=1.0, help="resample to this many mm first (0: as stored)")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--iterations", type=int, default=None, help="deformable iterations (default: the preset's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    inputs = args.out / "inputs"
    inputs.mkdir(exist_ok=True)
    images = []
    for sub in (args.fixed, args.moving):
        t1w, _labels = oasis_pairs.find(args.data, sub, "DKT31")
        images.append(oasis_pairs.resample(t1w, inputs / f"sub-{sub}_T1w.nii.gz", args.spacing, 1))
    settings = load_preset(args.preset)
    method = method_for(settings)
    preset_iterations = method.iterations(settings)
    if args.iterations:
        if settings.method == "svf":  # the same share of every level's steps
            settings.svf.iterations = [max(1, round(n * args.iterations / preset_iterations))
                                       for n in settings.svf.iterations]
        else:
            settings.optimisation.iterations = args.iterations

    profiler = cProfile.Profile()
    t0 = time.perf_counter()
    profiler.enable()
    register_files(str(images[0]), str(images[1]), str(args.out / "pair_"), preset=settings, device=args.device,
                   threads=args.threads, progress=False)
    profiler.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(profiler)
    meta = json.loads((args.out / "pair_registration.json").read_text())

    parts = {}
    for part, functions in PARTS:
        found = [(cumulative_seconds(stats, suffix, function), function) for suffix, function in functions]
        seconds = sum(sec for (sec, _calls), _ in found)
        calls = sum(calls for (_sec, calls), _ in found)
        parts[part] = {"seconds": seconds, "calls": calls,
                       "function": "+".join(function for (_s, c), function in found if c) or functions[0][1]}
    iterations = method.iterations(settings)
    per_iteration = parts["deformable stage"]["seconds"] / max(iterations, 1)
    full = wall + per_iteration * (preset_iterations - iterations)
    result = {"preset": args.preset, "spacing_mm": args.spacing, "fixed_shape": list(nib.load(str(images[0])).shape),
              "device": meta["device"], "device_name": meta["device_name"], "threads": meta["threads"],
              "iterations_profiled": iterations, "preset_iterations": preset_iterations,
              "seconds_per_iteration": per_iteration, "wall_s": wall, "full_preset_wall_s_extrapolated": full,
              "memory": meta["memory"], "parts": parts, "versions": meta["versions"]}
    # the core's own clock of step 3 (dense outputs) and the writing, and their share of the wall time
    dense = float(meta["runtime_s"]["dense_outputs"])
    writing = parts["write ANTs/ITK outputs"]["seconds"]
    result["dense_outputs_s"] = dense
    result["dense_share"] = dense / wall
    result["dense_plus_writing_share"] = (dense + writing) / wall
    (args.out / "profile.json").write_text(json.dumps(result, indent=2))

    lines = [f"# Profile: preset {args.preset}, sub-{args.moving} -> sub-{args.fixed}, {args.spacing} mm, "
             f"{meta['device']} ({meta['device_name']}), {meta['threads']} threads",
             "", f"Fixed grid {result['fixed_shape']} voxels.", "",
             "| part | seconds | share of wall |", "|---|---|---|"]
    for part, row in parts.items():
        lines.append(f"| {part} | {row['seconds']:.2f} | {100 * row['seconds'] / wall:.0f}% |")
    lines += [f"| **whole pair (wall)** | **{wall:.2f}** | 100% |", "",
              f"- Dense outputs (the core's step 3, all of it): {dense:.1f} s, {100 * dense / wall:.1f}% of the wall "
              f"time; with the file writing {100 * (dense + writing) / wall:.1f}%.",
              f"- Deformable stage: {iterations} iterations profiled, {1000 * per_iteration:.1f} ms per iteration; "
              f"at the preset's {preset_iterations} iterations the pair would take about {full:.0f} s.",
              f"- Peak memory: {meta['memory']}."]
    (args.out / "profile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
