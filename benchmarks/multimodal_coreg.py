#!/usr/bin/env python
"""Suite ``multimodal-coreg``: same-session contrasts to the T1w under a known (synthetic) rigid motion.

Intra-subject cross-contrast co-registration (T2w, FLAIR, PDw to the T1w of the same head, what
``init_multimodal_coreg_wf`` does) is a rigid problem. This suite measures how well a method
recovers a rigid motion that is *known* because it was added: the BraTS-Reg baseline session's
T2w and FLAIR are co-registered to its T1w by the data provider (same 1 mm grid, skull-stripped),
so the true map between them is the identity before the motion.

Data: a BIDS folder shaped like ``../shared/data/brats-reg-002``
(``sub-S/ses-baseline/anat/sub-S_ses-baseline_{T1w,T2w,FLAIR}.nii.gz``).

Pairs (fixed: the T1w, downsampled ``--spacing`` times from 1 mm by :func:`~inrreg_pipeline.core.space.downsample`):

* ``T2w``, ``FLAIR``: that image on an isotropic ``--spacing`` mm grid offset by half a source
  voxel from the T1w's (so the two grids do not sample the same points), Gaussian-smoothed by
  ``sigma = spacing / 2`` source voxels per axis, then moved;
* ``PDw-aniso``: a stand-in for a PDw acquired at 0.9 x 0.9 x 2.4 mm (the PDw of issue 16): the T2w
  resampled onto a 0.9 x 0.9 x 2.4 mm grid (2.4 mm along the third, superior, voxel axis; the same
  smoothing rule per axis), then moved.

The motion ``B`` (RAS mm, a rotation about the T1w brain's centre then a translation;
``--rotation-deg`` about x, y, z and ``--translation-mm``) is put in the moving image's affine
(``affine_moving = B @ affine_grid``): the anatomy at moving world point ``B x`` is the anatomy at
``x``. A perfect registration's fixed -> moving point map is therefore ``phi(x) = B x`` and the
error at a fixed point is ``|| phi(x) - B x ||`` (mm), reported (mean / 95th percentile / max) over
the fixed brain mask (T1w > 0: the data are skull-stripped). ``--case aligned`` also runs each pair
with ``B = I``: then the error is the displacement the method introduces on a pair already aligned.

Methods (``--methods``): any INR preset name or JSON file (run in this process with
:func:`inrreg_pipeline.core.register` on the images above, ``phi(x) = A(x + u(x))``; runtime is the
registration's own ``runtime_s.total``), and ``ants-rigid``: ``ants.registration(type_of_transform=
"Rigid", aff_metric="mattes")`` (antspyx; Mattes mutual information, ANTs' default 32 bins and
sampling; its ``0GenericAffine.mat`` read as the RAS fixed -> moving matrix; runtime is the call's
wall time), the registration fMRIPrep-style pipelines run for this step.

Output in ``--out``: ``multimodal-coreg.tsv`` (one row per pair, case and method) and ``table.md``.

    OMP_NUM_THREADS=2 python benchmarks/multimodal_coreg.py --data ../shared/data/brats-reg-002 \\
        --out /tmp/mmcoreg --spacing 2 --threads 2 --methods two-network-rigid-multimodal \\
        two-network-deformable ants-rigid
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates

from inrreg_pipeline.core.space import SpatialImage, apply_affine, downsample
from inrreg_pipeline.io.tsv import write_rows_tsv

SUITE = "multimodal-coreg"
PAIRS = ("T2w", "FLAIR", "PDw-aniso")
#: voxel size (mm) of the anisotropic PDw stand-in, along the source image's voxel axes
ANISO_SPACING = (0.9, 0.9, 2.4)


def rotation(degrees: tuple[float, float, float]) -> np.ndarray:
    """``Rz Ry Rx`` (3 x 3) for rotations of ``degrees`` about the RAS x, y, z axes."""
    rx, ry, rz = np.deg2rad(degrees)
    mx = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    my = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    mz = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return mz @ my @ mx


def rigid_motion(centre: np.ndarray, degrees: tuple[float, float, float],
                 translation_mm: tuple[float, float, float]) -> np.ndarray:
    """``B(x) = R (x - c) + c + t`` as a 4 x 4 RAS matrix (mm)."""
    b = np.eye(4)
    b[:3, :3] = rotation(degrees)
    b[:3, 3] = centre - b[:3, :3] @ centre + np.asarray(translation_mm, float)
    return b


def load(path: Path) -> SpatialImage:
    img = nib.load(str(path))
    return SpatialImage(np.asarray(img.get_fdata(), np.float32), img.affine)


def resample_grid(source: SpatialImage, spacing: tuple[float, float, float]) -> SpatialImage:
    """``source`` on an axis-aligned grid (the source's voxel axes) of voxel size ``spacing`` mm over
    the same field of view, offset by half a source voxel, after Gaussian smoothing of
    ``spacing / 2`` source voxels per axis (as :func:`downsample`); trilinear."""
    src_spacing = np.sqrt((source.affine[:3, :3] ** 2).sum(0))
    step = np.asarray(spacing, float) / src_spacing                   # grid step in source voxels
    shape = tuple(int(np.floor((n - 1.5) / s)) + 1 for n, s in zip(source.shape, step))
    sigma = [max(s / 2.0, 0.0) if s > 1 else 0.0 for s in step]
    smooth = gaussian_filter(source.data.astype(np.float32), sigma=sigma, mode="constant")
    index = np.stack(np.meshgrid(*[0.5 + s * np.arange(n) for s, n in zip(step, shape)], indexing="ij"), -1)
    data = map_coordinates(smooth, index.reshape(-1, 3).T, order=1, mode="constant", cval=0.0).reshape(shape)
    grid_to_src = np.eye(4)
    grid_to_src[:3, :3] = np.diag(step)
    grid_to_src[:3, 3] = 0.5
    return SpatialImage(data.astype(np.float32), source.affine @ grid_to_src)


def run_inr(preset: str, fixed: SpatialImage, moving: SpatialImage, seed: int) -> tuple[np.ndarray, float]:
    """``phi(x)`` at the fixed voxel centres (mm, RAS) and the registration's runtime (s)."""
    import torch

    from inrreg_pipeline.core import register
    from inrreg_pipeline.presets import resolve

    result = register(fixed, moving, resolve(preset), torch.device("cpu"), seed=seed)
    mapped = apply_affine(result.affine, fixed.world_grid() + result.displacement)
    return mapped, float(result.summary["runtime_s"]["total"])


def run_ants_rigid(fixed: SpatialImage, moving: SpatialImage, seed: int) -> tuple[np.ndarray, float]:
    """ANTs rigid Mattes (antspyx): ``phi(x)`` at the fixed voxel centres and the call's wall time (s)."""
    import ants

    from inrreg_pipeline.io.images import save_image
    from inrreg_pipeline.io.itk import read_itk_affine

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, image in (("fixed", fixed), ("moving", moving)):
            paths.append(os.path.join(tmp, f"{name}.nii.gz"))
            save_image(image.data, image.affine, paths[-1])
        f_img, m_img = ants.image_read(paths[0]), ants.image_read(paths[1])
        t0 = time.perf_counter()
        reg = ants.registration(f_img, m_img, type_of_transform="Rigid", aff_metric="mattes",
                                random_seed=seed + 1, outprefix=os.path.join(tmp, "ants_"))
        wall = time.perf_counter() - t0
        matrix = read_itk_affine(reg["fwdtransforms"][0])
    return apply_affine(matrix, fixed.world_grid()), wall


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--subject", default="002")
    ap.add_argument("--session", default="baseline")
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=PAIRS)
    ap.add_argument("--methods", nargs="+", default=["two-network-rigid-multimodal", "two-network-deformable",
                                                    "ants-rigid"])
    ap.add_argument("--cases", nargs="+", default=["moved"], choices=["moved", "aligned"])
    ap.add_argument("--spacing", type=int, default=2, help="fixed T1w and isotropic moving spacing (mm, integer)")
    ap.add_argument("--rotation-deg", nargs=3, type=float, default=[4.0, -3.0, 5.0])
    ap.add_argument("--translation-mm", nargs=3, type=float, default=[3.0, -4.0, 2.5])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads))
    import torch

    torch.set_num_threads(args.threads)

    anat = args.data / f"sub-{args.subject}" / f"ses-{args.session}" / "anat"
    prefix = f"sub-{args.subject}_ses-{args.session}"
    files = {s: anat / f"{prefix}_{s}.nii.gz" for s in ("T1w", "T2w", "FLAIR")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        sys.exit(f"{SUITE}: missing {', '.join(missing)}")
    t1 = load(files["T1w"])
    fixed = downsample(t1, args.spacing)
    brain = downsample(t1.with_data((t1.data > 0).astype(np.float32)), args.spacing).data > 0.5
    grid = fixed.world_grid()
    centre = grid[brain].mean(0)
    iso = (float(args.spacing),) * 3
    sources = {"T2w": ("T2w", iso), "FLAIR": ("FLAIR", iso), "PDw-aniso": ("T2w", ANISO_SPACING)}
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for pair in args.pairs:
        suffix, spacing = sources[pair]
        on_grid = resample_grid(load(files[suffix]), spacing)
        for case in args.cases:
            motion = rigid_motion(centre, args.rotation_deg, args.translation_mm) if case == "moved" else np.eye(4)
            moving = on_grid.with_data(on_grid.data)
            moving.affine = motion @ on_grid.affine
            truth = apply_affine(motion, grid)
            start = np.linalg.norm(grid - truth, axis=-1)[brain]
            for method in args.methods:
                if method == "ants-rigid":
                    mapped, seconds = run_ants_rigid(fixed, moving, args.seed)
                else:
                    mapped, seconds = run_inr(method, fixed, moving, args.seed)
                err = np.linalg.norm(mapped - truth, axis=-1)[brain]
                rows.append({"suite": SUITE, "pair": f"{pair}_to_T1w", "case": case, "method": method,
                             "fixed_spacing_mm": args.spacing, "moving_spacing_mm": "x".join(f"{s:g}" for s in spacing),
                             "motion_mean_mm": float(start.mean()), "error_mean_mm": float(err.mean()),
                             "error_p95_mm": float(np.percentile(err, 95)), "error_max_mm": float(err.max()),
                             "runtime_s": seconds})
                print(f"{pair:10s} {case:8s} {method:32s} error {err.mean():.2f} / {np.percentile(err, 95):.2f} / "
                      f"{err.max():.2f} mm (motion {start.mean():.2f} mm), {seconds:.0f} s", flush=True)
                write_rows_tsv(rows, args.out / f"{SUITE}.tsv")
    lines = ["| pair | case | method | motion mean mm | error mean mm | error p95 mm | error max mm | runtime s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['pair']} ({r['moving_spacing_mm']} mm) | {r['case']} | {r['method']} | "
                     f"{r['motion_mean_mm']:.2f} | {r['error_mean_mm']:.2f} | {r['error_p95_mm']:.2f} | "
                     f"{r['error_max_mm']:.2f} | {r['runtime_s']:.0f} |")
    table = "\n".join(lines) + "\n"
    (args.out / "table.md").write_text(table)
    print("\n" + table)


if __name__ == "__main__":
    main()
