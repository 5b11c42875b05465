"""The outputs every classical baseline writes, from the files its own tool wrote.

ANTs (:mod:`inrreg_pipeline.baselines.ants`) and greedy (:mod:`inrreg_pipeline.baselines.greedy`) both write an
ITK displacement field (LPS mm, 5-D NIfTI on the fixed grid) for the deformable part, its inverse,
a linear transform, and the moving image resampled onto the fixed grid (and the reverse). From those
:func:`write_baseline_outputs` writes ``inrreg register``'s file set
(:data:`~inrreg_pipeline.register.OUTPUT_SUFFIXES`, less the metadata, which each baseline writes
with its own parameters): the warps byte for byte, the ITK HDF5 composites, the warped images as
float32 NIfTI, and ``det(I + du/dx)`` of the forward warp on the fixed grid.

The Jacobian is computed from the written warp by the same finite differences for every method
(:func:`~inrreg_pipeline.metrics.jacobian_determinant_from_displacement`, which honours the grid's
direction cosines), and summarised by the core's :func:`~inrreg_pipeline.core.fields.jacobian_summary`,
so folding figures compare across tools.
"""
from __future__ import annotations

import platform
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..core.fields import jacobian_summary
from ..core.space import SpatialImage, foreground_mask
from ..io.images import StagedOutputs, load_image, save_image
from ..io.itk import read_ants_displacement_field, write_itk_composite_h5, write_itk_inverse_composite_h5
from ..metrics import jacobian_determinant_from_displacement
from ..register import OUTPUT_SUFFIXES

__all__ = ["TRANSFORM_CONVENTION", "write_inputs", "write_baseline_outputs", "baseline_metadata"]

TRANSFORM_CONVENTION = "ANTs: apply [1Warp, 0GenericAffine] to map fixed points to moving points"


def write_inputs(work: Path, fixed: SpatialImage, moving: SpatialImage, fixed_mask: np.ndarray | None,
                 moving_mask: np.ndarray | None, extension: str) -> dict[str, Path]:
    """The validated inputs re-written into ``work`` for the tool (float32 images, uint8 0/1 masks, qform =
    sform, so the tool reads the grid inrreg read): paths by role, masks only when given."""
    files = {"fixed": work / f"fixed{extension}", "moving": work / f"moving{extension}"}
    save_image(fixed.data, fixed.affine, files["fixed"])
    save_image(moving.data, moving.affine, files["moving"])
    for role, mask, image in (("fixed_mask", fixed_mask, fixed), ("moving_mask", moving_mask, moving)):
        if mask is not None:
            files[role] = work / f"{role}{extension}"
            save_image(mask.astype(np.uint8), image.affine, files[role], dtype=np.uint8)
    return files


def write_baseline_outputs(stage: StagedOutputs, fixed: SpatialImage, fixed_mask: np.ndarray | None,
                           warp: Path, inverse_warp: Path, warped: Path, inverse_warped: Path,
                           affine_ras: np.ndarray) -> dict[str, float]:
    """Write the shared outputs into ``stage``; return the ``jacobian`` summary for the metadata.

    ``warp``/``inverse_warp``: the tool's ITK displacement fields (copied unchanged);
    ``warped``/``inverse_warped``: its resampled images; ``affine_ras``: the linear part, RAS mm,
    fixed point -> moving point (the caller writes ``0GenericAffine.mat`` itself, since ANTs' own
    file can be copied verbatim). The summary's mask is ``fixed_mask`` or the fixed foreground.
    """
    s = OUTPUT_SUFFIXES
    shutil.copyfile(warp, stage.path(s["warp"]))
    shutil.copyfile(inverse_warp, stage.path(s["inverse_warp"]))
    field, grid = read_ants_displacement_field(warp)
    inverse_field, inverse_grid = read_ants_displacement_field(inverse_warp)
    write_itk_composite_h5(stage.path(s["composite"]), affine_ras, field, grid)
    write_itk_inverse_composite_h5(stage.path(s["inverse_composite"]), affine_ras, inverse_field, inverse_grid)
    for source, key, role in ((warped, "warped", "warped image"), (inverse_warped, "inverse_warped",
                                                                   "inverse warped image")):
        image = load_image(source, role)
        save_image(image.data, image.affine, stage.path(s[key]))
    jac = jacobian_determinant_from_displacement(field, affine=grid)
    if jac.shape != fixed.shape:
        raise RuntimeError(f"the warp's grid {jac.shape} differs from the fixed image grid {fixed.shape}")
    save_image(jac, fixed.affine, stage.path(s["jacobian"]))
    inside = fixed_mask if fixed_mask is not None else foreground_mask(fixed.data, 0.1)
    return jacobian_summary(jac, inside)


def baseline_metadata(stage: StagedOutputs, affine_ras: np.ndarray, jacobian: dict[str, float], threads: int,
                      runtime_s: dict[str, float], dimension: int) -> dict[str, Any]:
    """The ``registration.json`` entries every baseline shares (CPU device, output names, affine, folding,
    runtimes in s, dimension); each tool adds its own parameters, versions and memory."""
    return {"threads": int(threads), "device": "cpu", "device_name": platform.processor() or "cpu",
            "transform_convention": TRANSFORM_CONVENTION,
            "outputs": {key: stage.final(suffix).name for key, suffix in OUTPUT_SUFFIXES.items()},
            "affine_matrix_ras": np.asarray(affine_ras).tolist(), "jacobian": jacobian, "runtime_s": runtime_s,
            "dimension": int(dimension)}
