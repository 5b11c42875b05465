#!/usr/bin/env python
"""Same seed, same numbers: a record of every shipped method's losses and result on fixed pairs,
to compare two commits (a refactor must leave them unchanged up to float noise).

``record`` runs, in this process with one thread and seed 0, each shipped preset of the core
(and every variant ``method``) at a few iterations on nilearn's MNI152 at 6 mm against a copy under a
known smooth deformation, plus, when given, full presets on real pairs (``--pair FIXED MOVING``,
``--preset``), and writes one JSON: per run the final affine, the loss history's first and last
values, the Jacobian summary and the error against the known deformation (synthetic pair only).
``compare A.json B.json`` prints the largest relative difference of every number and exits 1 when
one exceeds ``--rtol``.

    python benchmarks/same_seed.py record --out before.json
    python benchmarks/same_seed.py record --out before.json --pair F.nii.gz M.nii.gz --preset default
    python benchmarks/same_seed.py compare before.json after.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from inrreg_pipeline.core.config import RegistrationSettings, _fill, _overlay, available_presets, validate
from inrreg_pipeline.core.registration import register
from inrreg_pipeline.core.space import SpatialImage
from inrreg_pipeline.io.images import load_image
from inrreg_pipeline.synthetic import deform, random_deformation

#: Few-iteration overrides laid over each preset (the shapes of the methods, not their accuracy).
QUICK = {"affine": {"shrink_factors": [2, 1], "iterations": [15, 10], "rigid_iterations": 10, "samples": 2000},
         "network": {"hidden_layers": 2, "hidden_features": 32},
         "optimisation": {"iterations": 12, "patch_size": 8, "patches": 2, "regulariser_points": 256},
         "inverse_iterations": 5,
         "two_network": {"iterations": 15, "points": 512},
         "svf": {"iterations": [6, 6]},
         "variants": {"cascade_iterations": [], "ensemble_omegas": [15.0, 30.0]}}
VARIANTS = ("joint-affine", "ensemble", "cascade", "cycle", "fusion")
OMEGA_MODES = ("trainable", "width", "attention")


def synthetic_pair() -> tuple[SpatialImage, SpatialImage]:
    from nilearn import datasets
    from nibabel.processing import resample_to_output

    img = resample_to_output(datasets.load_mni152_template(resolution=2), voxel_sizes=6.0, order=1)
    fixed = SpatialImage(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    psi = random_deformation(fixed, amplitude_mm=5.0, rotation_deg=4.0, translation_mm=4.0, seed=3)
    return fixed, deform(fixed, psi)


def preset_values(name: str) -> dict:
    from inrreg_pipeline.core.config import _preset_path, _preset_values

    values = _preset_values(_preset_path(name), chain=())
    values.setdefault("name", name)
    return values


def label_dice(result, fixed: SpatialImage, labels: tuple[str, str]) -> float:
    """Mean Dice over the fixed labels of the moving labels sampled (nearest) at ``A(x + u(x))``."""
    from scipy.ndimage import map_coordinates

    from inrreg_pipeline.core.space import apply_affine, voxel_grid_to_world

    ref, mov = (load_image(p) for p in labels)
    world = apply_affine(result.affine, voxel_grid_to_world(fixed.shape, fixed.affine) + result.displacement)
    idx = apply_affine(np.linalg.inv(mov.affine), world.reshape(-1, fixed.ndim))
    warped = map_coordinates(mov.data, idx.T, order=0, mode="constant").reshape(fixed.shape)
    values = sorted(set(np.unique(ref.data).astype(int)) - {0})
    dice = [2 * np.sum((ref.data == v) & (warped == v)) / max(np.sum(ref.data == v) + np.sum(warped == v), 1)
            for v in values]
    return float(np.mean(dice))


def run(fixed: SpatialImage, moving: SpatialImage, values: dict, labels: tuple[str, str] | None = None) -> dict:
    settings = validate(_fill(RegistrationSettings, values, values.get("name", "custom")))
    result = register(fixed, moving, settings, torch.device("cpu"), seed=0)
    s = result.summary
    extra = {"dice_mean": label_dice(result, fixed, labels)} if labels else {}
    return {**extra, "affine": np.asarray(result.affine).round(6).tolist(), "loss": s["loss"], "jacobian": s["jacobian"],
            "inverse_consistency": s["inverse_consistency"],
            "displacement_abs_mean_mm": float(np.abs(result.displacement).mean()),
            "warped_mean": float(np.mean(result.warped)), **{k: v for k, v in s.items() if k in ("variant", "two_network")}}


def record(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    runs: dict[str, dict] = {}
    fixed, moving = synthetic_pair()
    # every shipped preset but sloppy (the inrreg-bids --sloppy preset: QUICK's shape, nothing more to record)
    names = [p for p in available_presets() if p != "sloppy"] + [f"variant:{v}" for v in VARIANTS]
    names += [f"omega:{m}" for m in OMEGA_MODES]
    for name in names:
        kind, _, value = name.partition(":")
        base = preset_values("fast" if value else name)
        if kind == "variant":
            base = {**base, "method": value, "name": f"variant-{value}"}
        elif kind == "omega":
            base = {**base, "variants": {"omega_mode": value}, "name": f"omega-{value}"}
        runs[name] = run(fixed, moving, _overlay(base, QUICK))
        print(name, runs[name]["loss"], flush=True)
    for i, (f, m) in enumerate(args.pair or []):
        labels = tuple(args.labels[i]) if args.labels and i < len(args.labels) else None
        for preset in args.preset:
            key = f"{Path(m).name}->{Path(f).name}:{preset}"
            runs[key] = run(load_image(f), load_image(m), preset_values(preset), labels)
            print(key, runs[key]["loss"], flush=True)
    Path(args.out).write_text(json.dumps(runs, indent=1, sort_keys=True))


def numbers(value, where=""):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from numbers(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from numbers(v, f"{where}[{i}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield where, float(value)


def compare(args: argparse.Namespace) -> None:
    a, b = (json.loads(Path(p).read_text()) for p in (args.a, args.b))
    worst = 0.0
    for key in sorted(set(a) | set(b)):
        if key not in a or key not in b:
            print(f"{key}: only in {'A' if key in a else 'B'}")
            worst = np.inf
            continue
        na, nb = dict(numbers(a[key])), dict(numbers(b[key]))
        diffs = [abs(na[k] - nb[k]) / max(abs(na[k]), 1e-8) for k in na if k in nb]
        missing = sorted(set(na) ^ set(nb))
        d = max(diffs, default=0.0)
        worst = max(worst, d, np.inf if missing else 0.0)
        print(f"{key}: max relative difference {d:.2e}" + (f"; keys in one only: {missing}" if missing else ""))
    print(f"worst: {worst:.2e} (rtol {args.rtol:g})")
    sys.exit(0 if worst <= args.rtol else 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    r = sub.add_parser("record")
    r.add_argument("--out", required=True)
    r.add_argument("--pair", nargs=2, action="append", metavar=("FIXED", "MOVING"))
    r.add_argument("--labels", nargs=2, action="append", metavar=("FIXED_LABELS", "MOVING_LABELS"),
                   help="label maps of the --pair of the same position: Dice recorded")
    r.add_argument("--preset", nargs="+", default=["default"])
    c = sub.add_parser("compare")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--rtol", type=float, default=1e-5)
    args = ap.parse_args()
    (record if args.command == "record" else compare)(args)


if __name__ == "__main__":
    main()
