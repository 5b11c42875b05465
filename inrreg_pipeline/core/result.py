"""What a registration returns, and the dense outputs and summary every method shares.

:func:`dense_outputs` turns a method's dense fields into the images and checks ANTs users expect
(warped and inverse-warped images, the finite-difference Jacobian determinant, inverse
consistency); :func:`summarise` writes the ``registration.json`` entries every method has.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .fields import field_jacobian_determinant, inverse_consistency, jacobian_summary
from .pair import PreparedPair, peak_memory_mb
from .quality import assess, inside_fraction
from .space import apply_affine, sample_array, voxel_grid_to_world
from .transform import TransformChain, registration_transform


@dataclass
class RegistrationResult:
    """Everything a registration produces, in RAS mm.

    ``affine`` maps fixed points to moving points; ``displacement`` (fixed grid) is ``u`` with
    ``phi(x) = A(x + u(x))``; ``inverse_displacement`` (fixed grid) is ``v`` with
    ``phi^-1(y) = z + v(z)``, ``z = A^-1 y``. ``warped`` is the moving image on the fixed grid,
    ``inverse_warped`` the fixed image on the moving grid, ``jacobian`` is ``det(I + du/dx)``
    on the fixed grid, by finite differences of ``displacement`` in physical space
    (:func:`inrreg_pipeline.core.fields.field_jacobian_determinant`).
    """

    affine: np.ndarray
    displacement: np.ndarray
    inverse_displacement: np.ndarray
    warped: np.ndarray
    inverse_warped: np.ndarray
    jacobian: np.ndarray
    summary: dict = field(default_factory=dict)
    model: torch.nn.Module | None = None
    #: Variant outputs (:func:`inrreg_pipeline.core.variants.variant_outputs`): ``fusion_weights``
    #: ``(*moving.shape, 3)`` on the moving grid.
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def transform(self, fixed_affine: np.ndarray) -> TransformChain:
        """``phi(x) = A(x + u(x))`` as a transform object (fixed -> moving, RAS mm; the files
        ``-t 1Warp -t 0GenericAffine.mat``), ``fixed_affine`` the fixed grid's voxel -> RAS map;
        its ``inverse()`` uses ``inverse_displacement``, as ``1InverseWarp`` does."""
        return registration_transform(self.affine, self.displacement, fixed_affine, self.inverse_displacement)


@dataclass
class DenseOutputs:
    """:func:`dense_outputs`' images (``warped`` on the fixed grid, ``inverse_warped`` on the moving
    grid, ``jacobian`` on the fixed grid), ``inverse_consistency`` (:func:`.fields.inverse_consistency`)
    and ``quality`` (:func:`.quality.assess`)."""

    warped: np.ndarray
    inverse_warped: np.ndarray
    jacobian: np.ndarray
    inverse_consistency: dict
    quality: dict


def dense_outputs(pair: PreparedPair, affine: np.ndarray, u: np.ndarray, v: np.ndarray,
                  start: np.ndarray) -> DenseOutputs:
    """Resample both images through ``A(x + u(x))`` and its inverse, and measure the transform.

    ``u`` / ``v``: forward / inverse displacements on the fixed grid (mm); the moving image is sampled
    at ``A(x + u(x))``; the fixed image on the moving grid at ``z + v(z)``, ``z = A^-1 y`` (``v``
    interpolated on the fixed grid). Original intensities, not the rescaled ones. ``start``: the
    map the registration started from (:func:`.quality.start_affine`), against which the result is
    assessed.
    """
    fixed, moving, device = pair.fixed, pair.moving, pair.device
    jac = field_jacobian_determinant(u, fixed.affine)  # finite differences of u, physical space
    consistency = inverse_consistency(u, v, fixed.affine, device, pair.sampling_mask)
    grid = voxel_grid_to_world(fixed.shape, fixed.affine)
    mapped = apply_affine(affine, grid + u)
    warped = sample_array(moving.data, moving.affine, mapped, device)
    inside = pair.sampling_mask > 0
    # the start is only assessed inside the mask: sample it there, not on the whole grid
    start_inside = sample_array(moving.data, moving.affine, apply_affine(start, grid[inside]), device)
    quality = assess(fixed, pair.sampling_mask, start_inside, warped[inside],
                     inside_fraction(mapped[inside], moving))
    del mapped, start_inside
    z = apply_affine(np.linalg.inv(affine), voxel_grid_to_world(moving.shape, moving.affine))
    v_at_z = sample_array(v, fixed.affine, z, device, vector=True)
    inverse_warped = sample_array(fixed.data, fixed.affine, z + v_at_z, device)
    return DenseOutputs(warped, inverse_warped, jac, consistency, quality)


def summarise(pair: PreparedPair, affine: np.ndarray, loss: dict, outputs: DenseOutputs,
              seconds: dict[str, float], method_summary: dict) -> dict:
    """The ``registration.json`` entries of every method: affine (RAS), final losses, Jacobian summary
    inside the sampling mask, inverse consistency, runtimes (s; ``total`` since preparation), peak
    memory (MB) and dimension, then the method's own entries."""
    return {
        "affine_matrix_ras": np.asarray(affine).tolist(),
        "loss": loss,
        "jacobian": jacobian_summary(outputs.jacobian, pair.sampling_mask > 0),
        "inverse_consistency": outputs.inverse_consistency,
        "quality": outputs.quality,
        "runtime_s": {**seconds, "total": time.perf_counter() - pair.start},
        "memory": peak_memory_mb(pair.device),
        "dimension": pair.ndim,
        **method_summary,
    }
