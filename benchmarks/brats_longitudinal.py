#!/usr/bin/env python
"""Suite ``brats-longitudinal``: follow-up contrasts registered to the baseline T1w, target registration error.

Data: a BIDS folder shaped like ``../shared/data/brats-reg-002``: ``sub-S/ses-{baseline,followup}/anat/
sub-S_ses-X_{T1w,T2w,FLAIR}.nii.gz`` and ``derivatives/landmarks/sub-S/ses-X/anat/sub-S_ses-X_landmarks.csv``
(``Landmark,X,Y,Z`` in ITK/LPS mm; row k of one session corresponds to row k of the other).

For each follow-up contrast of ``--contrasts`` (moving) against the baseline T1w (fixed), both
resampled to ``--spacing`` mm (linear; world coordinates unchanged, so the landmarks still apply),
every method of ``--methods`` runs as ``inrreg register`` in its own process (one torch / ITK thread
with ``--threads 1``). Methods:

* ``ants-syn``: antspyx ``SyN`` (centre of mass, affine and SyN stages, all Mattes MI: the MI baseline);
* ``inr``: the core INR, ``multimodal`` preset (affine + SIREN, MI in both stages);
* ``two-network``: the two-network method, deformable motion: ``two-network-deformable-multimodal``
  for T2w/FLAIR, ``two-network-deformable`` (one image channel) for T1w.

TRE: the baseline (fixed) landmarks ``p_k`` are mapped through the estimated fixed -> moving point
map ``phi(x) = A(x + u(x))`` (``P0GenericAffine.mat`` and ``P1Warp.nii.gz``, ANTs' convention, ``u``
interpolated linearly) and compared with the follow-up (moving) landmarks ``q_k``:
``TRE_k = || phi(p_k) - q_k ||`` (mm, RAS). ``none`` is the identity (``|| p_k - q_k ||``).

Output in ``--out``: ``brats-longitudinal.tsv`` (one row per contrast and method: TRE mean / median /
max, runtime, % det J <= 0), ``landmarks.tsv`` (one row per landmark, contrast and method; the
``pair`` of :mod:`report` is ``contrast:landmark``) and :mod:`report` 's ``summary.md`` + box plots on
the landmarks (paired comparison of ``two-network`` against the others).

    OMP_NUM_THREADS=1 python benchmarks/brats_longitudinal.py --data ../shared/data/brats-reg-002 \\
        --out /tmp/brats --spacing 2 --threads 1
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_to_output
from scipy.ndimage import map_coordinates

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

from inrreg_pipeline.core.space import apply_affine  # noqa: E402
from inrreg_pipeline.io.itk import read_ants_displacement_field, read_itk_affine  # noqa: E402
from inrreg_pipeline.io.landmarks import read_landmarks  # noqa: E402
from inrreg_pipeline.io.tsv import write_rows_tsv  # noqa: E402
from inrreg_pipeline.metrics import target_registration_error, tre_summary  # noqa: E402

SUITE = "brats-longitudinal"
METHODS = ("ants-syn", "inr", "two-network")


def preset_for(method: str, contrast: str) -> str:
    if method == "ants-syn":
        return "ants-syn"
    if method == "inr":
        return "multimodal"
    return "two-network-deformable" if contrast == "T1w" else "two-network-deformable-multimodal"


def find_subject(data: Path, subject: str | None) -> str:
    if subject:
        return subject
    subs = sorted(p.name[4:] for p in data.glob("sub-*") if p.is_dir())
    if not subs:
        sys.exit(f"{SUITE}: no sub-* folder in {data}")
    return subs[0]


def session_file(data: Path, sub: str, ses: str, suffix: str) -> Path:
    path = data / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_{suffix}.nii.gz"
    if not path.exists():
        sys.exit(f"{SUITE}: missing {path}")
    return path


def landmarks_file(data: Path, sub: str, ses: str) -> Path:
    path = data / "derivatives" / "landmarks" / f"sub-{sub}" / f"ses-{ses}" / "anat" / f"sub-{sub}_ses-{ses}_landmarks.csv"
    if not path.exists():
        sys.exit(f"{SUITE}: missing {path}")
    return path


def resample(src: Path, dst: Path, spacing: float | None) -> Path:
    if dst.exists():
        return dst
    img = nib.load(str(src))
    if spacing:
        img = resample_to_output(img, voxel_sizes=spacing, order=1)
    out = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
    out.set_qform(img.affine, code=1)
    out.set_sform(img.affine, code=1)
    nib.save(out, str(dst))
    return dst


def map_points(points_ras: np.ndarray, affine_path: Path, warp_path: Path | None) -> np.ndarray:
    """``phi(p) = A(p + u(p))`` for RAS points: ``u`` from an ANTs warp (linear interpolation, edge
    values outside its grid), ``A`` from an ITK affine, as antsApplyTransformsToPoints with
    ``-t 1Warp -t 0GenericAffine`` maps fixed points to moving points."""
    p = np.asarray(points_ras, float)
    if warp_path is not None:
        field, grid = read_ants_displacement_field(warp_path)
        vox = apply_affine(np.linalg.inv(grid), p)
        u = np.stack([map_coordinates(field[..., k], vox.T, order=1, mode="nearest") for k in range(p.shape[1])], -1)
        p = p + u
    return apply_affine(read_itk_affine(affine_path), p)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--subject", default=None, help="subject label (default: the first sub-*)")
    ap.add_argument("--contrasts", nargs="+", default=["T2w", "FLAIR", "T1w"])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--spacing", type=float, default=2.0, help="resample to this isotropic spacing (mm; 0: keep)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--preset-override", action="append", default=[], metavar="METHOD=PRESET",
                    help="(tests) run METHOD with another preset name or JSON file")
    args = ap.parse_args(argv)
    overrides = dict(o.split("=", 1) for o in args.preset_override)

    sub = find_subject(args.data, args.subject)
    work = args.out / "inputs"
    work.mkdir(parents=True, exist_ok=True)
    fixed = resample(session_file(args.data, sub, "baseline", "T1w"), work / "baseline_T1w.nii.gz", args.spacing)
    p_fixed = read_landmarks(landmarks_file(args.data, sub, "baseline"))
    q_moving = read_landmarks(landmarks_file(args.data, sub, "followup"))
    if p_fixed.shape != q_moving.shape:
        sys.exit(f"{SUITE}: {len(p_fixed)} baseline landmarks but {len(q_moving)} follow-up landmarks")

    rows, landmark_rows = [], []

    def record(contrast: str, method: str, preset: str, mapped: np.ndarray, meta: dict | None, wall: float | None):
        errors = target_registration_error(mapped, q_moving)
        s = tre_summary(errors)
        rows.append({"suite": SUITE, "pair": f"followup-{contrast}_to_baseline-T1w", "method": method,
                     "preset": preset, "contrast": contrast, "spacing_mm": args.spacing,
                     "tre_mean_mm": s["mean_mm"], "tre_median_mm": s["median_mm"], "tre_max_mm": s["max_mm"],
                     "n_landmarks": s["n"],
                     "pct_detj_nonpos": meta["jacobian"]["percent_nonpositive_in_mask"] if meta else None,
                     "runtime_s": meta["runtime_s"]["total"] if meta else None, "wall_s": wall,
                     "peak_rss_mb": meta["memory"]["peak_rss_mb"] if meta else None,
                     "device": meta.get("device") if meta else None})
        for k, e in enumerate(errors, 1):
            landmark_rows.append({"suite": SUITE, "pair": f"{contrast}:L{k}", "method": method, "contrast": contrast,
                                  "landmark": k, "tre_mm": float(e)})
        print(f"{contrast:6s} {method:12s} TRE {s['mean_mm']:.2f} mm (median {s['median_mm']:.2f}, "
              f"max {s['max_mm']:.2f})" + (f", {wall:.0f} s" if wall else ""), flush=True)
        write_rows_tsv(rows, args.out / f"{SUITE}.tsv")
        write_rows_tsv(landmark_rows, args.out / "landmarks.tsv")

    for contrast in args.contrasts:
        moving = resample(session_file(args.data, sub, "followup", contrast), work / f"followup_{contrast}.nii.gz",
                          args.spacing)
        record(contrast, "none", "identity", p_fixed, None, None)
        for method in args.methods:
            preset = overrides.get(method, preset_for(method, contrast))
            prefix = args.out / method / f"followup-{contrast}_to_baseline-T1w_"
            prefix.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "inrreg_pipeline.cli", "register", str(fixed), str(moving), "-o", str(prefix),
                   "--preset", preset, "--device", args.device, "--seed", str(args.seed), "--no-progress",
                   "--threads", str(args.threads)]
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True)
            wall = time.perf_counter() - t0
            meta = json.loads(Path(f"{prefix}registration.json").read_text())
            mapped = map_points(p_fixed, Path(f"{prefix}0GenericAffine.mat"), Path(f"{prefix}1Warp.nii.gz"))
            record(contrast, method, preset, mapped, meta, wall)

    lines = ["| contrast | method | TRE mean mm | TRE median mm | TRE max mm | % det J <= 0 | runtime s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        f = lambda v, p=2: "n/a" if v is None else f"{v:.{p}f}"  # noqa: E731
        lines.append(f"| {r['contrast']} | {r['method']} | {f(r['tre_mean_mm'])} | {f(r['tre_median_mm'])} | "
                     f"{f(r['tre_max_mm'])} | {f(r['pct_detj_nonpos'], 3)} | {f(r['runtime_s'], 0)} |")
    table = "\n".join(lines) + "\n"
    (args.out / "tre.md").write_text(f"# {SUITE}, sub-{sub}, {args.spacing} mm\n\n" + table)
    print("\n" + table)
    report.write_report(args.out / "landmarks.tsv", args.out, metrics=["tre_mm"], reference="two-network",
                        title=f"{SUITE}: TRE per landmark (sub-{sub}, {args.spacing} mm)")


if __name__ == "__main__":
    main()
