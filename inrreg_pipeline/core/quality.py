"""Is the result a registration at all? Overlap in world space and improvement over the start.

A registration can run to the end on inputs that cannot be aligned (an affine scaled a million
times, two images kilometres apart) and return an empty warped image with a confident exit
status. These checks make that visible, with the same measures for every method:

* *overlap*: the fraction of the fixed sampling mask's voxels whose mapped point lies inside the
  moving image's field of view (voxel centres within half a voxel of the grid);
* *improvement*: the normalised mutual information ``(H(F) + H(W)) / H(F, W)`` (1 for independent
  images, 2 for identical ones; any contrast) of the fixed image and the moving image resampled at
  the start (the centre-of-mass alignment every affine stage starts from) and at the result,
  inside the mask.

:func:`check_overlap` refuses a pair before any work when no alignment of centres can make the
images overlap (:class:`NoOverlapError`, a ``ValueError``: a usage error for the command line).
"""
from __future__ import annotations

import numpy as np

from .affine import centre_of_mass
from .geometry import SpatialImage, apply_affine, voxel_grid_to_world

#: Below this fraction of the fixed mask inside the moving field of view (after aligning the centres
#: of mass) the images are taken not to overlap at all.
MIN_START_OVERLAP = 0.01
#: A result with less of the fixed mask inside the moving field of view than this is flagged.
MIN_FINAL_OVERLAP = 0.5


class NoOverlapError(ValueError):
    """The fixed and moving images cannot overlap in world space."""


def inside_fraction(points: np.ndarray, image: SpatialImage) -> float:
    """Fraction of world points ``(N, d)`` (mm) inside ``image``'s field of view (voxel centres +- 0.5 voxel)."""
    if len(points) == 0:
        return 0.0
    idx = apply_affine(np.linalg.inv(image.affine), points)
    inside = np.all((idx >= -0.5) & (idx <= np.array(image.shape) - 0.5), axis=-1)
    return float(inside.mean())


def start_affine(fixed: SpatialImage, moving: SpatialImage, fixed_mask: np.ndarray | None,
                 moving_mask: np.ndarray | None) -> np.ndarray:
    """The translation aligning the centres of mass (fixed -> moving, RAS mm): where the affine stage starts."""
    d = fixed.ndim
    out = np.eye(d + 1)
    out[:d, d] = centre_of_mass(moving, moving_mask) - centre_of_mass(fixed, fixed_mask)
    return out


def mask_points(fixed: SpatialImage, mask: np.ndarray, limit: int = 200000) -> np.ndarray:
    """World points (mm) of up to ``limit`` mask voxels, evenly spread (deterministic)."""
    idx = np.argwhere(mask > 0)
    if len(idx) > limit:
        idx = idx[np.linspace(0, len(idx) - 1, limit).astype(int)]
    return apply_affine(fixed.affine, idx.astype(np.float64))


def check_overlap(fixed: SpatialImage, moving: SpatialImage, sampling_mask: np.ndarray, start: np.ndarray) -> float:
    """The overlap fraction at ``start`` (:func:`start_affine`); :class:`NoOverlapError` when it is below
    :data:`MIN_START_OVERLAP`."""
    fraction = inside_fraction(apply_affine(start, mask_points(fixed, sampling_mask)), moving)
    if fraction < MIN_START_OVERLAP:
        f_extent = np.ptp(voxel_grid_to_world(fixed.shape, fixed.affine).reshape(-1, fixed.ndim), axis=0).max()
        m_extent = np.ptp(voxel_grid_to_world(moving.shape, moving.affine).reshape(-1, moving.ndim), axis=0).max()
        raise NoOverlapError(
            f"the images cannot overlap in world space: with their centres of mass aligned, {100 * fraction:.2g} % "
            f"of the fixed image's mask falls inside the moving image (fields of view {f_extent:.4g} mm and "
            f"{m_extent:.4g} mm across); check both images' affines and voxel sizes")
    return fraction


def normalised_mutual_information(a: np.ndarray, b: np.ndarray, bins: int = 32) -> float:
    """``(H(a) + H(b)) / H(a, b)`` of two equally long samples, ``bins`` equal-width bins each."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size == 0 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return 1.0
    joint, _, _ = np.histogram2d(a, b, bins=bins)
    p = joint / joint.sum()

    def entropy(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    h_ab = entropy(p)
    return (entropy(p.sum(1)) + entropy(p.sum(0))) / h_ab if h_ab > 0 else 2.0


def assess(fixed: SpatialImage, sampling_mask: np.ndarray, start_inside: np.ndarray, final_inside: np.ndarray,
           overlap: float) -> dict:
    """``registration.json``'s ``quality`` entry: overlap and NMI at the start and at the result, and
    ``warnings`` (one line each) when the result is no better than the start or overlaps too little.

    ``start_inside`` / ``final_inside``: the moving image at the mask's voxels (``fixed.data[mask]``
    order) mapped by the start / the result; ``overlap``: :func:`inside_fraction` of the mask's
    mapped points at the result.
    """
    f = fixed.data[sampling_mask > 0]
    nmi_start = normalised_mutual_information(f, start_inside)
    nmi_final = normalised_mutual_information(f, final_inside)
    warnings = []
    if overlap < MIN_FINAL_OVERLAP:
        warnings.append(f"only {100 * overlap:.3g} % of the fixed mask maps inside the moving image")
    if nmi_final <= nmi_start + 1e-3:
        warnings.append(f"the result is no better than the start (normalised mutual information {nmi_final:.4f} "
                        f"after, {nmi_start:.4f} with the centres of mass aligned)")
    return {"overlap_fraction": overlap, "nmi_start": nmi_start, "nmi_final": nmi_final,
            "improved": nmi_final > nmi_start + 1e-3, "warnings": warnings}
