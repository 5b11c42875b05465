"""The embedded default: a real brain (nilearn's MNI152, ICBM 2009a) against a copy of itself under a
known smooth deformation and affine, stored on a different, oblique, anisotropic grid.

``inrreg demo -o DIR`` writes ``DIR/fixed.nii.gz``, ``DIR/moving.nii.gz`` (+ grey-matter maps), runs
``inrreg register`` on them and reports the error against the known truth and the tissue overlap.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from nilearn import datasets

from .apply import apply_transforms
from .core.space import SpatialImage, apply_affine, resolve_device, sample_labels, voxel_grid_to_world
from .io.images import load_image, save_image
from .io.itk import read_ants_displacement_field
from .metrics import label_overlap
from .register import register_files
from .synthetic import KnownDeformation, deform, random_deformation, registration_error


def oblique_grid(image: SpatialImage, spacing: tuple[float, ...] = (2.2, 2.0, 2.5), angle_deg: float = 10.0,
                 flip_first_axis: bool = True) -> tuple[tuple[int, ...], np.ndarray]:
    """A grid covering ``image``'s field of view with other voxel sizes, a rotation about the
    first world axis and (optionally) the first array axis reversed (an LAS-like orientation)."""
    d = image.ndim
    spacing = np.asarray(spacing[:d], dtype=float)
    a = np.deg2rad(angle_deg)
    rot = np.eye(d)
    if d == 3:
        rot[1:, 1:] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    else:
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    if flip_first_axis:
        rot[:, 0] *= -1
    lin = rot @ np.diag(spacing)
    world = image.world_grid().reshape(-1, d)
    centre = (world.min(0) + world.max(0)) / 2
    extent = world.max(0) - world.min(0)
    shape = tuple(int(np.ceil(n)) + 1 for n in (np.abs(np.linalg.inv(lin)) @ extent))
    affine = np.eye(d + 1)
    affine[:d, :d] = lin
    affine[:d, d] = centre - lin @ ((np.array(shape) - 1) / 2.0)
    return shape, affine


def make_demo_pair(out_dir: Path, seed: int = 7) -> tuple[dict[str, Path], KnownDeformation]:
    """Write the demo images; returns their paths and the true ``psi`` (moving -> fixed points)."""
    template = datasets.load_mni152_template(resolution=2)
    gm = datasets.load_mni152_gm_template(resolution=2)
    fixed = SpatialImage(np.asarray(template.get_fdata(), np.float32), template.affine)
    fixed_gm = SpatialImage(np.asarray(gm.get_fdata(), np.float32), gm.affine)
    psi = random_deformation(fixed, amplitude_mm=5.0, rotation_deg=6.0, translation_mm=6.0, seed=seed)
    shape, affine = oblique_grid(fixed)
    moving = deform(fixed, psi, shape, affine)
    moving_gm = deform(fixed_gm, psi, shape, affine)
    paths = {"fixed": out_dir / "fixed.nii.gz", "moving": out_dir / "moving.nii.gz",
             "fixed_gm": out_dir / "fixed_gm.nii.gz", "moving_gm": out_dir / "moving_gm.nii.gz"}
    save_image(fixed.data, fixed.affine, paths["fixed"])
    save_image(moving.data, moving.affine, paths["moving"])
    save_image((fixed_gm.data > 0.5).astype(np.int16), fixed.affine, paths["fixed_gm"], dtype=np.int16)
    save_image((moving_gm.data > 0.5).astype(np.int16), moving.affine, paths["moving_gm"], dtype=np.int16)
    return paths, psi


def run_demo(out_dir: str = "demo_output", preset: str = "fast", device: str = "auto", seed: int = 0,
             threads: int | None = None) -> dict:
    """Make the pair, register it, warp the grey-matter labels, and summarise (also as JSON)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, psi = make_demo_pair(out)
    prefix = str(out / "demo_")
    outputs = register_files(str(paths["fixed"]), str(paths["moving"]), prefix, preset=preset, device=device,
                             seed=seed, threads=threads)
    warped_gm = out / "demo_gm_warped.nii.gz"
    apply_transforms(str(paths["moving_gm"]), str(paths["fixed"]), [str(outputs["warp"]), str(outputs["affine"])],
                     str(warped_gm), interpolation="label")
    fixed = load_image(paths["fixed"])
    meta = json.loads(outputs["metadata"].read_text())
    grid = voxel_grid_to_world(fixed.shape, fixed.affine)
    brain = fixed.data > 0.1 * fixed.data.max()
    affine = np.asarray(meta["affine_matrix_ras"])
    field = load_image_field(outputs["warp"])
    err_before = registration_error(psi, grid, grid)[brain]
    err_affine = registration_error(psi, apply_affine(affine, grid), grid)[brain]
    err_after = registration_error(psi, apply_affine(affine, grid + field), grid)[brain]
    gm_fixed = load_image(paths["fixed_gm"]).data > 0
    gm_moving_on_fixed = deform_identity_labels(paths["moving_gm"], paths["fixed"])
    gm_warped = load_image(warped_gm).data > 0
    dice_before = label_overlap(gm_fixed.astype(int), gm_moving_on_fixed.astype(int), surface_distances=False)[0]["dice"]
    dice_after = label_overlap(gm_fixed.astype(int), gm_warped.astype(int), surface_distances=False)[0]["dice"]
    summary = {
        "outputs": {k: str(v) for k, v in outputs.items()},
        "error_mm_mean": {"before": float(err_before.mean()), "affine": float(err_affine.mean()),
                          "affine+inr": float(err_after.mean())},
        "grey_matter_dice": {"before": float(dice_before), "after": float(dice_after)},
        "percent_det_jacobian_nonpositive": meta["jacobian"]["percent_nonpositive_in_mask"],
        "runtime_s": meta["runtime_s"]["total"],
        "device": meta["device"],
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def load_image_field(path: Path) -> np.ndarray:
    field, _ = read_ants_displacement_field(str(path))
    return field


def deform_identity_labels(labels: Path, reference: Path) -> np.ndarray:
    """``labels`` resampled onto ``reference`` with no transform (the 'before registration' view)."""
    lab = load_image(labels)
    ref = load_image(reference)
    return sample_labels(np.rint(lab.data).astype(np.int32), lab.affine, ref.world_grid(), resolve_device("cpu"))
