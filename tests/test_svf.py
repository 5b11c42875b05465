"""The diffeomorphic velocity INR (``method: "svf"``): properties of the parameterisation and a real recovery.

Integration properties use analytic smooth velocity fields on oblique, anisotropic grids; the
registration checks use nilearn's MNI152 (the only real image on a fresh machine) under a known
smooth deformation (``inrreg_pipeline.synthetic``).
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
import nibabel as nib
from helpers import SHARED, assert_recovered_without_folding, known_deformation_pair, mni_small, quick_svf

import inrreg_pipeline.core.affine as affine_module
import inrreg_pipeline.core.svf as svf_module
from inrreg_pipeline.core.config import load_preset, validate
from inrreg_pipeline.core.losses import box_mean, determinant
from inrreg_pipeline.core.encodings import NormalisedBox
from inrreg_pipeline.core.hash_grid_inr import HashGridINR, growth_factor
from inrreg_pipeline.core.registration import register
from inrreg_pipeline.core.space import (SpatialImage, apply_affine, dilate_mm, foreground_mask, rescale_intensity,
                                       sample_array, voxel_grid_to_world, world_bounding_box)
from inrreg_pipeline.core.svf import ControlGrid, GridSampler, integrate, level_shrink_factors
from inrreg_pipeline.demo import oblique_grid
from inrreg_pipeline.metrics import jacobian_determinant_from_displacement
from inrreg_pipeline.synthetic import deform, random_deformation

CPU = torch.device("cpu")


def smooth_velocity(points: np.ndarray, amplitude_mm: float, width_mm: float = 20.0) -> np.ndarray:
    """A Gaussian-windowed swirl, contraction towards the centre and shift (mm), smooth on the scale of
    ``width_mm``; its gradient at the centre is about ``amplitude_mm / width_mm``."""
    centre = points.reshape(-1, 3).mean(0)
    diff = points - centre
    g = np.exp(-(diff ** 2).sum(-1) / (2 * width_mm ** 2))[..., None]
    swirl = np.stack([-diff[..., 1], diff[..., 0], np.zeros_like(diff[..., 2])], -1) / width_mm
    return (amplitude_mm * g * (swirl - diff / width_mm + np.array([0.3, -0.2, 0.4]))).astype(np.float32)


@pytest.fixture(scope="module")
def grid():
    shape, affine = oblique_grid(mni_small(2), spacing=(3.2, 3.0, 3.6), angle_deg=12.0)
    return shape, affine


def _integrated(shape, affine, amplitude_mm: float, steps: int = 7):
    points = torch.as_tensor(voxel_grid_to_world(shape, affine), dtype=torch.float32)
    v = torch.as_tensor(smooth_velocity(points.numpy(), amplitude_mm))
    sampler = GridSampler(shape, affine, CPU)
    return points, sampler, integrate(v, points, sampler, steps), integrate(-v, points, sampler, steps)


def test_inverse_composes_to_identity_within_a_tenth_of_a_voxel(grid):
    shape, affine = grid
    points, sampler, u, w = _integrated(shape, affine, amplitude_mm=8.0)
    assert float(u.norm(dim=-1).max()) > 5.0  # a real deformation, several voxels
    spacing = np.linalg.norm(affine[:3, :3], axis=0).min()
    # (exp(-v) o exp(v))(x) - x = u(x) + w(x + u(x)), away from the border where w is cut off
    residual = (u + sampler(w.movedim(-1, 0)[None], points + u).movedim(0, -1)).norm(dim=-1).numpy()
    interior = tuple(slice(6, n - 6) for n in shape)
    assert residual[interior].max() < 0.1 * spacing, residual[interior].max()


def test_no_folding_on_a_large_smooth_deformation(grid):
    shape, affine = grid
    _, _, u, _ = _integrated(shape, affine, amplitude_mm=30.0)
    assert float(u.norm(dim=-1).max()) > 10.0
    jac = jacobian_determinant_from_displacement(u.numpy(), affine=affine)
    # the same velocity as a plain displacement folds: the diffeomorphic map does not
    plain = jacobian_determinant_from_displacement(
        smooth_velocity(voxel_grid_to_world(shape, affine), 30.0), affine=affine)
    assert (plain <= 0).any()
    assert jac.min() > 0, jac.min()


def test_control_grid_is_a_subgrid_of_the_fixed_grid_around_the_mask():
    fixed = mni_small(2)
    mask = foreground_mask(fixed.data)
    g = ControlGrid.around_mask(fixed, mask, spacing_mm=8.0, margin_mm=8.0)
    assert (g.stride == 2).all()  # 8 mm at 4 mm voxels
    idx = np.argwhere(mask)
    world = voxel_grid_to_world(g.shape, g.affine).reshape(-1, 3)
    lo, hi = world.min(0), world.max(0)
    brain = apply_affine(fixed.affine, idx.astype(float))
    assert (brain.min(0) >= lo - 1e-6).all() and (brain.max(0) <= hi + 1e-6).all()
    # voxel i of the control grid is fixed voxel start + stride * i
    np.testing.assert_allclose(g.affine[:3, 3], apply_affine(fixed.affine, g.start.astype(float)))


@pytest.fixture(scope="module")
def recovery():
    fixed, moving, psi = known_deformation_pair()
    result = register(fixed, moving, quick_svf(), CPU, seed=3)
    return fixed, moving, psi, result


def test_svf_registration_recovers_a_known_deformation_without_folding(recovery):
    fixed, moving, psi, result = recovery
    assert_recovered_without_folding(fixed, psi, result)
    assert result.summary["jacobian"]["percent_nonpositive_fov"] == 0.0
    # the inverse is exp(-v): consistent to well under a voxel
    assert result.summary["inverse_consistency"]["mean_mm"] < 0.4


def test_dense_field_is_the_control_grid_field_at_every_voxel(recovery):
    """The written field is the integrated control-grid field interpolated at every fixed voxel,
    also where the dense step skips the voxels it knows to be 0 (beyond one stride of the grid)."""
    fixed, _, _, result = recovery
    model = result.model
    with torch.no_grad():
        u = model.displacement(quick_svf().svf.squaring_steps)
        everywhere = model.at(u, torch.as_tensor(fixed.world_grid(), dtype=torch.float32)).numpy()
    # float noise only (the world -> grid matmul rounds by batch): 1e-12 to 1e-9 mm where a voxel sits on
    # the box edge, whose interpolation weight is then float32 rounding of 0
    np.testing.assert_allclose(result.displacement, everywhere, rtol=0, atol=1e-6)
    assert np.abs(everywhere).max() > 1.0  # a real deformation, not zeros compared with zeros


def test_voxels_beyond_one_stride_of_the_control_grid_are_exactly_zero():
    """The box the dense step evaluates: multilinear interpolation with zero padding is 0 one stride
    beyond the grid's first and last points, and the box ends there (clipped to the image)."""
    from inrreg_pipeline.core.svf import _interpolated_box

    affine = np.eye(4)  # 1 mm fixed grid; the control grid every 4th voxel from voxel (10, 0, 5)
    grid_affine = np.diag([4.0, 4.0, 4.0, 1.0])
    grid_affine[:3, 3] = [10, 0, 5]
    grid = ControlGrid((3, 4, 2), grid_affine, np.array([10, 0, 5]), np.array([4, 4, 4]))
    box = _interpolated_box(grid, (40, 30, 12))
    assert box == (slice(7, 22), slice(0, 16), slice(2, 12))
    sampler = GridSampler(grid.shape, grid.affine, CPU)
    field = torch.ones((1, 1) + grid.shape)
    world = torch.as_tensor(voxel_grid_to_world((40, 30, 12), affine), dtype=torch.float32)
    values = sampler(field, world)[0].numpy()
    outside = np.ones(values.shape, bool)
    outside[box] = False
    assert values[outside].max() == 0 and values[box].min() > 0


def test_same_seed_same_result_on_cpu(recovery):
    fixed, moving, _, result = recovery
    again = register(fixed, moving, quick_svf(), CPU, seed=3)
    np.testing.assert_allclose(again.displacement, result.displacement, atol=1e-5)
    assert again.summary["loss"] == result.summary["loss"]


@pytest.mark.parametrize("spacing, factors", [
    ((2.0, 2.0, 2.0), [4, 2, 1]), ((1.0, 1.0, 1.0), [8, 4, 2]), ((0.9, 0.9, 2.4), [9, 4, 2]),
    ((4.0, 4.0, 4.0), [2, 1, 1])])
def test_pyramid_levels_are_sizes_in_mm_whatever_the_voxel_size(spacing, factors):
    """The shipped svf preset works at 8, 4 then 2 mm: a 1 mm image is shrunk by 8, 4 and 2, a 2 mm one
    by 4, 2 and 1 (0.9 mm voxels: 9, 4, 2, the factors nearest 8, 4 and 2 mm)."""
    s = load_preset("svf").svf
    image = SpatialImage(np.zeros((8, 8, 8), np.float32), np.diag(list(spacing) + [1.0]))
    assert level_shrink_factors(image, s) == factors


def test_levels_in_mm_replace_the_shrink_factors_in_the_preset_check(tmp_path):
    """Three mm levels on a base with two shrink factors is a valid preset; one size per level or a
    non-positive size is refused before any work, naming the key."""
    good = tmp_path / "three.json"
    good.write_text('{"base": "svf", "svf": {"level_spacing_mm": [4, 2, 1], "iterations": [10, 10, 10]}}')
    assert load_preset(str(good)).svf.level_spacing_mm == [4.0, 2.0, 1.0]
    for bad in ('[4, 2, 1], "iterations": [10, 10]', '[4, 0]', '"4mm"'):
        path = tmp_path / "bad.json"
        path.write_text('{"base": "svf", "svf": {"level_spacing_mm": ' + bad + '}}')
        with pytest.raises(ValueError, match="level_spacing_mm"):
            load_preset(str(path))


def test_preset_levels_in_mm_and_equal_shrink_factors_give_the_same_registration(recovery):
    """On these 4 mm images ``level_spacing_mm [16, 8, 4]`` is ``shrink_factors [4, 2, 1]``: bit for bit
    the same run."""
    fixed, moving, _, result = recovery
    s = quick_svf()
    s.svf.level_spacing_mm, s.svf.shrink_factors = None, [4, 2, 1]
    again = register(fixed, moving, s, CPU, seed=3)
    np.testing.assert_array_equal(again.displacement, result.displacement)


def test_the_same_pair_at_half_the_voxel_size_gives_the_same_transform(recovery):
    """Sizes in mm mean the same anatomy at any resolution: the pair on a 2 mm grid is optimised on the
    same 16, 8 and 4 mm levels as on its 4 mm grid, so the transforms agree to a fraction of a voxel."""
    fixed, moving, _, result = recovery
    fine = np.diag([2.0, 2.0, 2.0, 1.0])
    fine[:3, 3] = fixed.affine[:3, 3]
    shape = tuple(2 * n - 1 for n in fixed.shape)
    points = voxel_grid_to_world(shape, fine)
    fixed_fine = SpatialImage(sample_array(fixed.data, fixed.affine, points, CPU), fine)
    moving_fine = SpatialImage(sample_array(moving.data, moving.affine, points, CPU), fine)
    s = quick_svf()
    fine_result = register(fixed_fine, moving_fine, s, CPU, seed=3)
    inside = foreground_mask(fixed.data)
    coarse_map = apply_affine(result.affine, fixed.world_grid() + result.displacement)[inside]
    fine_map = apply_affine(fine_result.affine, fixed_fine.world_grid() + fine_result.displacement)[::2, ::2, ::2]
    gap = np.linalg.norm(fine_map[inside] - coarse_map, axis=-1)
    assert gap.mean() < 1.0, gap.mean()  # mm, a quarter of the 4 mm voxel


def test_svf_runs_in_2d_on_an_oblique_slice():
    vol = mni_small(2)
    fixed = SpatialImage(vol.data[:, :, 24].copy(), vol.affine[np.ix_([0, 1, 3], [0, 1, 3])])
    psi = random_deformation(fixed, amplitude_mm=5.0, rotation_deg=3.0, translation_mm=2.0, seed=2)
    moving = deform(fixed, psi)
    result = register(fixed, moving, quick_svf(), CPU, seed=0)
    inside = foreground_mask(fixed.data)
    grid = fixed.world_grid()
    before = np.linalg.norm(psi(grid) - grid, axis=-1)[inside].mean()
    after = np.linalg.norm(psi(apply_affine(result.affine, grid + result.displacement)) - grid, axis=-1)[inside]
    assert after.mean() < 0.5 * before
    assert result.jacobian.min() > 0


def test_log_jacobian_regulariser_is_the_measured_spread_of_volume_change(grid):
    """The svf regulariser ``mean (log det J)^2`` uses the same finite-difference Jacobian, through the
    grid's direction cosines, as the evaluation of every method's written warp."""
    from inrreg_pipeline.core.svf import VelocityField

    shape, affine = grid
    g = ControlGrid(tuple(shape), affine, np.zeros(3, int), np.ones(3, int))
    field = VelocityField(torch.nn.Identity(), g, np.ones(shape, np.float32), CPU)
    _, _, u, _ = _integrated(shape, affine, amplitude_mm=12.0)
    ours = float(field.log_jacobian_energy(u))
    det = jacobian_determinant_from_displacement(u.numpy(), affine=affine)
    assert det.min() > 0
    assert ours == pytest.approx(float(np.mean(np.log(det) ** 2)), rel=1e-3)
    assert ours > 1e-3  # a real volume change


def test_the_compared_region_is_the_foreground_grown_by_a_distance_in_mm():
    """``dilate_mm`` grows a mask by a Euclidean distance in mm through the voxel spacing: on 1 x 3 mm
    voxels, 3 mm is three voxels along the first axis and one along the second."""
    mask = np.zeros((11, 11), bool)
    mask[5, 5] = True
    grown = dilate_mm(mask, np.array([1.0, 3.0]), 3.0)
    assert grown[2, 5] and grown[8, 5] and not grown[1, 5] and not grown[9, 5]
    assert grown[5, 4] and grown[5, 6] and not grown[5, 3] and not grown[5, 7]
    assert not grown[3, 4]  # sqrt(2^2 + 3^2) = 3.6 mm > 3 mm
    np.testing.assert_array_equal(dilate_mm(mask, np.array([1.0, 3.0]), 0.0), mask)


@pytest.mark.parametrize("user_mask", [False, True])
def test_only_the_automatic_foreground_is_grown_never_a_users_mask(monkeypatch, user_mask):
    """Without a mask both stages compare the fixed foreground grown by the preset's distances (its
    outline against the background drives the alignment); a user's fixed mask says where to compare
    and is used as given, as ANTs' ``-x``."""
    seen: dict[str, list[float]] = {"affine": [], "svf": []}

    def recording(name):
        def grow(mask, spacing, distance_mm):
            seen[name].append(distance_mm)
            return dilate_mm(mask, spacing, distance_mm)
        return grow

    monkeypatch.setattr(affine_module, "dilate_mm", recording("affine"))
    monkeypatch.setattr(svf_module, "dilate_mm", recording("svf"))
    fixed = mni_small(2)
    s = quick_svf()
    s.affine.iterations, s.affine.rigid_iterations, s.svf.iterations = [2, 2], 2, [2, 2, 2]
    shipped = load_preset("svf")
    assert shipped.affine.sample_dilation_mm > 0 and shipped.svf.similarity_dilation_mm > 0
    mask = foreground_mask(fixed.data) if user_mask else None
    register(fixed, deform(fixed, random_deformation(fixed, amplitude_mm=3.0, seed=1)), s, CPU, seed=0,
             fixed_mask=mask)
    expected_affine = 0.0 if user_mask else s.affine.sample_dilation_mm
    expected_svf = 0.0 if user_mask else s.svf.similarity_dilation_mm
    assert seen["affine"] and set(seen["affine"]) == {expected_affine}
    assert seen["svf"] == [expected_svf]


@pytest.mark.parametrize("section, key, value", [("svf", "similarity_dilation_mm", -1),
                                                 ("svf", "similarity_dilation_mm", 50),
                                                 ("affine", "sample_dilation_mm", -2)])
def test_a_growth_distance_out_of_range_is_refused_naming_the_key(tmp_path, section, key, value):
    """Negative distances, and a similarity region beyond the control grid's margin (where the velocity
    is 0 and cannot follow), are refused before any work."""
    path = tmp_path / "bad.json"
    path.write_text('{"base": "svf", "%s": {"%s": %s}}' % (section, key, value))
    with pytest.raises(ValueError, match=key):
        load_preset(str(path))


def test_a_finer_control_grid_at_the_last_level_is_the_transforms_grid(recovery, tmp_path):
    """``level_control_spacing_mm [16, 16, 8]``: the continuous velocity network is evaluated on a 16 mm
    grid at the two coarse levels, then on an 8 mm one, which the written transform is integrated on;
    it still recovers the deformation without folding. A spacing list of the wrong length is refused."""
    fixed, moving, psi, result = recovery  # 16, 8, 8 mm control grids
    s = quick_svf()
    s.svf.level_control_spacing_mm = [16.0, 16.0, 8.0]
    seen = []
    original = svf_module.VelocityField.set_grid

    def spy(self, grid, taper, device):
        seen.append(tuple(grid.stride))
        original(self, grid, taper, device)

    svf_module.VelocityField.set_grid = spy
    try:
        again = register(fixed, moving, s, CPU, seed=3)
    finally:
        svf_module.VelocityField.set_grid = original
    assert seen == [(4, 4, 4), (2, 2, 2)]  # 16 mm (kept at the second level), then 8 mm on 4 mm voxels
    assert tuple(again.model.grid.stride) == (2, 2, 2)
    inside = foreground_mask(fixed.data)
    grid = fixed.world_grid()
    error = np.linalg.norm(psi(apply_affine(again.affine, grid + again.displacement)) - grid, axis=-1)[inside]
    reference = np.linalg.norm(psi(apply_affine(result.affine, grid + result.displacement)) - grid, axis=-1)[inside]
    assert error.mean() < 1.25 * reference.mean() and error.mean() < 2.0
    assert again.jacobian[inside].min() > 0
    path = tmp_path / "bad.json"
    path.write_text('{"base": "svf", "svf": {"level_control_spacing_mm": [4]}}')
    with pytest.raises(ValueError, match="level_control_spacing_mm"):
        load_preset(str(path))


@pytest.fixture(scope="module")
def hash_recovery(recovery):
    """The same pair as ``recovery``, the velocity given by the hash-grid network (cells 32 to 8 mm)."""
    fixed, moving, psi, _ = recovery
    s = quick_svf()
    s.svf.network, s.svf.lr = "hash-grid", 0.01
    s.svf.hash.levels, s.svf.hash.finest_mm = 4, 8.0
    return s, register(fixed, moving, s, CPU, seed=3)


def test_hash_grid_velocity_recovers_a_known_deformation_without_folding(recovery, hash_recovery):
    fixed, moving, psi, siren = recovery
    settings, result = hash_recovery
    assert isinstance(result.model.network, HashGridINR)
    assert_recovered_without_folding(fixed, psi, result)
    assert result.summary["inverse_consistency"]["mean_mm"] < 0.4
    # same seed, same result on a multi-threaded CPU (the table gradient is summed in a fixed order)
    again = register(fixed, moving, settings, CPU, seed=3)
    np.testing.assert_array_equal(again.displacement, result.displacement)


def test_lncc_alone_recovers_a_known_deformation_and_only_svf_accepts_it(recovery, hash_recovery):
    """``loss.similarity: lncc`` (SyN's local correlation, without the global NCC term) registers the
    known deformation without folding, differently from ``ncc+lncc``; the patch-sampling methods,
    whose points have no windows, refuse it naming the key."""
    fixed, moving, psi, _ = recovery
    settings, reference = hash_recovery
    s = copy.deepcopy(settings)
    s.loss.similarity = "lncc"
    result = register(fixed, moving, validate(s), CPU, seed=3)
    assert_recovered_without_folding(fixed, psi, result)
    assert np.abs(result.displacement - reference.displacement).max() > 1e-3
    other = load_preset("default")
    other.loss.similarity = "lncc"
    with pytest.raises(ValueError, match="loss.similarity must be one of .*method svf only"):
        validate(other)


def test_hash_levels_fade_in_coarse_to_fine_and_the_written_transform_uses_them_all(recovery, hash_recovery):
    """``svf.hash.coarse_to_fine_steps``: the first step sees the coarsest level alone, the levels join
    one after another over that many steps (counted across the image levels), the written transform
    has every level whole, and the deformation is still recovered without folding. Refused for a
    SIREN velocity, which has no levels."""
    fixed, moving, psi, _ = recovery
    settings, reference = hash_recovery
    s = copy.deepcopy(settings)
    s.svf.hash.coarse_to_fine_steps = 60  # all of the first level (40 steps) and half of the second
    weights = []
    original = HashGridINR.set_alpha

    def spy(self, alpha):
        original(self, alpha)
        weights.append(self.encoding.level_weights.clone().numpy())

    HashGridINR.set_alpha = spy
    try:
        result = register(fixed, moving, s, CPU, seed=3)
    finally:
        HashGridINR.set_alpha = original
    assert len(weights) == 80 + 1  # one per step of both levels, then all levels for the output
    np.testing.assert_allclose(weights[0], [1, 0, 0, 0])
    assert all(np.all(np.diff(w) <= 0) for w in weights)  # a finer level never weighs more than a coarser
    assert weights[30][1] == 1 and 0 < weights[30][2] < 1 and weights[30][3] == 0
    np.testing.assert_array_equal(weights[-1], 1)
    np.testing.assert_array_equal(result.model.network.encoding.level_weights.numpy(), 1)
    inside = foreground_mask(fixed.data)
    grid = fixed.world_grid()
    error = np.linalg.norm(psi(apply_affine(result.affine, grid + result.displacement)) - grid, axis=-1)[inside]
    baseline = np.linalg.norm(psi(apply_affine(reference.affine, grid + reference.displacement)) - grid, axis=-1)
    assert error.mean() < 1.25 * baseline[inside].mean() and error.mean() < 2.0
    assert result.jacobian[inside].min() > 0
    s.svf.network = "siren"
    with pytest.raises(ValueError, match="coarse_to_fine_steps"):
        validate(s)


def test_hash_grid_sizes_are_in_mm_and_it_starts_at_the_identity():
    """The finest cells are ``finest_mm`` (to within the level rounding) over a 4 mm and a 2 mm grid of the
    same box, so a preset means the same anatomy at any voxel size; the output starts at exactly 0."""
    coarse = mni_small(2)
    fine = SpatialImage(np.zeros(tuple(2 * n - 1 for n in coarse.shape), np.float32),
                        coarse.affine @ np.diag([0.5, 0.5, 0.5, 1.0]))
    s = load_preset("svf").svf.hash
    cells = []
    for image in (coarse, fine):
        torch.manual_seed(0)
        lower, upper = world_bounding_box(image.shape, image.affine)
        network = HashGridINR(NormalisedBox(lower, upper), 3, s)
        cells.append(network.finest_cell_mm())
        with torch.no_grad():
            assert network(torch.as_tensor(image.world_grid()[::4, ::4, ::4], dtype=torch.float32)).abs().max() == 0
    assert cells[0] == pytest.approx(cells[1], rel=0.02)
    assert s.finest_mm <= cells[0] < 1.1 * s.finest_mm
    assert growth_factor(100.0, s) > 1.0 and growth_factor(1.0, s) == 1.0  # a box finer than the base: one size


def _hidden_preactivations(network: HashGridINR, points: torch.Tensor) -> torch.Tensor:
    """The velocity MLP's first hidden layer before its ReLU at world points ``(N, d)``: ``(N, units)``."""
    with torch.no_grad():
        return network.mlp[0](network.encoding(network.domain(points)))


def test_without_hidden_biases_every_unit_starts_with_both_signs_over_the_image():
    """With hidden biases, the near-zero hash tables leave each unit with its bias's sign at every point
    (one Adam step of 0.01 on the bias can switch it off everywhere, for good); without them a unit's
    sign follows the features, so every unit is positive somewhere and negative somewhere."""
    image = mni_small(2)
    lower, upper = world_bounding_box(image.shape, image.affine)
    points = torch.as_tensor(image.world_grid()[::2, ::2, ::2].reshape(-1, 3), dtype=torch.float32)
    signs = {}
    for bias in (True, False):
        settings = copy.deepcopy(load_preset("svf").svf.hash)
        settings.hidden_bias = bias
        torch.manual_seed(0)
        pre = _hidden_preactivations(HashGridINR(NormalisedBox(lower, upper), 3, settings), points)
        signs[bias] = ((pre > 0).any(0) & (pre < 0).any(0)).float().mean().item()
    assert signs[False] == 1.0
    assert signs[True] < 0.1


OASIS = SHARED / "oasis-trt-20"


@pytest.mark.skipif(not OASIS.is_dir(), reason="shared oasis-trt-20 data not present")
def test_the_velocity_learns_at_the_seed_whose_units_all_died():
    """Session 18: on sub-01 <- sub-02 at 2 mm (resampled as the OASIS harness does), seed 2 of the
    session 15 ``svf`` lost every hidden unit in the 100 steps of its 8 mm level and the velocity stayed
    at the identity (the level's similarity 0.150 -> 0.150). The shipped ``svf`` (no hidden biases since
    session 18) learns there."""
    from nibabel.processing import resample_to_output

    def load(sub: str) -> SpatialImage:
        img = resample_to_output(nib.load(str(OASIS / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz")), [2.0] * 3, order=1)
        return SpatialImage(np.asarray(img.dataobj, np.float32), img.affine)

    fixed, moving = load("01"), load("02")
    settings = load_preset("svf")
    settings.svf.iterations = [100, 0, 0]
    seen = {}
    original = svf_module.fit_svf

    def recording(*args, **kwargs):
        model, history = original(*args, **kwargs)
        seen["similarity"] = history["similarity"]
        seen["alive"] = (_hidden_preactivations(model.network, model.points.reshape(-1, 3)) > 0).any(0)
        return model, history

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(svf_module, "fit_svf", recording)
        register(fixed, moving, settings, CPU, seed=2)
    assert seen["similarity"][-1] < 0.67 * seen["similarity"][0]
    assert seen["alive"].float().mean() > 0.9


@pytest.mark.parametrize("key, value", [("network", '"sine"'), ("hash", '{"finest_mm": 0}'),
                                        ("hash", '{"levels": 0}'), ("hash", '{"backend": "cuda"}'),
                                        ("level_lncc_window_mm", "[10]"), ("level_lncc_window_mm", "[10, 0]"),
                                        ("mind_alpha", "-1"), ("mind_distance_mm", "0"),
                                        ("level_mind_alpha", "[1, 1]"), ("level_mind_alpha", "[1, -1, 0]"),
                                        ("hash", '{"hidden_bias": 0}'), ("level_frozen_hash_levels", "[0, 4]"),
                                        ("level_frozen_hash_levels", "[0, 0, 9]"),
                                        ("level_frozen_hash_levels", "[0, 0, 1.5]")])
def test_a_bad_velocity_network_is_refused_naming_the_key(tmp_path, key, value):
    path = tmp_path / "bad.json"
    path.write_text('{"base": "svf", "svf": {"%s": %s}}' % (key, value))
    with pytest.raises(ValueError, match=f"svf.{key}"):
        load_preset(str(path))


def _fit_quick_svf(fixed: SpatialImage, moving: SpatialImage, iterations: list[int], frozen: list[float] | None):
    """``fit_svf`` of a rescaled pair with :func:`quick_svf` (identity affine, seed 0)."""
    s = quick_svf()
    s.svf.iterations, s.svf.level_frozen_hash_levels = iterations, frozen
    validate(s)
    torch.manual_seed(0)
    return svf_module.fit_svf(fixed, moving, np.eye(4), s, CPU, foreground_mask(fixed.data))


def test_frozen_hash_levels_keep_the_coarse_levels_exactly_while_the_fine_ones_learn():
    """``svf.level_frozen_hash_levels [0, 0, 4]``: at the last level the table entries of the four
    coarsest hash levels stay exactly where the first two levels left them (the same seed stopped
    there), while the finer entries and the MLP go on learning and lower the similarity loss;
    without the hold the last level moves those coarse entries too."""
    fixed, moving, _ = known_deformation_pair()
    pair = tuple(image.with_data(rescale_intensity(image.data)) for image in (fixed, moving))
    before, _ = _fit_quick_svf(*pair, [20, 20, 0], None)
    held, history = _fit_quick_svf(*pair, [20, 20, 40], [0, 0, 4])
    free, _ = _fit_quick_svf(*pair, [20, 20, 40], None)
    layout = before.network.encoding.layout
    cut = layout.offsets[4] * layout.features_per_level
    start, kept, moved = (model.network.encoding.params.detach() for model in (before, held, free))
    assert torch.equal(kept[:cut], start[:cut])
    assert not torch.equal(moved[:cut], start[:cut])
    assert (kept[cut:] - start[cut:]).abs().max() > 1e-3
    assert not torch.equal(held.network.out.weight, before.network.out.weight)
    last = [sim for sim, level in zip(history["similarity"], history["level"]) if level == 2]
    assert last[-1] < last[0]


def test_cell_corner_determinants_see_the_fold_that_central_differences_miss():
    """On an oblique, anisotropic control grid: the identity has det J = 1 at every cell corner; moving
    every other point along axis 0 by its spacing (a checkerboard) folds half the cells, which every
    cell corner shows, while the central differences of the log-Jacobian energy see no change at all."""
    linear = np.array([[2.0, 0.3, 0.0], [0.0, 3.0, 0.0], [0.1, 0.0, 2.5]])
    affine = np.eye(4)
    affine[:3, :3] = linear
    grid = ControlGrid((6, 5, 4), affine, np.zeros(3, int), np.ones(3, int))
    field = svf_module.VelocityField(torch.nn.Identity(), grid, np.ones(grid.shape, np.float32), CPU)
    u = torch.zeros(grid.shape + (3,))
    np.testing.assert_allclose(field.cell_corner_determinants(u).numpy(), 1.0, atol=1e-5)
    assert float(field.folding_energy(u, 0.1)) == 0.0
    u[::2, ..., :] = 1.2 * torch.as_tensor(linear[:, 0], dtype=torch.float32)  # points 0, 2, 4 pass points 1, 3, 5
    dets = field.cell_corner_determinants(u)
    assert (dets[:, 0::2] < 0).all() and (dets[:, 1::2] > 0).all()  # cells 0-1, 2-3, 4-5 fold; 1-2, 3-4 stretch
    assert float(field.folding_energy(u, 0.1)) > 0
    interior = (slice(1, -1),) * 3  # central differences there span two cells and see a plain shift
    du_di = torch.stack(torch.gradient(u, dim=(0, 1, 2)), dim=-1)
    assert float(du_di[interior].abs().max()) < 1e-6


@pytest.mark.parametrize("d", [2, 3])
def test_small_determinants_and_their_gradients_match_lapack(d):
    """The regularisers' det J (explicit formula, no LU) is LAPACK's, value and gradient, including on
    folded (negative) and near-singular matrices."""
    gen = torch.Generator().manual_seed(d)
    m = torch.randn(64, d, d, generator=gen, dtype=torch.float64)
    m[0] = torch.eye(d, dtype=torch.float64)
    m[1, :, 0] = m[1, :, 1]  # singular
    m.requires_grad_(True)
    ours = determinant(m)
    (g_ours,) = torch.autograd.grad((ours * torch.arange(64.0, dtype=torch.float64)).sum(), m)
    lapack = torch.linalg.det(m)
    (g_lapack,) = torch.autograd.grad((lapack * torch.arange(64.0, dtype=torch.float64)).sum(), m)
    values = ours.detach()
    assert float(values[0]) == 1.0 and abs(float(values[1])) < 1e-12 and (values < 0).any()
    np.testing.assert_allclose(ours.detach().numpy(), lapack.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(g_ours[2:].numpy(), g_lapack[2:].numpy(), rtol=1e-8, atol=1e-10)
    # at a singular matrix the gradient is still the cofactor matrix (LAPACK's backward differs there)
    a = m[1].detach()  # its weight in the sum is 1
    if d == 2:
        expected = torch.stack([torch.stack([a[1, 1], -a[1, 0]]), torch.stack([-a[0, 1], a[0, 0]])])
    else:
        expected = torch.stack([torch.linalg.cross(a[:, 1], a[:, 2]), torch.linalg.cross(a[:, 2], a[:, 0]),
                                torch.linalg.cross(a[:, 0], a[:, 1])], -1)
    np.testing.assert_allclose(g_ours[1].numpy(), expected.numpy(), rtol=1e-10, atol=1e-12)


def test_the_lncc_window_can_be_set_per_level(monkeypatch, tmp_path):
    """``svf.level_lncc_window_mm`` gives each pyramid level its own window (odd voxel counts at that
    level's voxel size); without it every level uses ``lncc_window_mm``."""
    image = mni_small()
    seen = []
    original = svf_module._masked_similarity

    def spy(name, fixed, warped, mask, window, region):
        seen.append(window)
        return original(name, fixed, warped, mask, window, region)

    monkeypatch.setattr(svf_module, "_masked_similarity", spy)
    path = tmp_path / "windows.json"
    path.write_text('{"base": "svf", "svf": {"iterations": [1, 1, 1], "level_lncc_window_mm": [36, 18, 9]}}')
    settings = load_preset(str(path))
    assert svf_module.level_lncc_windows(settings.svf) == [36.0, 18.0, 9.0]
    shipped = load_preset("svf").svf
    assert svf_module.level_lncc_windows(shipped) == [shipped.lncc_window_mm] * len(shipped.iterations)
    register(image, image, settings, CPU, use_affine=False)
    sizes = [shrink * float(np.mean(image.spacing)) for shrink in level_shrink_factors(image, settings.svf)]
    assert seen == [svf_module._odd_window(w, np.array([mm])) for w, mm in zip([36.0, 18.0, 9.0], sizes)]


@pytest.mark.parametrize("start, factor", [((4, 6, 2), 2), ((4, 6, 2), 1), ((3, 6, 2), 2)])
def test_the_displacement_at_a_levels_voxels_is_the_control_grids_interpolant(start, factor):
    """On an oblique, anisotropic, flipped fixed grid: the displacement at a pyramid level's crop voxels
    is the multilinear interpolant of the control grid, whether the level's voxels refine the control
    grid (upsampling) or not (a control point off the level's lattice: the general sampler)."""
    shape, affine = oblique_grid(mni_small())
    fixed = SpatialImage(np.zeros(shape, np.float32), affine)
    grid = ControlGrid((5, 4, 6), affine @ np.diag([4.0, 4.0, 4.0, 1.0]) + np.pad(
        (affine[:3, :3] @ np.array(start, float))[:, None], ((0, 1), (3, 0))), np.array(start), np.array([4, 4, 4]))
    field = svf_module.VelocityField(torch.nn.Identity(), grid, np.ones(grid.shape, np.float32), CPU)
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(grid.shape + (3,), generator=gen, dtype=torch.float32)
    crop, crop_affine = grid.subgrid(fixed, factor)
    crop_shape = tuple(sl.stop - sl.start for sl in crop)
    points = torch.as_tensor(voxel_grid_to_world(crop_shape, crop_affine), dtype=torch.float32)
    ours = field.on_level(factor, crop_shape, points)(u)
    np.testing.assert_allclose(ours.numpy(), field.at(u, points).numpy(), atol=2e-5)
    corners = ours[tuple(slice(0, None, 4 // factor) for _ in range(3))]  # the control points themselves
    if all(a % factor == 0 for a in start):
        np.testing.assert_allclose(corners.numpy(), u.numpy(), atol=2e-5)


@pytest.mark.parametrize("d, window", [(2, 3), (3, 5), (3, 9)])
def test_lncc_window_means_and_their_gradients_are_average_pooling(d, window):
    """The LNCC's window means (sliding sums, :func:`box_mean`) are ``avg_pool``'s, value and gradient."""
    gen = torch.Generator().manual_seed(window)
    x = torch.rand((2, 1) + (14, 11, 12)[:d], generator=gen, dtype=torch.float64, requires_grad=True)
    weights = torch.rand((2, 1) + tuple(n - window + 1 for n in x.shape[2:]), generator=gen, dtype=torch.float64)
    ours = box_mean(x, window)
    (g_ours,) = torch.autograd.grad((ours * weights).sum(), x)
    pool = (nnf.avg_pool3d if d == 3 else nnf.avg_pool2d)(x, window, 1)
    (g_pool,) = torch.autograd.grad((pool * weights).sum(), x)
    np.testing.assert_allclose(ours.detach().numpy(), pool.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g_ours.numpy(), g_pool.numpy(), rtol=1e-12, atol=1e-14)
