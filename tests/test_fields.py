"""Dense outputs of a deformation network (core/fields.py, core/jacobian.py) against references."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inrreg_pipeline.core.encodings import NormalisedBox
from inrreg_pipeline.core.fields import (evaluate_displacement, evaluate_jacobian_determinant,
                                         field_jacobian_determinant, inverse_consistency, invert_displacement)
from inrreg_pipeline.core.jacobian import jacobian_determinant_fd
from inrreg_pipeline.core.networks import DeformationINR
from inrreg_pipeline.core.space import DeviceImage, voxel_grid_to_world, world_bounding_box
from inrreg_pipeline.metrics import jacobian_determinant_from_displacement

CPU = torch.device("cpu")


def oblique_anisotropic_grid(shape=(34, 30, 26), spacing=(1.1, 1.6, 2.3), seed=0) -> np.ndarray:
    """voxel -> RAS affine: a random rotation (with a reflection: an LAS-like grid) times an
    anisotropic spacing (mm), origin away from 0."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q[:, 0] *= -np.sign(np.linalg.det(q))  # determinant -1: one axis reversed, as LAS images
    affine = np.eye(4)
    affine[:3, :3] = q @ np.diag(spacing)
    affine[:3, 3] = [-20.0, 35.0, 12.0]
    return affine


def smooth_siren(shape, affine, amplitude_mm: float = 6.0, seed: int = 0, omega: float = 4.0) -> DeformationINR:
    """A SIREN whose displacement is a smooth field of a few mm over the grid's box (the default
    initialisation gives |u| ~ 1e-4 mm: its last layer is rescaled to make det J vary)."""
    torch.manual_seed(seed)
    lower, upper = world_bounding_box(shape, affine)
    model = DeformationINR(NormalisedBox(lower, upper), 3, hidden_layers=3, hidden_features=64, omega=omega)
    with torch.no_grad():
        model.out.weight.normal_(0.0, 1.0)
        points = torch.as_tensor(voxel_grid_to_world(shape, affine).reshape(-1, 3), dtype=torch.float32)
        peak = model(points).norm(dim=-1).max()
        model.out.weight.mul_(amplitude_mm / peak)
        model.out.bias.zero_()
    return model.eval()


def test_finite_difference_jacobian_matches_autograd_on_an_oblique_anisotropic_grid():
    shape = (34, 30, 26)
    affine = oblique_anisotropic_grid(shape)
    model = smooth_siren(shape, affine)
    exact = evaluate_jacobian_determinant(model, shape, affine, CPU)
    u = evaluate_displacement(model, shape, affine, CPU)
    fd = field_jacobian_determinant(u, affine)
    assert fd.shape == shape and fd.dtype == np.float32
    assert exact.std() > 0.05 and exact.min() < 0.95 and exact.max() > 1.15, "the field must deform"
    # measured: max difference 8.2e-3 (one-sided, first order, on the faces), 1.0e-3 inside
    np.testing.assert_allclose(fd, exact, atol=1e-2, rtol=0)
    np.testing.assert_allclose(fd[1:-1, 1:-1, 1:-1], exact[1:-1, 1:-1, 1:-1], atol=2e-3, rtol=0)
    # the direction cosines matter: differentiating along the array axes with the spacing only
    # (an axis-aligned grid) is far off on this grid
    axis_aligned = jacobian_determinant_from_displacement(u, np.linalg.norm(affine[:3, :3], axis=0))
    assert np.abs(axis_aligned - exact).max() > 0.1


@pytest.mark.parametrize("d", [2, 3])
def test_finite_differences_do_not_depend_on_the_slab_and_are_numpy_gradient(d):
    rng = np.random.default_rng(d)
    shape = (23, 9, 7)[:d]
    field = rng.normal(size=shape + (d,))
    affine = np.eye(d + 1)
    affine[:d, :d] = np.linalg.qr(rng.normal(size=(d, d)))[0] @ np.diag(rng.uniform(0.6, 2.4, d))
    # reference: the whole field at once, np.gradient along the array axes, chain rule by hand
    grads = np.stack([np.stack(np.gradient(field[..., c]), -1) for c in range(d)], -2)  # du_c/di_m
    reference = np.linalg.det(np.eye(d) + grads @ np.linalg.inv(affine[:d, :d]))
    for slab in (1, 2, 5, 100):
        np.testing.assert_allclose(jacobian_determinant_fd(field, affine, np.float64, slab=slab), reference,
                                   rtol=1e-9, atol=1e-9)


def test_fd_jacobian_refuses_what_it_cannot_differentiate():
    with pytest.raises(ValueError, match="at least 2"):
        jacobian_determinant_fd(np.zeros((1, 4, 4, 3)), np.eye(4))
    with pytest.raises(ValueError, match="shape"):
        jacobian_determinant_fd(np.zeros((4, 4, 4, 2)), np.eye(4))
    with pytest.raises(ValueError, match="zero voxel size along array axis 1"):
        jacobian_determinant_fd(np.zeros((4, 4, 4, 3)), np.diag([1.0, 0.0, 1.0, 1.0]))
    # a micrometre grid is a grid: the test is relative to the voxel size
    assert np.allclose(jacobian_determinant_fd(np.zeros((4, 4, 4, 3)), np.diag([1e-6, 1e-6, 1e-6, 1.0])), 1.0)


def test_blocked_inverse_equals_the_whole_grid_iteration():
    shape = (20, 18, 16)
    affine = oblique_anisotropic_grid(shape, seed=1)
    u = evaluate_displacement(smooth_siren(shape, affine, amplitude_mm=4.0, seed=1), shape, affine, CPU)
    # the former implementation: every voxel at once
    field = DeviceImage(u, affine, CPU, vector=True)
    z = torch.as_tensor(voxel_grid_to_world(shape, affine), dtype=torch.float32).reshape(-1, 3)
    v = -torch.as_tensor(u).reshape(-1, 3)
    for _ in range(20):
        v = -field.sample(z + v)
    whole = v.reshape(u.shape).numpy()
    for chunk in (1000, 4096, 10 ** 6):
        np.testing.assert_allclose(invert_displacement(u, affine, CPU, 20, chunk=chunk), whole, atol=1e-5)
    assert np.abs(whole).max() > 1.0


def test_consistency_on_a_subsample_matches_all_voxels():
    shape = (24, 22, 20)
    affine = oblique_anisotropic_grid(shape, seed=2)
    u = evaluate_displacement(smooth_siren(shape, affine, amplitude_mm=6.0, seed=2, omega=8.0), shape, affine, CPU)
    v = invert_displacement(u, affine, CPU, iterations=1)  # a poor inverse: residuals of tenths of a mm
    mask = np.zeros(shape, bool)
    mask[3:-3, 2:-2, 4:-4] = True
    full = inverse_consistency(u, v, affine, CPU, mask, max_points=None)
    sub = inverse_consistency(u, v, affine, CPU, mask, max_points=800)
    assert full["n_points"] == mask.sum() and 400 < sub["n_points"] <= 800
    assert full["mean_mm"] > 0.05
    assert sub["mean_mm"] == pytest.approx(full["mean_mm"], rel=0.1)
    assert sub["p95_mm"] == pytest.approx(full["p95_mm"], rel=0.15)
    assert sub["max_mm"] <= full["max_mm"]
    assert inverse_consistency(u, v, affine, CPU, mask, max_points=800) == sub  # deterministic


def test_non_diffeomorphic_volume_counts_folded_tetrahedra_in_any_frame():
    """The LUMIR NDV: 0 for a smooth invertible field, > 0 where the field folds, the whole volume for
    a mirror image, a checkerboard that central differences barely see, and the same on an oblique,
    anisotropic, flipped grid as on the unit grid; 2-D (non-diffeomorphic area) too."""
    from inrreg_pipeline.core.jacobian import jacobian_determinant_fd, non_diffeomorphic_volume

    shape = (24, 24, 24)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    bump = np.exp(-((idx - 12) ** 2).sum(-1) / 18)
    eye = np.eye(4)
    smooth = np.zeros(shape + (3,))
    smooth[..., 0] = 2 * bump
    assert non_diffeomorphic_volume(smooth, eye) == 0.0
    fold = np.zeros(shape + (3,))
    fold[..., 0] = 16 * bump
    ndv = non_diffeomorphic_volume(fold, eye)
    assert 0.5 < ndv < 5.0
    inner = np.zeros(shape, bool)
    inner[1:-1, 1:-1, 1:-1] = True
    assert non_diffeomorphic_volume(-2 * idx, eye, inner) == pytest.approx(100.0)
    checker = np.zeros(shape + (3,))
    checker[..., 0] = 0.9 * (-1.0) ** idx[..., 0]
    central = 100 * np.mean(jacobian_determinant_fd(checker, eye) <= 0)
    assert non_diffeomorphic_volume(checker, eye) > 3 * central
    oblique = np.array([[0, -2.0, 0, 5], [1.5, 0, 0, 1], [0, 0, -1.0, 3], [0, 0, 0, 1]])
    assert non_diffeomorphic_volume(fold @ oblique[:3, :3].T, oblique) == pytest.approx(ndv, rel=1e-9)
    assert non_diffeomorphic_volume(np.zeros((10, 12, 2)), np.eye(3)) == 0.0
    mirror = np.zeros((10, 12, 2))
    mirror[..., 0] = -2 * np.arange(10.0)[:, None]  # x -> -x: every triangle reversed
    assert non_diffeomorphic_volume(mirror, np.eye(3), np.pad(np.ones((8, 10), bool), 1)) == pytest.approx(100.0)
