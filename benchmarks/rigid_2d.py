#!/usr/bin/env python
"""Suite ``rigid-2d``: recovery of known rigid motions of real 2-D slices (issue 4, methods.md section 2).

For every slice of ``--data`` (``*.nii.gz``, 2-D, any affine) in a seeded subset of ``--slices``:

* one rigid motion per level (:data:`LEVELS`), seeded by ``(--seed, slice index, level)``: a rotation
  about the centre of the image's field of view (world mm) by an angle whose magnitude is uniform in
  the level's band, random sign, then a translation whose length is uniform in the level's band
  (fraction of the image side, mm) in a uniformly random direction. ``T`` (fixed -> moving world
  points) is this motion; the moving image is ``M(y) = F'(T^-1 y)`` on the fixed grid (linear
  interpolation, 0 outside), so the true fixed -> moving map of a registration is ``T``;
* ``single``: ``F' = F``; ``multi``: ``F' = remap(F)``, a fixed non-monotonic intensity mapping
  (``--remap``: :func:`t2_like` -- background dark, CSF bright, grey matter brighter than white
  matter -- by default, or :func:`sin_remap`) applied to the fixed slice before the motion, a
  synthetic second contrast (the TSV's ``remap`` column names it);
* each method of ``--methods`` estimates the fixed -> moving rigid map; the error is the corner
  relative distance of methods.md section 2 (:func:`rigid_protocol.corner_relative_distance`,
  the 4 corners mapped by the estimate and the truth, mean distance / image side) and success
  is a distance below 2%.

Methods
-------
``two-network``   the two-network method with rigid motion (``inrreg register --method two-network
                  --motion rigid``: preset ``--two-network-preset``, default ``two-network-rigid``,
                  ``two_network.multimodal`` set for ``multi``); estimate = ``rigid_matrix_ras``.
``inr-affine``    the core INR's affine stage (centre of mass, rigid, then affine, coarse to fine;
                  preset ``default``'s NCC settings for ``single``, ``multimodal``'s MI for ``multi``);
                  estimate = its rigid part, the least-squares rigid fit (Kabsch) of the affine over
                  the fixed foreground. The deformable SIREN stage is not run: it does not change
                  the global map that this suite scores.
``ants-rigid``    antspyx ``ants.registration(type_of_transform="Rigid")`` (centre-of-mass
                  initialisation, antspyx's defaults otherwise) with ``aff_metric="meansquares"``
                  for ``single``, ``"mattes"`` (Mattes MI, 32 bins) for ``multi``; one ITK thread;
                  estimate = its ``0GenericAffine.mat`` read as a RAS map.

Output in ``--out``: ``rigid-2d.tsv`` (one row per slice, level, modality and method, written
after every pair; ``pair`` is ``<slice>/seed<seed>``, so runs with other seeds can be concatenated), ``levels.md`` (success rate and mean / median relative distance per level,
modality and method), and :mod:`report` 's ``summary.md`` + box plots (paired comparisons of
``two-network`` against the others within each level and modality).

    OMP_NUM_THREADS=1 python benchmarks/rigid_2d.py --data ../shared/data/oasis-2d --out /tmp/rigid2d \\
        --slices 20 --levels 1 2 3 4 --methods two-network inr-affine ants-rigid
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")  # before ANTs/ITK start

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402
from rigid_protocol import corner_relative_distance, rigid_success_rate  # noqa: E402

from inrreg_pipeline.core import load_preset, register  # noqa: E402
from inrreg_pipeline.core.affine import register_affine  # noqa: E402
from inrreg_pipeline.core.pair import prepare_pair  # noqa: E402
from inrreg_pipeline.core.space import SpatialImage, apply_affine, rescale_intensity  # noqa: E402
from inrreg_pipeline.core.two_network import kabsch  # noqa: E402
from inrreg_pipeline.io.images import load_image, save_image  # noqa: E402
from inrreg_pipeline.io.tsv import write_rows_tsv  # noqa: E402
from inrreg_pipeline.synthetic import KnownDeformation, deform  # noqa: E402

SUITE = "rigid-2d"
#: level -> ((min, max) |rotation| in degrees, (min, max) |translation| as a fraction of the image side)
LEVELS = {1: ((0.0, 5.0), (0.0, 0.05)),
          2: ((5.0, 15.0), (0.05, 0.10)),
          3: ((15.0, 25.0), (0.10, 0.15)),
          4: ((25.0, 40.0), (0.15, 0.20))}
MODALITIES = ("single", "multi")
METHODS = ("two-network", "inr-affine", "ants-rigid")
SUCCESS = 0.02


def t2_like(data: np.ndarray) -> np.ndarray:
    """Fixed non-monotonic intensity mapping (T1-like -> T2-like) of an image rescaled to [0, 1]
    (0.5/99.5 percentiles): 0 -> 0, 0.15 -> 0.2, 0.35 -> 1.0, 0.7 -> 0.6, 0.9 -> 0.35, 1 -> 0.3,
    piecewise linear (the remapping of tests/test_two_network.py)."""
    v = rescale_intensity(data)
    return np.interp(v, [0, 0.15, 0.35, 0.7, 0.9, 1], [0, 0.2, 1.0, 0.6, 0.35, 0.3]).astype(np.float32)


def sin_remap(data: np.ndarray) -> np.ndarray:
    """A harder non-monotonic mapping: ``(sin(3 pi v) + 1) / 2`` of the [0, 1]-rescaled image, with
    the background (v < 0.05) kept at 0."""
    v = rescale_intensity(data)
    return np.where(v < 0.05, 0.0, (np.sin(3 * np.pi * v) + 1) / 2).astype(np.float32)


REMAPS = {"t2-like": t2_like, "sin3pi": sin_remap}


def image_side_mm(image: SpatialImage) -> float:
    """The side length of the protocol: mean of the field-of-view extents (n_i * spacing_i)."""
    return float(np.mean(np.asarray(image.shape) * image.spacing))


def fov_centre(image: SpatialImage) -> np.ndarray:
    grid = image.world_grid().reshape(-1, image.ndim)
    return (grid.min(0) + grid.max(0)) / 2.0


def draw_motion(image: SpatialImage, level: int, seed: int, index: int) -> tuple[np.ndarray, float, np.ndarray]:
    """``(T, angle_deg, translation_mm)``: the seeded rigid motion of ``level`` for slice ``index``;
    ``T`` (3x3, world RAS mm, fixed -> moving) rotates about the field-of-view centre, then translates."""
    rng = np.random.default_rng([seed, index, level])
    (r_lo, r_hi), (t_lo, t_hi) = LEVELS[level]
    angle = rng.uniform(r_lo, r_hi) * rng.choice([-1.0, 1.0])
    length = rng.uniform(t_lo, t_hi) * image_side_mm(image)
    direction = rng.uniform(0.0, 2.0 * np.pi)
    translation = length * np.array([np.cos(direction), np.sin(direction)])
    a = np.deg2rad(angle)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = fov_centre(image)
    t = np.eye(3)
    t[:2, :2] = rot
    t[:2, 2] = c - rot @ c + translation
    return t, float(angle), translation


def make_moving(fixed: SpatialImage, motion: np.ndarray, modality: str, remap: str = "t2-like") -> SpatialImage:
    """``M(y) = F'(T^-1 y)`` on the fixed grid (``F'`` remapped by ``REMAPS[remap]`` for ``multi``)."""
    source = fixed.with_data(REMAPS[remap](fixed.data)) if modality == "multi" else fixed
    psi = KnownDeformation(np.linalg.inv(motion), np.zeros((0, 2)), np.zeros((0, 2)), 1.0)
    return deform(source, psi)


def image_frame(matrix: np.ndarray, image: SpatialImage) -> np.ndarray:
    """A world point map in the image's own mm frame (voxel index x spacing), as the protocol expects."""
    to_frame = np.diag(list(image.spacing) + [1.0]) @ np.linalg.inv(image.affine)
    return to_frame @ matrix @ np.linalg.inv(to_frame)


def relative_distance(estimate: np.ndarray, truth: np.ndarray, image: SpatialImage) -> float:
    return corner_relative_distance(image_frame(estimate, image), image_frame(truth, image), image.shape,
                                    image.spacing)


# --- methods: each returns the estimated fixed -> moving world map (3x3) --------------------------

def run_two_network(fixed, moving, modality, args, device):
    settings = copy.deepcopy(load_preset(args.two_network_preset))
    settings.two_network.motion = "rigid"
    settings.two_network.multimodal = modality == "multi"
    result = register(fixed, moving, settings, device, seed=args.seed)
    return np.asarray(result.summary["rigid_matrix_ras"])


def run_inr_affine(fixed, moving, modality, args, device):
    settings = load_preset("multimodal" if modality == "multi" else "default")
    pair = prepare_pair(fixed, moving, device, args.seed)
    affine, _ = register_affine(pair.fixed_norm, pair.moving_norm, settings.affine, device, pair.rng)
    grid = fixed.world_grid()[pair.sampling_mask]
    return kabsch(grid, apply_affine(affine, grid))


def run_ants_rigid(fixed, moving, modality, args, device):
    import ants

    from inrreg_pipeline.io.itk import read_itk_affine

    with tempfile.TemporaryDirectory(prefix="rigid2d-ants-") as tmp:
        paths = [Path(tmp) / "fixed.nii.gz", Path(tmp) / "moving.nii.gz"]
        for img, path in zip((fixed, moving), paths):
            save_image(img.data, img.affine, path)
        out = ants.registration(ants.image_read(str(paths[0])), ants.image_read(str(paths[1])),
                                type_of_transform="Rigid",
                                aff_metric="meansquares" if modality == "single" else "mattes",
                                random_seed=args.seed + 1, outprefix=str(Path(tmp) / "ants_"))
        mats = [t for t in out["fwdtransforms"] if t.endswith(".mat")]
        if len(mats) != 1:
            raise RuntimeError(f"ANTs Rigid wrote {out['fwdtransforms']}")
        return read_itk_affine(mats[0])


RUNNERS = {"two-network": run_two_network, "inr-affine": run_inr_affine, "ants-rigid": run_ants_rigid}


def pick_slices(data: Path, n: int | None, seed: int) -> list[Path]:
    files = sorted(data.glob("*.nii.gz")) + sorted(data.glob("*.nii"))
    if not files:
        sys.exit(f"rigid_2d: no NIfTI slices in {data}")
    if n is not None and n < len(files):
        keep = np.sort(np.random.default_rng(seed).choice(len(files), size=n, replace=False))
        files = [files[i] for i in keep]
    return files


def levels_table(rows: list[dict]) -> str:
    """Markdown: success rate, mean and median relative distance per level, modality and method."""
    lines = ["| modality | level | method | n | success rate | mean rel. distance | median rel. distance |"
             " mean runtime s |", "|---|---|---|---|---|---|---|---|"]
    for modality in MODALITIES:
        for level in sorted({r["level"] for r in rows}):
            for method in METHODS:
                sel = [r for r in rows if r["modality"] == modality and r["level"] == level and r["method"] == method]
                if not sel:
                    continue
                d = np.array([r["relative_distance"] for r in sel], float)
                rate = rigid_success_rate(d, SUCCESS)
                lines.append(f"| {modality} | {level} | {method} | {len(sel)} | {100 * rate:.0f}% | "
                             f"{np.nanmean(d):.4f} | {np.nanmedian(d):.4f} | "
                             f"{np.mean([r['runtime_s'] for r in sel]):.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path, help="folder of 2-D NIfTI slices (e.g. oasis-2d)")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--slices", type=int, default=None, help="seeded subset of this many slices (default: all)")
    ap.add_argument("--levels", type=int, nargs="+", default=sorted(LEVELS), choices=sorted(LEVELS))
    ap.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--remap", default="t2-like", choices=sorted(REMAPS),
                    help="intensity mapping that makes the multi-modal moving image (default: t2-like)")
    ap.add_argument("--two-network-preset", default="two-network-rigid", metavar="NAME|FILE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (ANTs: 1)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    tsv = args.out / f"{SUITE}.tsv"
    slices = pick_slices(args.data, args.slices, args.seed)
    print(f"{SUITE}: {len(slices)} slices x levels {args.levels} x {args.modalities} x {args.methods}", flush=True)
    rows: list[dict] = []
    t_start = time.perf_counter()
    for index, path in enumerate(slices):
        fixed = load_image(path, "slice", ndim=2)
        name = path.name.split(".")[0]
        for level in args.levels:
            motion, angle, translation = draw_motion(fixed, level, args.seed, index)
            identity = relative_distance(np.eye(3), motion, fixed)
            for modality in args.modalities:
                moving = make_moving(fixed, motion, modality, args.remap)
                for method in args.methods:
                    t0 = time.perf_counter()
                    error = ""
                    try:
                        estimate = RUNNERS[method](fixed, moving, modality, args, device)
                        distance = relative_distance(estimate, motion, fixed)
                    except Exception as err:  # a failed registration is a failure, not a crash
                        distance, error = float("nan"), f"{type(err).__name__}: {err}".replace("\t", " ")[:200]
                    rows.append({"suite": SUITE, "pair": f"{name}/seed{args.seed}", "method": method, "level": level,
                                 "modality": modality,
                                 "remap": "none" if modality == "single" else args.remap, "rotation_deg": angle,
                                 "translation_mm": float(np.linalg.norm(translation)),
                                 "initial_distance": identity, "relative_distance": distance,
                                 "success": float(distance < SUCCESS),
                                 "runtime_s": time.perf_counter() - t0, "device": str(device), "error": error})
                    print(f"{name} L{level} {modality:6s} {method:12s} rot {angle:+6.1f} deg  "
                          f"d0 {identity:.3f} -> {distance:.4f} {'ok' if distance < SUCCESS else 'FAIL'} "
                          f"{rows[-1]['runtime_s']:.1f}s {error}", flush=True)
                    write_rows_tsv(rows, tsv)
    total = time.perf_counter() - t_start
    table = levels_table(rows)
    header = (f"# {SUITE}\n\n{len(slices)} slices of {args.data}, seed {args.seed}, levels {args.levels}, "
              f"multi-modal remap {args.remap}; "
              f"{platform.node() or 'host'}, {args.device}, {args.threads} thread(s); total {total / 60:.1f} min.\n\n"
              "Levels (|rotation| deg, |translation| fraction of side): "
              + "; ".join(f"{k}: {r[0]:g}-{r[1]:g} deg, {100 * t[0]:g}-{100 * t[1]:g}%"
                          for k, (r, t) in LEVELS.items() if k in args.levels) + "\n\n")
    (args.out / "levels.md").write_text(header + table)
    print("\n" + table)
    reference = "two-network" if "two-network" in args.methods else None
    report.write_report(tsv, args.out, metrics=["success", "relative_distance", "runtime_s"], reference=reference,
                        strata=["modality", "level"], title=f"{SUITE} ({len(slices)} slices)")


if __name__ == "__main__":
    main()
