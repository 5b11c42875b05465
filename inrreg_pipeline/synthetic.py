"""Known deformations of real images: the embedded demo and the recovery tests.

A synthetic moving image is made from a fixed image ``F`` by a known smooth map ``psi`` from moving
world points to fixed world points, ``M(y) = F(psi(y))``, with

    ``psi(y) = B (y + w(y))``,   ``w(y) = sum_k a_k exp(-||y - c_k||^2 / (2 s^2))``  (mm)

(``B`` affine, ``w`` a sum of Gaussian bumps). A perfect registration ``phi`` (fixed -> moving)
satisfies ``psi(phi(x)) = x``, so ``||psi(phi(x)) - x||`` is its error in mm at any fixed point,
with no numerical inversion of the truth.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import map_coordinates

from .core.space import SpatialImage, apply_affine, voxel_grid_to_world


@dataclass
class KnownDeformation:
    """``psi(y) = B (y + w(y))`` (moving world mm -> fixed world mm)."""

    matrix: np.ndarray          # B, (d+1, d+1)
    centres: np.ndarray         # c_k, (K, d) mm
    amplitudes: np.ndarray      # a_k, (K, d) mm
    width_mm: float             # s

    def bumps(self, points: np.ndarray) -> np.ndarray:
        diff = points[..., None, :] - self.centres
        weights = np.exp(-(diff ** 2).sum(-1) / (2.0 * self.width_mm ** 2))
        return weights @ self.amplitudes

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return apply_affine(self.matrix, points + self.bumps(points))


def random_deformation(fixed: SpatialImage, amplitude_mm: float = 4.0, n_bumps: int = 8,
                       rotation_deg: float = 5.0, translation_mm: float = 4.0, scaling: float = 0.04,
                       seed: int = 0) -> KnownDeformation:
    """A random smooth ``psi`` centred on the image: bumps of peak ``amplitude_mm`` placed in the
    central part of the field of view, width a sixth of the field of view, and an affine with
    rotations up to ``rotation_deg`` about the image centre, translations up to ``translation_mm``
    and scalings up to ``1 +- scaling``."""
    rng = np.random.default_rng(seed)
    d = fixed.ndim
    grid = fixed.world_grid().reshape(-1, d)
    lower, upper = grid.min(0), grid.max(0)
    centre = (lower + upper) / 2
    extent = upper - lower
    centres = centre + (rng.random((n_bumps, d)) - 0.5) * extent * 0.6
    directions = rng.normal(size=(n_bumps, d))
    amplitudes = directions / np.linalg.norm(directions, axis=1, keepdims=True) * amplitude_mm
    angles = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, size=1 if d == 2 else 3))
    rot = _rotation(angles, d)
    scale = np.diag(1.0 + rng.uniform(-scaling, scaling, size=d))
    lin = rot @ scale
    matrix = np.eye(d + 1)
    matrix[:d, :d] = lin
    matrix[:d, d] = centre - lin @ centre + rng.uniform(-translation_mm, translation_mm, size=d)
    return KnownDeformation(matrix, centres, amplitudes, float(extent.max() / 6.0))


def _rotation(angles: np.ndarray, d: int) -> np.ndarray:
    if d == 2:
        c, s = np.cos(angles[0]), np.sin(angles[0])
        return np.array([[c, -s], [s, c]])
    rx, ry, rz = angles
    mx = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    my = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    mz = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return mz @ my @ mx


def sample_image(image: SpatialImage, points: np.ndarray, order: int = 1) -> np.ndarray:
    """``image`` at world points ``(..., d)`` with spline ``order``; 0 outside (SciPy, CPU)."""
    d = image.ndim
    vox = apply_affine(np.linalg.inv(image.affine), points.reshape(-1, d))
    out = map_coordinates(np.asarray(image.data, dtype=np.float64), vox.T, order=order, mode="constant", cval=0.0)
    return out.reshape(points.shape[:-1])


def deform(fixed: SpatialImage, psi: KnownDeformation, shape: tuple[int, ...] | None = None,
           affine: np.ndarray | None = None, order: int = 1) -> SpatialImage:
    """The moving image ``M(y) = F(psi(y))`` on a grid (default: the fixed grid)."""
    shape = fixed.shape if shape is None else tuple(shape)
    affine = fixed.affine if affine is None else np.asarray(affine, dtype=np.float64)
    points = voxel_grid_to_world(shape, affine)
    return SpatialImage(sample_image(fixed, psi(points), order=order).astype(np.float32), affine)


def registration_error(psi: KnownDeformation, phi_points: np.ndarray, fixed_points: np.ndarray) -> np.ndarray:
    """``||psi(phi(x)) - x||`` in mm, given ``phi(x)`` (``phi_points``) at fixed points ``x``."""
    return np.linalg.norm(psi(phi_points) - fixed_points, axis=-1)


#: Labels of :func:`phantom`: value -> tissue.
PHANTOM_LABELS = {1: "cortex", 2: "white matter", 3: "ventricles", 4: "scalp"}


def phantom(shape: tuple[int, int, int] = (256, 256, 160), spacing_mm: float = 1.0
            ) -> tuple[SpatialImage, np.ndarray]:
    """A head-like 3-D test volume and its label map, for when no real image is at hand.

    The grid is oriented like the OASIS T1w images (array axes A, S, L: voxel -> RAS affine
    ``[[0, 0, -s], [s, 0, 0], [0, s, 0]]``), ``spacing_mm`` isotropic, centred on the world origin.
    Nested ellipsoids (radii in mm, so the anatomy does not change with the voxel size) make
    scalp (label 4, intensity 0.35), cortex (1, 0.6), white matter (2, 0.9) and two ventricles
    (3, 0.15) on a 0 background; a smooth texture of a few percent (fixed sinusoids, mm periods)
    gives the similarity something to match inside each tissue. Returns ``(image, labels)``,
    labels ``uint8`` on the same grid.
    """
    s = float(spacing_mm)
    affine = np.array([[0.0, 0.0, -s, 0.0], [s, 0.0, 0.0, 0.0], [0.0, s, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
    affine[:3, 3] = -affine[:3, :3] @ ((np.asarray(shape, dtype=float) - 1.0) / 2.0)
    x = voxel_grid_to_world(tuple(shape), affine)  # RAS mm, centred on 0

    def inside(centre, radii) -> np.ndarray:
        return (((x - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1) <= 1.0

    labels = np.zeros(tuple(shape), np.uint8)
    labels[inside((0, 0, 0), (72, 95, 70))] = 4
    labels[inside((0, 0, 2), (64, 86, 62))] = 1
    labels[inside((0, 3, 6), (48, 66, 44))] = 2
    for side in (-1, 1):
        labels[inside((side * 9, 5, 12), (6, 24, 10))] = 3
    value = np.array([0.0, 0.6, 0.9, 0.15, 0.35], np.float32)[labels]
    texture = (np.sin(x[..., 0] / 7.0) * np.cos(x[..., 1] / 11.0) + np.sin(x[..., 2] / 9.0 + x[..., 0] / 13.0))
    image = np.where(labels > 0, value * (1.0 + 0.04 * texture), 0.0).astype(np.float32)
    return SpatialImage(image, affine), labels
