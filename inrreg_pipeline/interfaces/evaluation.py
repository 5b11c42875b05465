"""Evaluation interfaces: label overlap, transform quality, landmark error, and table merging.

Numbers come from :mod:`inrreg_pipeline.metrics` (physical units, documented definitions); files
are read and written by :mod:`inrreg_pipeline.io` (landmarks into RAS mm, transforms in ITK's LPS
converted there, tables as BIDS-style TSV with ``n/a`` for missing values). ``tags`` (e.g. ``{"method": "inr"}``) are written
as the first columns of every row, so tables of several methods can be merged with
:class:`MergeTables`.
"""
from __future__ import annotations

import csv
import json
import math
from typing import Any

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from ..core.geometry import voxel_grid_to_world
from ..core.transform import DisplacementField
from ..io.images import InputError, load_image, save_image
from ..io.itk import read_ants_displacement_field, read_transform_chain
from ..io.landmarks import read_landmarks
from ..io.tsv import read_rows_tsv, write_rows_tsv
from ..metrics import (jacobian_determinant_from_displacement, jacobian_statistics, label_overlap,
                       summarise_overlap, tre_summary)
from ..metrics.landmarks import landmark_errors
from ..metrics.overlap import STATUS_MISSING_IN_TEST, STATUS_OK
from .base import fail, optional, output_path


def _tags(value) -> dict:
    tags = optional(value) or {}
    return {str(k): str(v) for k, v in dict(tags).items()}


def _finite(value) -> float:
    value = float(value)
    return value if math.isfinite(value) else float("nan")


def _load_labels(path: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Integer labels and voxel -> RAS affine of a label map; :func:`fail` for a bad file."""
    try:
        img = load_image(path, name)
    except InputError as err:
        raise fail(name, str(err)) from None
    rounded = np.rint(img.data)
    if not np.allclose(rounded, img.data, atol=1e-3):
        raise fail(name, f"'{path}' holds non-integer values; a label map is needed")
    return rounded.astype(np.int64), img.affine


# --------------------------------------------------------------------------------------------
class LabelOverlapInputSpec(BaseInterfaceInputSpec):
    reference = File(exists=True, mandatory=True, desc="reference label map (e.g. the fixed image's labels)")
    test = File(exists=True, mandatory=True, desc="label map to evaluate, on the reference grid (warped labels)")
    labels = traits.List(traits.Int, desc="labels to report (default: every non-zero label present)")
    surface_distances = traits.Bool(True, usedefault=True, desc="compute HD95 and ASSD (mm)")
    tags = traits.Dict(traits.Str, traits.Str, desc="columns added to every row, e.g. {'method': 'inr'}")


class LabelOverlapOutputSpec(TraitedSpec):
    out_labels = File(exists=True, desc="TSV, one row per label: dice, jaccard, volumes, hd95_mm, assd_mm")
    out_summary = File(exists=True, desc="TSV, one row: means over the reference's labels")
    mean_dice = traits.Float(desc="unweighted mean Dice over the reference's labels")
    mean_jaccard = traits.Float(desc="mean Jaccard over the reference's labels")
    mean_hd95_mm = traits.Float(desc="mean HD95 (mm) over labels in both maps")
    mean_assd_mm = traits.Float(desc="mean ASSD (mm) over labels in both maps")


class LabelOverlap(SimpleInterface):
    """Dice, Jaccard, HD95 and ASSD per label, and their summary (TSV)."""

    input_spec = LabelOverlapInputSpec
    output_spec = LabelOverlapOutputSpec

    def _run_interface(self, runtime):
        ref, ref_aff = _load_labels(self.inputs.reference, "reference")
        test, test_aff = _load_labels(self.inputs.test, "test")
        if ref.shape != test.shape or not np.allclose(ref_aff, test_aff, atol=1e-3):
            raise fail("test", f"'{self.inputs.test}' is not on the grid of the reference "
                               f"(shape {test.shape} vs {ref.shape}); resample it onto the reference first")
        labels = optional(self.inputs.labels)
        try:
            rows = label_overlap(ref, test, labels=labels, affine=ref_aff,
                                 surface_distances=self.inputs.surface_distances)
        except ValueError as err:
            raise fail("labels", str(err)) from None
        tags = _tags(self.inputs.tags)
        summary = summarise_overlap(rows)
        present = [r for r in rows if r["status"] in (STATUS_OK, STATUS_MISSING_IN_TEST)]
        summary["mean_jaccard"] = (float(np.mean([float(r["jaccard"]) for r in present]))
                                   if present else float("nan"))
        out_labels = output_path(runtime.cwd, "label_overlap.tsv")
        out_summary = output_path(runtime.cwd, "label_overlap_summary.tsv")
        write_rows_tsv([{**tags, **row} for row in rows] or [{**tags}], out_labels)
        write_rows_tsv([{**tags, **summary}], out_summary)
        self._results.update(out_labels=out_labels, out_summary=out_summary)
        for key in ("mean_dice", "mean_jaccard", "mean_hd95_mm", "mean_assd_mm"):
            self._results[key] = _finite(summary[key])
        return runtime


# --------------------------------------------------------------------------------------------
class TransformQualityInputSpec(BaseInterfaceInputSpec):
    warp = File(exists=True, mandatory=True, desc="forward displacement field (1Warp.nii.gz, ANTs 5-D, fixed grid)")
    inverse_warp = File(exists=True, desc="its inverse (1InverseWarp.nii.gz, fixed grid): inverse consistency")
    mask = File(exists=True, desc="evaluation region on the warp's grid (e.g. the fixed brain mask)")
    metadata = File(exists=True, desc="registration JSON: its runtime and device are copied into the table")
    tags = traits.Dict(traits.Str, traits.Str, desc="columns added to the row, e.g. {'method': 'ants'}")


class TransformQualityOutputSpec(TraitedSpec):
    out_tsv = File(exists=True, desc="TSV, one row: folding, log-Jacobian spread, inverse consistency")
    jacobian = File(exists=True, desc="det(I + du/dx) recomputed from the warp (fixed grid)")
    folding_percent = traits.Float(desc="% of voxels in the mask with det J <= 0")
    log_jacobian_std = traits.Float(desc="SD of log det J over non-folded voxels in the mask")
    inverse_consistency_mm = traits.Float(desc="mean |u(x) + v(x + u(x))| in mm over the mask")
    inverse_consistency_p95_mm = traits.Float(desc="95th percentile of the same")


class TransformQuality(SimpleInterface):
    """Smoothness and invertibility of a deformable transform, the same way for every method.

    det J is recomputed from the warp file by central differences in world mm
    (:func:`inrreg_pipeline.metrics.jacobian_determinant_from_displacement`). Inverse consistency is
    ``|u(x) + v(x + u(x))|``: the forward then the inverse warp, both on the fixed grid as ANTs
    writes them (the affine cancels).
    """

    input_spec = TransformQualityInputSpec
    output_spec = TransformQualityOutputSpec

    def _run_interface(self, runtime):
        u, grid = _read_field(self.inputs.warp, "warp")
        mask = None
        if optional(self.inputs.mask):
            try:
                mask_img = load_image(self.inputs.mask, "mask")
            except InputError as err:
                raise fail("mask", str(err)) from None
            if mask_img.shape != u.shape[:-1] or not np.allclose(mask_img.affine, grid, atol=1e-3):
                raise fail("mask", f"'{self.inputs.mask}' is not on the warp's grid (shape {mask_img.shape} vs "
                                   f"{u.shape[:-1]})")
            mask = mask_img.data > 0.5
            if not mask.any():
                raise fail("mask", f"'{self.inputs.mask}' is empty")
        det = jacobian_determinant_from_displacement(u, affine=grid)
        row = {**_tags(self.inputs.tags), **jacobian_statistics(det, mask)}
        ic_mean = ic_p95 = float("nan")
        if optional(self.inputs.inverse_warp):
            v, grid_v = _read_field(self.inputs.inverse_warp, "inverse_warp")
            ic = _inverse_consistency(u, grid, v, grid_v)
            values = ic[mask] if mask is not None else ic.ravel()
            ic_mean, ic_p95 = float(values.mean()), float(np.percentile(values, 95))
        row["inverse_consistency_mm"] = ic_mean
        row["inverse_consistency_p95_mm"] = ic_p95
        if optional(self.inputs.metadata):
            meta = _read_metadata(self.inputs.metadata)
            row.update(meta)
        out = output_path(runtime.cwd, "transform_quality.tsv")
        write_rows_tsv([row], out)
        jac_out = output_path(runtime.cwd, "jacobian_determinant.nii.gz")
        save_image(det.astype(np.float32), grid, jac_out)
        self._results.update(out_tsv=out, jacobian=jac_out,
                             folding_percent=_finite(row["folding_percent"]),
                             log_jacobian_std=_finite(row["log_jacobian_std"]),
                             inverse_consistency_mm=_finite(ic_mean), inverse_consistency_p95_mm=_finite(ic_p95))
        return runtime


def _read_field(path: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """``(field RAS mm (*shape, d), grid affine)`` of an ANTs warp; :func:`fail` for a bad file."""
    try:
        return read_ants_displacement_field(path)
    except Exception as err:  # ValueError for a wrong layout, nibabel errors for non-images
        raise fail(name, str(err) if isinstance(err, ValueError) else
                   f"'{path}' is not a readable displacement field ({type(err).__name__})") from None


def _inverse_consistency(u: np.ndarray, grid_u: np.ndarray, v: np.ndarray, grid_v: np.ndarray,
                         chunk: int = 262144) -> np.ndarray:
    """``|u(x) + v(x + u(x))|`` (mm) at every voxel centre ``x`` of ``u``'s grid: the forward warp,
    then the inverse warp as ANTs applies it (``v`` interpolated by ITK's rule,
    :class:`~inrreg_pipeline.core.transform.DisplacementField`), ``chunk`` voxels at a time."""
    d = u.shape[-1]
    inverse = DisplacementField(v, grid_v)
    x = voxel_grid_to_world(u.shape[:-1], grid_u).reshape(-1, d)
    flat_u = u.reshape(-1, d)
    out = np.empty(len(x))
    for start in range(0, len(x), chunk):
        y = x[start:start + chunk] + flat_u[start:start + chunk]
        out[start:start + chunk] = np.linalg.norm(inverse.map(y) - x[start:start + chunk], axis=-1)
    return out.reshape(u.shape[:-1])


def _read_metadata(path: str) -> dict[str, Any]:
    try:
        meta = json.loads(open(path).read())
    except (OSError, ValueError):
        raise fail("metadata", f"'{path}' is not a JSON file") from None
    out = {}
    runtime = meta.get("runtime_s")
    total = runtime.get("total") if isinstance(runtime, dict) else runtime
    if isinstance(total, (int, float)):
        out["runtime_s"] = float(total)
    for key in ("method", "preset", "device", "seed"):
        if key in meta and isinstance(meta[key], (str, int, float)):
            out[f"registration_{key}"] = meta[key]
    memory = meta.get("memory")
    if isinstance(memory, dict):
        for key in ("peak_rss_mb", "peak_gpu_mb"):
            if isinstance(memory.get(key), (int, float)):
                out[key] = float(memory[key])
    return out


# --------------------------------------------------------------------------------------------
class LandmarkErrorInputSpec(BaseInterfaceInputSpec):
    fixed_landmarks = File(exists=True, mandatory=True, desc="landmarks in the fixed image (CSV/TSV)")
    moving_landmarks = File(exists=True, mandatory=True, desc="corresponding landmarks in the moving image, same order")
    transforms = InputMultiObject(
        File(exists=True), mandatory=True,
        desc="fixed -> moving transforms in antsApplyTransforms order (reverse_forward_transforms, "
             "or [composite_transform])")
    invert_transform_flags = InputMultiObject(traits.Bool(), desc="one flag per transform")
    convention = traits.Enum("auto", "ras", "lps", usedefault=True,
                             desc="frame of the landmark files (auto: LPS for ITK/BraTS-Reg layouts)")
    tags = traits.Dict(traits.Str, traits.Str, desc="columns added to every row")


class LandmarkErrorOutputSpec(TraitedSpec):
    out_points = File(exists=True, desc="TSV, one row per landmark: initial and registered error (mm)")
    out_summary = File(exists=True, desc="TSV, one row: TRE mean, SD, median, max (mm) and before")
    mean_tre_mm = traits.Float(desc="mean target registration error (mm)")
    initial_mean_tre_mm = traits.Float(desc="mean distance before registration (mm)")


class LandmarkError(SimpleInterface):
    """Target registration error: fixed landmarks mapped through the transforms vs moving landmarks."""

    input_spec = LandmarkErrorInputSpec
    output_spec = LandmarkErrorOutputSpec

    def _run_interface(self, runtime):
        pts = {}
        for name in ("fixed_landmarks", "moving_landmarks"):
            try:
                pts[name] = read_landmarks(getattr(self.inputs, name), self.inputs.convention)
            except ValueError as err:
                raise fail(name, str(err)) from None
        fixed, moving = pts["fixed_landmarks"], pts["moving_landmarks"]
        if fixed.shape != moving.shape:
            raise fail("moving_landmarks", f"has {len(moving)} {moving.shape[1]}-D points but fixed_landmarks has "
                                           f"{len(fixed)} {fixed.shape[1]}-D points")
        transforms = list(self.inputs.transforms)
        flags = optional(self.inputs.invert_transform_flags)
        flags = [False] * len(transforms) if flags is None else [bool(f) for f in flags]
        if len(flags) != len(transforms):
            raise fail("invert_transform_flags", f"has {len(flags)} flag(s) for {len(transforms)} transform(s)")
        chain = _read_chain(list(zip(transforms, flags)), fixed.shape[1])
        before, after = landmark_errors(chain, fixed, moving)
        tags = _tags(self.inputs.tags)
        rows = [{**tags, "landmark": i + 1, "initial_error_mm": float(b), "error_mm": float(a)}
                for i, (b, a) in enumerate(zip(before, after))]
        summary = {**tags, **{f"tre_{k}": v for k, v in tre_summary(after).items()},
                   "tre_initial_mean_mm": float(before.mean())}
        out_points = output_path(runtime.cwd, "landmark_error.tsv")
        out_summary = output_path(runtime.cwd, "landmark_error_summary.tsv")
        write_rows_tsv(rows, out_points)
        write_rows_tsv([summary], out_summary)
        self._results.update(out_points=out_points, out_summary=out_summary, mean_tre_mm=float(after.mean()),
                             initial_mean_tre_mm=float(before.mean()))
        return runtime


def _read_chain(chain: list[tuple[str, bool]], ndim: int):
    """The transform files as one RAS chain (``-t`` order), a bad file reported against ``transforms``."""
    try:
        return read_transform_chain(chain, ndim)
    except (ValueError, RuntimeError) as err:
        raise fail("transforms", str(err)) from None


def transform_points(points_ras: np.ndarray, chain: list[tuple[str, bool]]) -> np.ndarray:
    """Map RAS mm points ``(N, d)`` through an antsApplyTransforms-order chain (fixed -> moving for a
    registration): the files read into a :class:`~inrreg_pipeline.core.transform.TransformChain`
    (:func:`inrreg_pipeline.io.itk.read_transform_chain`), with a bad transform reported against the
    ``transforms`` input."""
    points = np.asarray(points_ras, dtype=np.float64)
    return _read_chain(chain, points.shape[-1]).map(points)


# --------------------------------------------------------------------------------------------
class MergeTablesInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="TSV tables to merge")
    join_on = traits.List(traits.Str, desc="key columns: rows with equal keys are merged into one row "
                                           "(default: tables are stacked)")
    out_name = traits.Str("merged.tsv", usedefault=True, desc="output file name (in the node directory)")


class MergeTablesOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="merged TSV")


class MergeTables(SimpleInterface):
    """Stack TSV tables (union of columns), or merge their rows by key columns (``join_on``)."""

    input_spec = MergeTablesInputSpec
    output_spec = MergeTablesOutputSpec

    def _run_interface(self, runtime):
        keys = optional(self.inputs.join_on) or []
        merged: dict[tuple, dict] = {}
        stacked: list[dict] = []
        for path in self.inputs.in_files:
            try:
                rows = read_rows_tsv(path)
            except (OSError, UnicodeDecodeError, csv.Error) as err:
                raise fail("in_files", f"'{path}' is not a readable TSV ({type(err).__name__})") from None
            for row in rows:
                if not keys:
                    stacked.append(row)
                    continue
                missing = [k for k in keys if k not in row]
                if missing:
                    raise fail("join_on", f"column(s) {', '.join(missing)} not in '{path}'")
                target = merged.setdefault(tuple(row[k] for k in keys), {})
                for col, value in row.items():
                    if col not in target or target[col] in ("", "n/a"):
                        target[col] = value
        rows = list(merged.values()) if keys else stacked
        if not rows:
            raise fail("in_files", "the tables hold no rows")
        out = output_path(runtime.cwd, self.inputs.out_name)
        write_rows_tsv([{k: (None if v in ("", "n/a") else v) for k, v in r.items()} for r in rows], out)
        self._results["out_file"] = out
        return runtime
