"""Two-network registration (methods.md section 2): hash encoding, coarse-to-fine, rigid and deformable
recovery on real brain images (nilearn's MNI152) under known motions, and the core's result fields."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import mni_slice, mni_small, quick_settings
from scipy.ndimage import map_coordinates

from inrreg_pipeline.core import load_preset, register
from inrreg_pipeline.core.config import validate
from inrreg_pipeline.core.hash_encoding import (PRIMES, GridLayout, HashEncoding, TorchHashEncoding,
                                                coarse_to_fine_weights, spatial_hash, tcnn_available)
from inrreg_pipeline.core.space import SpatialImage, apply_affine, rescale_intensity
from inrreg_pipeline.synthetic import KnownDeformation, deform, random_deformation, registration_error

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from rigid_protocol import corner_relative_distance  # noqa: E402  (the benchmarks' 2-D success protocol)

CPU = torch.device("cpu")


# --- hash encoding ------------------------------------------------------------------------------

def random_params(enc: HashEncoding, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        enc.params.copy_(torch.rand(enc.params.shape, generator=gen) * 2 - 1)


@pytest.mark.parametrize("d", [2, 3])
def test_dense_level_is_multilinear_interpolation_of_the_table(d):
    enc = HashEncoding(d, n_levels=2, features_per_level=2, log2_table_size=14, base_resolution=5,
                       growth_factor=1.5, backend="torch")
    lay = enc.layout
    assert not lay.hashed[0] and not lay.hashed[1]
    random_params(enc)
    table = enc.grid.table().detach().numpy()
    rng = np.random.default_rng(0)
    for level in range(2):
        s, r = lay.scales[level], lay.resolutions[level]
        # The level's table as a dense grid: entry sum_i c_i r^i, axis 0 fastest -> array [c_{d-1}, .., c_0].
        grid = table[lay.offsets[level]:lay.offsets[level] + r ** d].reshape((r,) * d + (2,))
        # Points whose cell corners all lie inside the grid (p = s x + 0.5 < r - 1).
        x = rng.uniform(0, (r - 1.5) / s, size=(500, d)).astype(np.float32)
        out = enc(torch.as_tensor(x)).detach().numpy().reshape(500, 2, 2)[:, level]
        pos = (x.astype(np.float64) * np.float32(s) + 0.5)[:, ::-1].T
        expected = np.stack([map_coordinates(grid[..., f], pos, order=1) for f in range(2)], -1)
        np.testing.assert_allclose(out, expected, atol=1e-5)
        # At a grid vertex the encoding returns that vertex's table entry.
        corners = rng.integers(1, r - 1, size=(50, d))
        at = ((corners - 0.5) / np.float32(s)).astype(np.float32)
        out = enc(torch.as_tensor(at)).detach().numpy().reshape(50, 2, 2)[:, level]
        idx = (corners * r ** np.arange(d)).sum(1) + lay.offsets[level]
        np.testing.assert_allclose(out, table[idx], atol=1e-5)


def test_output_shape_and_level_weights():
    enc = HashEncoding(3, n_levels=6, features_per_level=4, log2_table_size=12, base_resolution=4,
                       growth_factor=2.0, backend="torch")
    assert enc.out_features == 24
    x = torch.rand(5, 7, 3)
    assert enc(x).shape == (5, 7, 24)
    assert enc(torch.rand(11, 3)).shape == (11, 24)
    enc.set_level_weights([1, 1, 0, 0, 0, 0])
    out = enc(torch.rand(11, 3))
    assert out[:, 8:].abs().max() == 0 and out[:, :8].abs().max() > 0
    # table sizes: min(T, R^d rounded up to a multiple of 8); hashed exactly when R^d > T
    lay = enc.layout
    for r, size, hashed in zip(lay.resolutions, lay.sizes, lay.hashed):
        assert size == min(4096, -(-r ** 3 // 8) * 8) and hashed == (r ** 3 > 4096)
    assert lay.n_params == sum(lay.sizes) * 4 == enc.params.numel()


def test_hashed_levels_use_the_spatial_hash_primes():
    assert PRIMES == (1, 2654435761, 805459861)
    corners = torch.as_tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 5, 7], [1000, 2000, 3000]])
    expected = [((1 * c0) ^ (2654435761 * c1 % 2 ** 32) ^ (805459861 * c2 % 2 ** 32))
                for c0, c1, c2 in corners.tolist()]
    assert spatial_hash(corners).tolist() == expected
    assert spatial_hash(corners[:3]).tolist() == [1, 2654435761, 805459861]

    enc = HashEncoding(3, n_levels=3, features_per_level=2, log2_table_size=10, base_resolution=16,
                       growth_factor=2.0, backend="torch")
    lay = enc.layout
    assert lay.hashed == [True, True, True] and lay.sizes == [1024] * 3
    random_params(enc, 1)
    table = enc.grid.table().detach().numpy()
    rng = np.random.default_rng(1)
    for level in range(3):
        s = lay.scales[level]
        c = rng.integers(1, lay.resolutions[level] - 1, size=(40, 3))
        at = torch.as_tensor(((c - 0.5) / np.float32(s)).astype(np.float32))
        out = enc(at).detach().numpy().reshape(40, 3, 2)[:, level]
        h = (c[:, 0] * 1) ^ (c[:, 1] * 2654435761 % 2 ** 32) ^ (c[:, 2] * 805459861 % 2 ** 32)
        np.testing.assert_allclose(out, table[h % 1024 + lay.offsets[level]], atol=1e-6)
        assert torch.equal(enc.grid.indices(torch.as_tensor(c)[:, None, :].expand(-1, 3, -1))[:, level],
                           torch.as_tensor(h % 1024 + lay.offsets[level]))


def test_input_gradient_matches_finite_differences():
    enc = HashEncoding(2, n_levels=4, features_per_level=2, log2_table_size=8, base_resolution=4,
                       growth_factor=1.7, backend="torch")
    random_params(enc, 2)
    x = torch.rand(64, 2, dtype=torch.float32) * 0.9 + 0.05
    weights = torch.randn(enc.out_features)
    x.requires_grad_(True)
    (enc(x) @ weights).sum().backward()
    eps = 1e-3
    for axis in range(2):
        step = torch.zeros(2)
        step[axis] = eps
        with torch.no_grad():
            fd = ((enc(x + step) - enc(x - step)) @ weights) / (2 * eps)
        same_cell = (torch.floor(torch.as_tensor(enc.layout.scales)[:, None] * (x + step)[:, axis] + 0.5)
                     == torch.floor(torch.as_tensor(enc.layout.scales)[:, None] * (x - step)[:, axis] + 0.5)).all(0)
        np.testing.assert_allclose(x.grad[same_cell, axis].numpy(), fd[same_cell].numpy(), rtol=2e-2, atol=2e-2)


def test_table_gradient_is_the_same_on_every_multithreaded_run():
    """Same seed, same result on a multi-core CPU: the gradient of the hash table (many points share
    an entry) must not depend on how the threads split the sum. With advanced indexing it did, and the
    two-network co-registration of an aligned pair moved 0.26-0.44 mm or more from run to run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        torch.manual_seed(0)
        enc = HashEncoding(3, n_levels=10, features_per_level=2, log2_table_size=15, base_resolution=4,
                           growth_factor=1.5, backend="torch")
        x = torch.rand(4096, 3)
        weights = torch.linspace(-1.0, 1.0, enc.out_features * len(x)).reshape(len(x), -1)
        grads = []
        for _ in range(4):
            enc.zero_grad()
            (enc(x) * weights).sum().backward()
            grads.append(enc.params.grad.clone())
    finally:
        torch.set_num_threads(threads)
    for g in grads[1:]:
        assert torch.equal(g, grads[0])


@pytest.mark.parametrize("d", [2, 3])
def test_fixed_points_give_the_encodings_features_and_table_gradient(d):
    """The velocity INR evaluates the same control-grid points every step through a precomputed sparse
    map (``at_points``): it must be the encoding itself, features and table gradient, on dense and
    hashed levels, with level weights, for points clamped onto the box, and repeatable on two threads."""
    enc = HashEncoding(d, n_levels=6, features_per_level=2, log2_table_size=10, base_resolution=4,
                       growth_factor=1.8, backend="torch")
    assert any(enc.layout.hashed) and not all(enc.layout.hashed)
    random_params(enc)
    enc.set_level_weights(np.linspace(0.2, 1.0, 6))
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(3000, d, generator=gen) * 1.2 - 0.1  # some outside [0, 1]: clamped by both
    weights = torch.rand(3000, enc.out_features, generator=gen) - 0.5
    direct = enc(x)
    (direct * weights).sum().backward()
    expected = enc.params.grad.clone()
    fixed = enc.at_points(x)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        grads = []
        for _ in range(3):
            enc.zero_grad()
            features = fixed()
            (features * weights).sum().backward()
            grads.append(enc.params.grad.clone())
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(features.detach().numpy(), direct.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(grads[0].numpy(), expected.numpy(), atol=1e-5)
    assert all(torch.equal(g, grads[0]) for g in grads[1:])
    with torch.no_grad():
        enc.params.mul_(-2.0)  # the map reads the current table, not the one it was built with
        np.testing.assert_allclose(fixed().numpy(), enc(x).numpy(), atol=1e-6)


def test_coarse_to_fine_schedule():
    np.testing.assert_array_equal(coarse_to_fine_weights(0.0, 4), np.zeros(4))
    np.testing.assert_allclose(coarse_to_fine_weights(1.0, 4), np.ones(4))
    np.testing.assert_allclose(coarse_to_fine_weights(3.0, 4), np.ones(4))
    np.testing.assert_allclose(coarse_to_fine_weights(0.375, 4), [1.0, 0.5, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(coarse_to_fine_weights(0.5, 4), [1.0, 1.0, 0.0, 0.0], atol=1e-12)
    a = np.linspace(0, 1, 41)
    w = np.stack([coarse_to_fine_weights(v, 5) for v in a])
    assert (np.diff(w, axis=0) >= 0).all() and (np.diff(w, axis=1) <= 0).all()


@pytest.mark.skipif(not (tcnn_available() and torch.cuda.is_available()),
                    reason="tinycudann (and CUDA) not available: only the PyTorch backend can run")
@pytest.mark.parametrize("d", [2, 3])
def test_backends_agree(d):
    cuda = torch.device("cuda")
    config = dict(n_levels=8, features_per_level=2, log2_table_size=12, base_resolution=4, growth_factor=1.6)
    fast = HashEncoding(d, backend="tcnn", device=cuda, **config).to(cuda)
    ref = HashEncoding(d, backend="torch", **config).to(cuda)
    assert fast.layout.hashed == ref.layout.hashed and fast.params.numel() == ref.params.numel()
    random_params(ref, 3)
    with torch.no_grad():
        fast.params.copy_(ref.params.detach().to(fast.params.dtype))
    weights = torch.as_tensor(np.linspace(0.2, 1.0, 8), dtype=torch.float32)
    fast.set_level_weights(weights)
    ref.set_level_weights(weights)
    x = torch.rand(4096, d, device=cuda)
    x_fast, x_ref = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out_fast, out_ref = fast(x_fast), ref(x_ref)
    torch.testing.assert_close(out_fast, out_ref, atol=1e-5, rtol=1e-4)
    probe = torch.randn_like(out_ref)
    (out_fast * probe).sum().backward()
    (out_ref * probe).sum().backward()
    torch.testing.assert_close(fast.params.grad.float(), ref.params.grad, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(x_fast.grad, x_ref.grad, atol=1e-3, rtol=1e-3)


# --- registration -------------------------------------------------------------------------------

def rigid_motion(image: SpatialImage, degrees: float, translation_mm) -> KnownDeformation:
    """``psi`` (moving -> fixed points): rotation about the image centre, then a translation."""
    grid = image.world_grid().reshape(-1, 2)
    c = (grid.min(0) + grid.max(0)) / 2
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    b = np.eye(3)
    b[:2, :2] = rot
    b[:2, 2] = c - rot @ c + np.asarray(translation_mm, float)
    return KnownDeformation(b, np.zeros((0, 2)), np.zeros((0, 2)), 1.0)


def t2_like(data: np.ndarray) -> np.ndarray:
    """A non-monotonic intensity remapping (T1-like -> T2-like): background dark, CSF bright, grey
    matter brighter than white matter (their order is swapped)."""
    v = rescale_intensity(data)
    return np.interp(v, [0, 0.15, 0.35, 0.7, 0.9, 1], [0, 0.2, 1.0, 0.6, 0.35, 0.3]).astype(np.float32)


def image_frame(matrix: np.ndarray, image: SpatialImage) -> np.ndarray:
    """A world (RAS mm) point map expressed in the image's own mm frame (voxel index x spacing), the
    frame :func:`corner_relative_distance` expects."""
    to_frame = np.diag(list(image.spacing) + [1.0]) @ np.linalg.inv(image.affine)
    return to_frame @ matrix @ np.linalg.inv(to_frame)


def corner_distance(result, psi: KnownDeformation, image: SpatialImage) -> float:
    """Relative corner distance between the estimated rigid fixed -> moving map and the truth ``psi^-1``."""
    estimated = np.asarray(result.summary["rigid_matrix_ras"])
    true = np.linalg.inv(psi.matrix)
    return corner_relative_distance(image_frame(estimated, image), image_frame(true, image), image.shape,
                                    image.spacing)


def brain(image: SpatialImage) -> np.ndarray:
    return image.data > 0.1 * image.data.max()


def psi_inverse_points(psi: KnownDeformation, image: SpatialImage) -> np.ndarray:
    """The true fixed -> moving map ``psi^-1`` (affine ``psi`` only) at the image's voxel centres."""
    return apply_affine(np.linalg.inv(psi.matrix), image.world_grid())


def rigid_pair(multimodal: bool):
    fixed = mni_slice()
    psi = rigid_motion(fixed, 8.0, (4.8, -3.6))  # 8 degrees, 6 mm
    moving = deform(fixed, psi)
    if multimodal:
        moving = moving.with_data(t2_like(moving.data))
    return fixed, moving, psi


def rigid_settings(multimodal: bool, coarse_to_fine: bool = True, iterations: int | None = None):
    """The ``two-network-rigid`` preset (optionally with fewer iterations)."""
    s = copy.deepcopy(load_preset("two-network-rigid"))
    s.two_network.multimodal = multimodal
    s.two_network.coarse_to_fine = coarse_to_fine
    if iterations is not None:
        s.two_network.iterations = iterations
    return s


def test_rigid_recovery_2d_single_modal():
    fixed, moving, psi = rigid_pair(multimodal=False)
    before = corner_relative_distance(np.eye(3), image_frame(np.linalg.inv(psi.matrix), fixed), fixed.shape,
                                      fixed.spacing)
    # One shared image channel aligns sooner than two: 250 of the preset's 450 iterations (CPU time).
    result = register(fixed, moving, rigid_settings(False, iterations=250), CPU, seed=0)
    distance = corner_distance(result, psi, fixed)
    assert before > 0.05
    assert distance < 0.02, (before, distance)
    # The rigid fit is the returned affine and the residual displacement is small.
    np.testing.assert_allclose(result.affine, np.asarray(result.summary["rigid_matrix_ras"]))
    assert np.abs(result.displacement).mean() < 1.0


def test_rigid_recovery_2d_multi_modal_needs_coarse_to_fine():
    fixed, moving, psi = rigid_pair(multimodal=True)
    result = register(fixed, moving, rigid_settings(True), CPU, seed=0)
    distance = corner_distance(result, psi, fixed)
    assert distance < 0.02, distance

    # Without the schedule the image network stores both images as they are and the motion does not
    # align them: the rigid fit stays near the identity, far from the truth. (The motion starts at
    # zero here, not at the centre-of-mass translation, so "does not move" is measured from zero.)
    plain_settings = rigid_settings(True, coarse_to_fine=False)
    plain_settings.two_network.centre_of_mass_init = False
    plain = register(fixed, moving, plain_settings, CPU, seed=0)
    plain_distance = corner_distance(plain, psi, fixed)
    identity = corner_relative_distance(np.eye(3), image_frame(np.linalg.inv(psi.matrix), fixed), fixed.shape,
                                        fixed.spacing)
    assert plain_distance > 0.05 and plain_distance > 0.7 * identity, (distance, plain_distance, identity)
    true_motion = np.linalg.norm(psi_inverse_points(psi, fixed) - fixed.world_grid(), axis=-1)[brain(fixed)].mean()
    assert plain.summary["two_network"]["motion_mean_mm"] < 0.5 * true_motion, (plain.summary["two_network"],
                                                                               true_motion)
    assert result.summary["two_network"]["motion_mean_mm"] > 0.8 * true_motion


def test_deformable_recovery_3d_multi_modal():
    fixed = mni_small()
    psi = random_deformation(fixed, amplitude_mm=5.0, rotation_deg=3.0, translation_mm=3.0, scaling=0.03, seed=2)
    moving = deform(fixed, psi)
    moving = moving.with_data(t2_like(moving.data))
    settings = copy.deepcopy(load_preset("two-network-deformable"))
    settings.two_network.multimodal = True
    result = register(fixed, moving, settings, CPU, seed=0)

    grid = fixed.world_grid()
    inside = brain(fixed)
    before = registration_error(psi, grid, grid)[inside].mean()
    after = registration_error(psi, apply_affine(result.affine, grid + result.displacement), grid)[inside].mean()
    assert before > 4.0
    assert after < 0.75 * before, (before, after)
    assert result.summary["jacobian"]["percent_nonpositive_in_mask"] < 1.0


def test_centre_of_mass_start_and_shared_latent_channels():
    """``centre_of_mass_init``: the motion starts as the translation between the foreground centres
    (the contrast does not matter); ``shared_latent``: the image channels are MLPs of shared latents."""
    from inrreg_pipeline.core.two_network import build_networks, fit_two_networks, foreground_centre_of_mass

    fixed = mni_slice()
    shift = np.array([6.0, -4.0])
    fixed_n = fixed.with_data(rescale_intensity(fixed.data))
    moving = SpatialImage(t2_like(fixed.data), fixed.affine.copy())
    moving.affine[:2, 2] += shift  # the same anatomy 6, -4 mm away, other contrast
    everywhere = np.ones(fixed.shape, bool)
    np.testing.assert_allclose(foreground_centre_of_mass(moving, everywhere)
                               - foreground_centre_of_mass(fixed_n, everywhere), shift, atol=0.5)
    s = copy.deepcopy(load_preset("two-network-rigid"))
    assert s.two_network.centre_of_mass_init and s.two_network.shared_latent == 2
    s.two_network.multimodal = True
    s.two_network.iterations, s.two_network.points = 1, 64  # motion lr is 0 at iteration 0 (warm-up)
    torch.manual_seed(0)
    motion, image, _ = fit_two_networks(fixed_n, moving, s.two_network, CPU, np.random.default_rng(0))
    points = torch.as_tensor(fixed.world_grid().reshape(-1, 2)[::50], dtype=torch.float32)
    with torch.no_grad():
        m = motion(points).numpy()
    np.testing.assert_allclose(m, np.broadcast_to(m[0], m.shape), atol=1e-5)
    np.testing.assert_allclose(m[0], shift, atol=0.5)
    assert image.heads is not None and len(image.heads) == 2 and image.out.out_features == 2
    assert image(points).shape == (len(points), 2)
    # off by default, and single-modal images have one linear channel whatever shared_latent says
    s.two_network.multimodal = False
    _, single, _ = build_networks(fixed, s.two_network, CPU)
    assert single.heads is None and single(points).shape == (len(points), 1)
    from inrreg_pipeline.core.config import TwoNetworkSettings

    assert not TwoNetworkSettings().centre_of_mass_init and TwoNetworkSettings().shared_latent == 0
    s.two_network.shared_latent = -1
    with pytest.raises(ValueError, match="shared_latent"):
        build_networks(fixed, s.two_network, CPU)


# --- result fields, presets ---------------------------------------------------------------------

def tiny_core_settings():
    """The core (SIREN) method at a few iterations: only its summary keys are compared."""
    s = quick_settings(iterations=5, patches=1, patch_size=8, hidden=16)
    s.affine.shrink_factors, s.affine.iterations, s.affine.rigid_iterations, s.affine.samples = [2], [5], 5, 500
    return s


@pytest.mark.parametrize("preset,motion", [("two-network-rigid", "rigid"), ("two-network-deformable", "deformable"),
                                           ("two-network-rigid", "affine-param")])
def test_register_returns_every_result_field(preset, motion):
    fixed = mni_slice()
    moving_full = deform(fixed, random_deformation(fixed, amplitude_mm=3.0, seed=4))
    # A moving image on its own, smaller grid (other shape and origin) to check which grid each output is on.
    moving = SpatialImage(moving_full.data[5:90, 10:100].copy(), moving_full.affine @ np.array(
        [[1.0, 0, 5], [0, 1, 10], [0, 0, 1]]))
    settings = copy.deepcopy(load_preset(preset))
    assert settings.method == "two-network"
    settings.two_network.motion = motion
    settings.two_network.iterations = 20
    settings.two_network.points = 256
    calls = []

    def progress(stage, total):
        calls.append((stage, total))
        return lambda steps, loss: calls.append(steps)

    result = register(fixed, moving, settings, CPU, seed=0, progress=progress)
    assert calls[0] == ("two-network", 20) and sum(calls[1:]) == 20
    baseline = register(fixed, moving, tiny_core_settings(), CPU, seed=0) if motion == "rigid" else None

    assert result.affine.shape == (3, 3)
    assert result.displacement.shape == fixed.shape + (2,)
    assert result.inverse_displacement.shape == fixed.shape + (2,)
    assert result.warped.shape == fixed.shape
    assert result.inverse_warped.shape == moving.shape
    assert result.jacobian.shape == fixed.shape
    for array in (result.affine, result.displacement, result.inverse_displacement, result.warped,
                  result.inverse_warped, result.jacobian):
        assert np.isfinite(array).all()
    # phi(x) = A(x + u(x)) and result.model gives u at any world point (as the core's).
    grid = fixed.world_grid()
    with torch.no_grad():
        u = result.model(torch.as_tensor(grid.reshape(-1, 2), dtype=torch.float32)).numpy()
    np.testing.assert_allclose(u.reshape(result.displacement.shape), result.displacement, atol=1e-4)
    with torch.no_grad():
        m = result.model.motion(torch.as_tensor(grid.reshape(-1, 2), dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(apply_affine(result.affine, grid + result.displacement).reshape(-1, 2),
                               grid.reshape(-1, 2) + m, atol=1e-3)
    summary = result.summary
    assert summary["method"] == "two-network" and summary["two_network"]["motion"] == motion
    assert np.asarray(summary["rigid_matrix_ras"]).shape == (3, 3)
    if baseline is not None:
        missing = set(baseline.summary) - set(summary)
        assert not missing, missing
        for key in ("loss", "jacobian", "inverse_consistency", "runtime_s"):
            assert not set(baseline.summary[key]) - set(summary[key]), key
    import json

    json.dumps(summary)  # written as-is into Pregistration.json


def test_presets_and_validation():
    for name in ("two-network-rigid", "two-network-deformable"):
        s = load_preset(name)
        assert s.method == "two-network" and s.two_network.coarse_to_fine
    assert load_preset("two-network-rigid").two_network.motion == "rigid"
    assert load_preset("two-network-deformable").two_network.motion == "deformable"
    assert load_preset("default").method == "siren"
    bad = copy.deepcopy(load_preset("two-network-rigid"))
    bad.two_network.motion = "elastic"
    with pytest.raises(ValueError, match="two_network.motion"):
        validate(bad)
    bad = copy.deepcopy(load_preset("two-network-rigid"))
    bad.method = "three-network"
    with pytest.raises(ValueError, match="method"):
        validate(bad)
    bad = copy.deepcopy(load_preset("two-network-rigid"))
    bad.two_network.image_hash.base_resolution = 1
    with pytest.raises(ValueError, match="image_hash"):
        validate(bad)


def test_layout_matches_tiny_cuda_nn_rules():
    lay = GridLayout(2, n_levels=3, features_per_level=2, log2_table_size=8, base_resolution=4, growth_factor=2.0)
    assert lay.scales == [3.0, 7.0, 15.0] and lay.resolutions == [4, 8, 16]
    assert lay.sizes == [16, 64, 256] and lay.hashed == [False, False, False]
    assert lay.offsets == [0, 16, 80]
    lay = GridLayout(2, n_levels=2, features_per_level=1, log2_table_size=8, base_resolution=16, growth_factor=1.5)
    assert lay.resolutions == [16, 24] and lay.sizes == [256, 256] and lay.hashed == [False, True]
    assert isinstance(HashEncoding(2, backend="torch").grid, TorchHashEncoding)
    if not tcnn_available():
        with pytest.raises(RuntimeError, match="tinycudann"):
            HashEncoding(2, backend="tcnn")


def test_encoding_domain_is_physical():
    """The networks' coordinates depend on the fixed image's world box only, not on how it is stored."""
    from inrreg_pipeline.core.config import TwoNetworkSettings
    from inrreg_pipeline.core.two_network import build_networks

    fixed = mni_small(4)
    flipped = SpatialImage(np.ascontiguousarray(np.transpose(fixed.data, (2, 0, 1))[::-1]),
                           fixed.affine[:, [2, 0, 1, 3]] @ np.array([[-1.0, 0, 0, fixed.shape[2] - 1], [0, 1, 0, 0],
                                                                     [0, 0, 1, 0], [0, 0, 0, 1]]))
    np.testing.assert_allclose(np.sort(flipped.world_grid().reshape(-1, 3), 0),
                               np.sort(fixed.world_grid().reshape(-1, 3), 0), atol=1e-6)
    _, _, a = build_networks(fixed, TwoNetworkSettings(), CPU)
    _, _, b = build_networks(flipped, TwoNetworkSettings(), CPU)
    points = torch.as_tensor(fixed.world_grid().reshape(-1, 3)[::97], dtype=torch.float32)
    torch.testing.assert_close(a(points), b(points))
    assert float(a(points).min()) >= 0.0 and float(a(points).max()) <= 1.0
