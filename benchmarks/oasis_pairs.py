#!/usr/bin/env python
"""Inter-subject registration on a BIDS folder shaped like OASIS-TRT-20 (T1w + manual DKT31 labels).

For each moving subject: resample fixed and moving T1w (linear) and labels (nearest) to
``--spacing`` mm, run ``inrreg register`` as a separate process (so peak memory is per pair), warp
the moving labels label-aware through the affine alone and through affine + INR, and compute
Dice over the labels of ``--label-set`` (the 62 DKT31 cortical labels) and of ``--full-label-set``
(cortical + non-cortical, when present) against the fixed subject's labels. Transform quality
(% det J <= 0, SD log det J, and the non-diffeomorphic volume of the Learn2Reg LUMIR evaluation:
% of the brain's volume in folded tetrahedra) is computed from each method's written ``1Warp`` by
the same finite differences inside the fixed subject's labelled brain, the same region and code for
every method.

``pairs.tsv`` is rewritten after every pair, so a stopped run keeps what it finished, and
``--reuse`` takes an existing ``registration.json`` instead of registering again (to resume a run
or re-score outputs).

    python benchmarks/oasis_pairs.py --data ../shared/data/oasis-trt-20 --out benchmarks/results/oasis \\
        --fixed 01 --moving 02 03 04 05 --spacing 2 --preset fast
    python benchmarks/oasis_pairs.py --data ../shared/data/oasis-trt-20 --out OUT --split validation \\
        --preset default antspyx-syn-s greedy

``--split dev`` (sub-01 fixed, sub-02..05 moving) is the only data tuning may look at;
``--split validation`` (sub-06 fixed with sub-07..10, sub-07 fixed with sub-06, 08..10) is what is
reported (see :data:`SPLITS`).

Writes ``pairs.tsv`` (one row per pair, preset and stage, in :mod:`report`'s shape: ``suite``,
``pair``, ``method`` = preset, ``stage`` as the stratum, then the metrics), prints a Markdown
summary, and writes :mod:`report`'s ``summary.md`` and box plots into ``--out`` (paired comparison
of the first ``--preset`` against each other one, per stage).
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_to_output

sys.path.insert(0, str(Path(__file__).resolve().parent))
import report  # noqa: E402

from inrreg_pipeline.apply import apply_transforms
from inrreg_pipeline.io.itk import read_ants_displacement_field
from inrreg_pipeline.io.tsv import write_rows_tsv
from inrreg_pipeline.metrics import (folding_fraction, jacobian_determinant_from_displacement, label_overlap,
                                     log_jacobian_std, non_diffeomorphic_volume, summarise_overlap)


def labels_path(data: Path, sub: str, label_set: str) -> Path:
    return data / "derivatives" / "manual-labels" / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-{label_set}_dseg.nii.gz"


def find(data: Path, sub: str, label_set: str) -> tuple[Path, Path]:
    t1w = data / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz"
    labels = labels_path(data, sub, label_set)
    for p in (t1w, labels):
        if not p.exists():
            sys.exit(f"oasis_pairs: missing {p}")
    return t1w, labels


def jacobian_quality(warp: Path, brain: np.ndarray) -> dict:
    """% det J <= 0 and SD log det J inside ``brain`` (fixed grid), from the method's own written
    ``1Warp`` by the same central differences for every method (direction cosines honoured, as
    ANTs' CreateJacobianDeterminantImage), not from the Jacobian a method reports itself."""
    field, grid = read_ants_displacement_field(warp)
    det = jacobian_determinant_from_displacement(field, affine=grid).reshape(brain.shape)
    return {"pct_detj_nonpos": folding_fraction(det, brain), "sd_log_j": log_jacobian_std(det, brain),
            "ndv_pct": non_diffeomorphic_volume(field, grid, brain)}


def resample(src: Path, dst: Path, spacing: float | None, order: int) -> Path:
    if dst.exists():
        return dst
    img = nib.load(str(src))
    if spacing:
        img = resample_to_output(img, voxel_sizes=spacing, order=order)
    data = np.asanyarray(img.dataobj)
    out = nib.Nifti1Image(data.astype(np.int16 if order == 0 else np.float32), img.affine)
    out.set_qform(img.affine, code=1)
    out.set_sform(img.affine, code=1)
    nib.save(out, str(dst))
    return dst


def dice_summary(fixed_labels: Path, warped_labels: Path) -> dict:
    ref = np.asarray(nib.load(str(fixed_labels)).dataobj).astype(np.int32)
    test = np.asarray(nib.load(str(warped_labels)).dataobj).astype(np.int32)
    spacing = nib.load(str(fixed_labels)).header.get_zooms()[:3]
    rows = label_overlap(ref, test, labels=sorted(set(np.unique(ref)) - {0}), spacing=spacing)
    return summarise_overlap(rows)


def warp_and_score(moving_labels: Path, fixed_labels: Path, fixed: Path, chain: list[str], warped: Path) -> dict:
    """Warp ``moving_labels`` label-aware onto ``fixed``'s grid through ``chain`` (ANTs order), write it
    to ``warped`` and summarise its overlap with ``fixed_labels``."""
    apply_transforms(str(moving_labels), str(fixed), chain, str(warped), interpolation="label")
    return dice_summary(fixed_labels, warped)


def method_name(preset: str, seed: int = 0) -> str:
    """A preset's name in the tables and folders: the shipped name, or a preset file's stem; with a
    seed other than 0 (the default of ``inrreg register``), ``NAME-seedN``, so runs of one preset
    under several seeds are separate rows."""
    return Path(preset).stem + (f"-seed{seed}" if seed else "")


#: The fixed protocol of issue 14: tune on ``dev`` only; report ``validation``, whose subjects no
#: tuning decision saw (each a list of ``(fixed, moving)`` subject labels).
SPLITS: dict[str, list[tuple[str, str]]] = {
    "dev": [("01", m) for m in ("02", "03", "04", "05")],
    "validation": [("06", m) for m in ("07", "08", "09", "10")] + [("07", m) for m in ("06", "08", "09", "10")],
}


class Subject:
    """One subject's T1w and label sets resampled to the benchmark spacing (cached under ``work``)."""

    def __init__(self, data: Path, work: Path, sub: str, spacing: float | None, label_set: str, full_label_set: str):
        t1w, labels = find(data, sub, label_set)
        self.t1w = resample(t1w, work / f"sub-{sub}_T1w.nii.gz", spacing, 1)
        self.labels = resample(labels, work / f"sub-{sub}_dseg.nii.gz", spacing, 0)
        full = labels_path(data, sub, full_label_set)
        self.full = resample(full, work / f"sub-{sub}_full_dseg.nii.gz", spacing, 0) if full.exists() else None

    def brain(self) -> np.ndarray:
        """The labelled brain (full label set when present): where every method's regularity is measured."""
        return np.asarray(nib.load(str(self.full or self.labels)).dataobj) > 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--split", choices=sorted(SPLITS), default=None,
                    help="a fixed set of pairs (dev: sub-01 <- sub-02..05; validation: sub-06 <- 07..10 and "
                         "sub-07 <- 06, 08..10); replaces --fixed/--moving")
    ap.add_argument("--fixed", default="01")
    ap.add_argument("--moving", nargs="+", default=["02", "03", "04", "05"])
    ap.add_argument("--spacing", type=float, default=2.0)
    ap.add_argument("--preset", nargs="+", default=["fast"])
    ap.add_argument("--label-set", default="DKT31")
    ap.add_argument("--full-label-set", default="DKT31full", help="second label set (skipped when absent)")
    ap.add_argument("--reuse", action="store_true", help="reuse finished registrations (registration.json present)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0,
                    help="inrreg register's random seed (default 0); another seed names the rows NAME-seedN")
    args = ap.parse_args()

    pairs = SPLITS[args.split] if args.split else [(args.fixed, m) for m in args.moving]
    work = args.out / "inputs"
    work.mkdir(parents=True, exist_ok=True)
    subjects: dict[str, Subject] = {}

    def subject(sub: str) -> Subject:
        if sub not in subjects:
            subjects[sub] = Subject(args.data, work, sub, args.spacing, args.label_set, args.full_label_set)
        return subjects[sub]

    names = [method_name(p, args.seed) for p in args.preset]
    rows = []
    for fixed_sub, sub in pairs:
        f, m = subject(fixed_sub), subject(sub)
        brain = f.brain()
        for preset, name in zip(args.preset, names):
            prefix = args.out / name / f"sub-{sub}_to_sub-{fixed_sub}_"
            prefix.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "inrreg_pipeline.cli", "register", str(f.t1w), str(m.t1w), "-o", str(prefix),
                   "--preset", preset, "--device", args.device, "--no-progress", "--seed", str(args.seed)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            t0 = time.perf_counter()
            reused = args.reuse and Path(f"{prefix}registration.json").exists()
            if not reused:
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            wall = math.nan if reused else time.perf_counter() - t0
            meta = json.loads(Path(f"{prefix}registration.json").read_text())
            quality = jacobian_quality(Path(f"{prefix}1Warp.nii.gz"), brain)
            for stage, chain in (("affine", [f"{prefix}0GenericAffine.mat"]),
                                 ("affine+inr", [f"{prefix}1Warp.nii.gz", f"{prefix}0GenericAffine.mat"])):
                tag = stage.replace("+", "_")
                s = warp_and_score(m.labels, f.labels, f.t1w, chain, Path(f"{prefix}labels_{tag}.nii.gz"))
                s_full = {"mean_dice": math.nan}
                if f.full is not None and m.full is not None:
                    s_full = warp_and_score(m.full, f.full, f.t1w, chain, Path(f"{prefix}labelsfull_{tag}.nii.gz"))
                rows.append({"suite": "oasis-trt-20", "split": args.split or "custom",
                             "pair": f"sub-{sub}_to_sub-{fixed_sub}",
                             "method": name, "stage": stage, "fixed": f"sub-{fixed_sub}", "moving": f"sub-{sub}",
                             "spacing_mm": args.spacing, "dice_mean": s["mean_dice"], "dice_min": s["min_dice"],
                             "dice_mean_full": s_full["mean_dice"],
                             "hd95_mean_mm": s["mean_hd95_mm"], "n_labels": s["n_labels"],
                             **{k: (v if stage != "affine" else 0.0) for k, v in quality.items()},
                             "runtime_s": meta["runtime_s"]["total"], "wall_s": wall,
                             "peak_rss_mb": meta["memory"]["peak_rss_mb"],
                             "peak_gpu_mb": meta["memory"].get("peak_gpu_mb"), "device": meta["device"],
                             "threads": meta["threads"]})
                print({k: rows[-1][k] for k in ("pair", "method", "stage", "dice_mean", "dice_min", "pct_detj_nonpos",
                                                "sd_log_j", "runtime_s")}, flush=True)
            write_rows_tsv(rows, args.out / "pairs.tsv")
    print("\n| preset | stage | Dice mean | Dice min | HD95 mm | % det J <= 0 | SD log J | runtime s | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for preset in names:
        for stage in ("affine", "affine+inr"):
            sel = [r for r in rows if r["method"] == preset and r["stage"] == stage]
            m = lambda k: np.mean([r[k] for r in sel])  # noqa: E731
            s = lambda k: np.std([r[k] for r in sel])  # noqa: E731
            print(f"| {preset} | {stage} | {m('dice_mean'):.3f} +- {s('dice_mean'):.3f} | {m('dice_min'):.3f} | "
                  f"{m('hd95_mean_mm'):.2f} | {m('pct_detj_nonpos'):.4f} | {m('sd_log_j'):.3f} | "
                  f"{m('runtime_s'):.0f} | {m('peak_rss_mb'):.0f} |")

    where = f"split {args.split}" if args.split else f"sub-{args.fixed} fixed"
    report.write_report(args.out / "pairs.tsv", args.out, reference=names[0], strata=["stage"],
                        metrics=["dice_mean", "dice_min", "dice_mean_full", "hd95_mean_mm", "pct_detj_nonpos",
                                 "ndv_pct", "sd_log_j", "runtime_s", "peak_rss_mb"],
                        title=f"oasis-trt-20, {where}, {args.spacing} mm")
    report.trade_off_plot(report.read_rows(args.out / "pairs.tsv"), args.out, where={"stage": "affine+inr"})

if __name__ == "__main__":
    main()
