"""The registration core on real brain images (nilearn's MNI152) under known deformations."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import masked_ncc as ncc
from helpers import differing_sections, mni_slice, mni_small, quick_settings, research_preset

from inrreg_pipeline.core import load_preset, register
from inrreg_pipeline.core.config import PRESET_DIR, validate
from inrreg_pipeline.core.engine import level_iterations, make_optimiser, make_schedule
from inrreg_pipeline.core.space import SpatialImage, apply_affine
from inrreg_pipeline.demo import oblique_grid
from inrreg_pipeline.synthetic import deform, random_deformation, registration_error, sample_image

CPU = torch.device("cpu")


def phi(result, points: np.ndarray) -> np.ndarray:
    """The registration's point map ``A(x + u(x))`` at arbitrary world points (network evaluated)."""
    with torch.no_grad():
        u = result.model(torch.as_tensor(points, dtype=torch.float32)).numpy()
    return apply_affine(result.affine, points + u)


def brain(image: SpatialImage) -> np.ndarray:
    return image.data > 0.1 * image.data.max()


def test_recovers_known_deformation_2d():
    fixed = mni_slice()
    psi = random_deformation(fixed, amplitude_mm=5.0, seed=1)
    moving = deform(fixed, psi)
    result = register(fixed, moving, load_preset("fast"), CPU, seed=0)

    grid = fixed.world_grid()
    inside = brain(fixed)
    before = registration_error(psi, grid, grid)[inside].mean()
    after = registration_error(psi, apply_affine(result.affine, grid + result.displacement), grid)[inside].mean()
    assert before > 4.0
    assert after < 1.0 and after < 0.2 * before, (before, after)
    assert ncc(fixed.data, result.warped, inside) > 0.95 > ncc(fixed.data, moving.data, inside) + 0.3
    assert result.summary["jacobian"]["percent_nonpositive_in_mask"] < 0.5


def test_recovers_known_deformation_3d_small():
    fixed = mni_small()
    psi = random_deformation(fixed, amplitude_mm=5.0, seed=2)
    moving = deform(fixed, psi)
    result = register(fixed, moving, quick_settings(), CPU, seed=0)

    grid = fixed.world_grid()
    inside = brain(fixed)
    before = registration_error(psi, grid, grid)[inside].mean()
    affine_only = registration_error(psi, apply_affine(result.affine, grid), grid)[inside].mean()
    after = registration_error(psi, apply_affine(result.affine, grid + result.displacement), grid)[inside].mean()
    assert after < 0.4 * before, (before, affine_only, after)
    assert after < affine_only, "the INR must improve on the affine stage"
    assert ncc(fixed.data, result.warped, inside) > ncc(fixed.data, moving.data, inside) + 0.1


def reoriented(image: SpatialImage, order: tuple[int, ...], flips: tuple[int, ...]) -> SpatialImage:
    """The same physical image stored with permuted and reversed array axes (e.g. RAS -> ASL)."""
    data = np.transpose(image.data, order)
    affine = image.affine.copy()
    d = image.ndim
    affine[:, :d] = image.affine[:, list(order)]
    for axis in flips:
        data = np.flip(data, axis)
        affine[:, d] = affine[:, d] + affine[:, axis] * (data.shape[axis] - 1)
        affine[:, axis] = -affine[:, axis]
    return SpatialImage(np.ascontiguousarray(data), affine)


def test_same_physical_result_for_any_orientation_and_voxel_size():
    fixed = mni_small()
    psi = random_deformation(fixed, amplitude_mm=4.0, seed=3)
    moving = deform(fixed, psi)
    base = register(fixed, moving, quick_settings(), CPU, seed=0)

    # The same pair: fixed stored as ASL-like (axes permuted and flipped), moving on an oblique
    # anisotropic LAS-like grid (10 degree rotation, 3.6 x 4.4 x 4.0 mm voxels).
    fixed_b = reoriented(fixed, (1, 2, 0), (0, 2))
    np.testing.assert_allclose(sample_image(fixed_b, fixed.world_grid()), fixed.data, atol=1e-4)
    shape, affine = oblique_grid(fixed, spacing=(3.6, 4.4, 4.0))
    moving_b = deform(fixed, psi, shape, affine)
    other = register(fixed_b, moving_b, quick_settings(), CPU, seed=0)

    inside = brain(fixed)
    points = fixed.world_grid()[inside]
    err_base = registration_error(psi, phi(base, points), points).mean()
    err_other = registration_error(psi, phi(other, points), points).mean()
    before = registration_error(psi, points, points).mean()
    assert err_base < 0.4 * before and err_other < 0.4 * before, (before, err_base, err_other)
    # Same physical answer: the two point maps agree far better than the deformation's size.
    gap = np.linalg.norm(phi(base, points) - phi(other, points), axis=-1).mean()
    assert gap < 0.25 * before, (gap, before)


def test_same_seed_same_result_on_cpu():
    fixed = mni_slice()
    moving = deform(fixed, random_deformation(fixed, amplitude_mm=4.0, seed=4))
    settings = quick_settings(iterations=60)
    a = register(fixed, moving, settings, CPU, seed=11)
    b = register(fixed, moving, settings, CPU, seed=11)
    c = register(fixed, moving, settings, CPU, seed=12)
    np.testing.assert_array_equal(a.affine, b.affine)
    np.testing.assert_array_equal(a.displacement, b.displacement)
    np.testing.assert_array_equal(a.warped, b.warped)
    assert not np.array_equal(a.displacement, c.displacement), "the seed must matter"


def test_inverse_field_maps_back():
    fixed = mni_small()
    moving = deform(fixed, random_deformation(fixed, amplitude_mm=5.0, seed=5))
    result = register(fixed, moving, quick_settings(), CPU, seed=0)
    consistency = result.summary["inverse_consistency"]
    voxel = float(fixed.spacing.min())
    assert consistency["mean_mm"] < 0.1 * voxel, consistency
    # Independent check at off-grid points: (x + u(x)) + v(x + u(x)) = x.
    from inrreg_pipeline.core.space import sample_array

    rng = np.random.default_rng(0)
    points = fixed.world_grid()[brain(fixed)]
    points = points[rng.choice(len(points), 2000, replace=False)] + rng.uniform(-1, 1, (2000, 3))
    with torch.no_grad():
        y = points + result.model(torch.as_tensor(points, dtype=torch.float32)).numpy()
    back = y + sample_array(result.inverse_displacement, fixed.affine, y, CPU, vector=True)
    assert np.linalg.norm(back - points, axis=-1).mean() < 0.25 * voxel


@pytest.mark.parametrize("activation", ["relu", "sine", "snake", "sine+", "chirp", "morlet"])
def test_every_activation_starts_at_identity_and_trains(activation):
    fixed = mni_slice()
    moving = deform(fixed, random_deformation(fixed, amplitude_mm=4.0, seed=6))
    settings = quick_settings(iterations=40)
    settings.network.activation = activation
    settings.affine.enabled = False
    from inrreg_pipeline.core.optimisation import build_network

    net = build_network(fixed, settings.network)
    with torch.no_grad():
        u0 = net(torch.as_tensor(fixed.world_grid().reshape(-1, 2), dtype=torch.float32))
    assert float(u0.abs().max()) < 0.5, "the last layer's U(-1e-4, 1e-4) start must give u ~ 0 mm"
    result = register(fixed, moving, settings, CPU, seed=0)
    history = result.summary["loss"]
    assert np.isfinite(history["similarity_final"])
    assert np.abs(result.displacement).max() > 0.05, "the network must move"


def test_smoothing_is_in_millimetres_on_anisotropic_grids():
    """``smooth`` spreads a point by the same physical sigma along a 1 mm and a 2.5 mm axis."""
    from inrreg_pipeline.core.space import smooth

    data = np.zeros((61, 25), dtype=np.float32)
    data[30, 12] = 1.0
    image = SpatialImage(data, np.diag([1.0, 2.5, 1.0]))
    out = smooth(image, 4.0).data
    assert out.sum() == pytest.approx(1.0, rel=1e-3)
    x_mm = (np.arange(61) - 30) * 1.0
    y_mm = (np.arange(25) - 12) * 2.5
    sd_x = np.sqrt((out.sum(1) * x_mm ** 2).sum())
    sd_y = np.sqrt((out.sum(0) * y_mm ** 2).sum())
    assert sd_x == pytest.approx(4.0, rel=0.05) and sd_y == pytest.approx(4.0, rel=0.1)
    assert smooth(image, 0.0) is image


def test_coarse_to_fine_levels_and_cosine_schedule_run_every_iteration():
    """Smoothing levels split the iterations (none lost) and the cosine schedule ends at its floor;
    the result still registers."""
    assert level_iterations(300, 3) == [100, 100, 100] and sum(level_iterations(10, 3)) == 10
    s = quick_settings(iterations=120)
    s.optimisation.smoothing_mm = [4.0, 0.0]
    s.optimisation.lr_schedule = "cosine"
    s.optimisation.lr_final_fraction = 0.05
    opt = make_optimiser(torch.nn.Linear(2, 2).parameters(), s.optimisation)
    schedule = make_schedule(opt, s.optimisation)
    for _ in range(s.optimisation.iterations):
        opt.step()
        schedule.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(s.optimisation.lr * 0.05)

    fixed = mni_slice()
    psi = random_deformation(fixed, amplitude_mm=5.0, seed=1)
    moving = deform(fixed, psi)
    steps = []
    result = register(fixed, moving, s, CPU, seed=0, progress=lambda stage, total: (lambda n, loss: steps.append(stage)))
    assert steps.count("deformable") == 120
    grid = fixed.world_grid()
    inside = brain(fixed)
    before = registration_error(psi, grid, grid)[inside].mean()
    after = registration_error(psi, apply_affine(result.affine, grid + result.displacement), grid)[inside].mean()
    assert after < 0.5 * before, (before, after)


@pytest.mark.parametrize("method", ["siren", "svf"])
def test_no_affine_means_already_aligned_identity_and_the_field_does_the_rest(method):
    """``use_affine=False`` (the CLI's ``--no-affine``, "inputs already aligned"): A is the identity, not the
    centre-of-mass translation that starts the affine stage; the deformable stage still registers."""
    fixed = mni_slice()
    psi = random_deformation(fixed, amplitude_mm=4.0, seed=2)
    moving = deform(fixed, psi)
    s = quick_settings(iterations=60)
    if method == "svf":
        s.method, s.loss.regulariser, s.loss.alpha = "svf", "diffusion", 0.01
        s.svf.iterations = [30, 30]
    steps = []
    result = register(fixed, moving, s, CPU, seed=0, use_affine=False,
                      progress=lambda stage, total: (lambda n, loss: steps.append(stage)))
    np.testing.assert_array_equal(result.affine, np.eye(3))
    assert "affine" not in steps and result.summary["loss"]["affine_final"] is None
    grid = fixed.world_grid()
    inside = brain(fixed)
    before = registration_error(psi, grid, grid)[inside].mean()
    after = registration_error(psi, grid + result.displacement, grid)[inside].mean()
    assert after < 0.7 * before, (before, after)


def test_the_affine_stage_refuses_a_local_similarity():
    """The affine stage compares scattered voxels: a windowed similarity is refused before any work."""
    s = quick_settings()
    s.affine.similarity = "ncc+lncc"
    with pytest.raises(ValueError, match="affine.similarity must be one of ncc, mse, mi"):
        validate(s)


def test_every_shipped_preset_loads_validates_and_describes_itself():
    """A preset a user names must load, pass validation and say what it is for."""
    from inrreg_pipeline.core.config import available_presets, validate

    names = available_presets()
    assert {"default", "fast", "reference", "multimodal"} <= set(names)
    for name in names:
        settings = validate(load_preset(name))
        assert settings.description, name
    # the reference study's architecture stays available under its own name
    ref = load_preset("reference").network
    assert (ref.hidden_layers, ref.hidden_features, ref.omega) == (5, 256, 30.0)


def test_a_preset_inherits_from_its_base_and_changes_only_what_it_names(tmp_path):
    """``{"base": ...}`` presets: a user states only what differs from a shipped (or own) preset."""
    fast = load_preset("fast").to_dict()
    (tmp_path / "strong.json").write_text(json.dumps({"base": "fast", "loss": {"alpha": 2.0}}))
    (tmp_path / "strong-ensemble.json").write_text(json.dumps(
        {"base": "strong.json", "description": "mine", "method": "ensemble"}))
    child = load_preset(str(tmp_path / "strong-ensemble.json")).to_dict()
    assert (child["name"], child["description"], child["method"]) == ("strong-ensemble", "mine", "ensemble")
    assert child["loss"] == {**fast["loss"], "alpha": 2.0}  # a section is merged key by key
    for key in set(fast) - {"name", "description", "method", "loss"}:
        assert child[key] == fast[key], key
    # every shipped variant preset is its base plus the variant, so retuning the base retunes it
    for path in (PRESET_DIR / "default-ensemble.json", Path(research_preset("fast-cascade")),
                 PRESET_DIR / "two-network-deformable-multimodal.json"):
        raw = json.loads(path.read_text())
        base, settings = load_preset(raw["base"]).to_dict(), load_preset(str(path)).to_dict()
        differing = differing_sections(base, settings)
        assert differing and differing <= raw.keys(), path.name


@pytest.mark.parametrize("files, message", [
    ({"a.json": {"base": "b.json"}, "b.json": {"base": "a.json"}}, "inherits from itself"),
    ({"a.json": {"base": "no-such-preset"}}, "unknown preset 'no-such-preset'"),
    ({"a.json": {"base": 3}}, "must name a preset"),
    ({"a.json": {"base": "fast", "loss": {"alpah": 1}}}, "unknown preset key"),
])
def test_a_bad_base_is_refused_with_a_message(tmp_path, files, message):
    for name, values in files.items():
        (tmp_path / name).write_text(json.dumps(values))
    with pytest.raises(ValueError, match=message):
        load_preset(str(tmp_path / "a.json"))


def test_images_that_cannot_overlap_are_refused_before_any_work():
    """An affine scaled a million times (issue 16: it used to register to an all-zero image, exit 0)."""
    from inrreg_pipeline.core.quality import NoOverlapError

    fixed = mni_slice()
    moving = deform(fixed, random_deformation(fixed, amplitude_mm=4.0, seed=2))
    huge = SpatialImage(fixed.data, fixed.affine @ np.diag([1e6, 1e6, 1.0]))
    steps = []
    with pytest.raises(NoOverlapError, match="cannot overlap in world space"):
        register(huge, moving, quick_settings(iterations=20), CPU,
                 progress=lambda stage, total: (lambda n, loss: steps.append(stage)))
    assert steps == []


def test_the_summary_says_whether_the_result_overlaps_and_improves_on_the_start():
    from inrreg_pipeline.core.quality import assess, inside_fraction

    fixed = mni_slice()
    psi = random_deformation(fixed, amplitude_mm=4.0, rotation_deg=5.0, seed=2)
    moving = deform(fixed, psi)
    result = register(fixed, moving, quick_settings(iterations=40), CPU, seed=0)
    q = result.summary["quality"]
    assert q["improved"] and q["warnings"] == [] and q["overlap_fraction"] > 0.95
    assert q["nmi_final"] > q["nmi_start"] > 1.0
    # the same measure flags a result that is the start itself, and one that leaves the moving image
    mask = brain(fixed)
    grid = fixed.world_grid()
    same = assess(fixed, mask, result.warped[mask], result.warped[mask], inside_fraction(grid[mask], moving))
    assert not same["improved"] and "no better than the start" in same["warnings"][0]
    away = inside_fraction(grid[mask] + 1e4, moving)
    assert away == 0
    away_q = assess(fixed, mask, np.zeros_like(result.warped[mask]), result.warped[mask], away)
    assert away_q["overlap_fraction"] == 0 and "maps inside the moving image" in away_q["warnings"][0]


def test_a_registration_leaves_no_empty_torchinductor_folder_in_tmpdir(tmp_path):
    """Building a torch optimiser makes TorchDynamo create ``$TMPDIR/torchinductor_<user>``; inrreg
    never compiles, so the empty folder is removed afterwards (issue 16), and our path is torch's."""
    import os
    import subprocess
    import sys

    code = ("import os, sys, torch; sys.path.insert(0, 'tests')\n"
            "from helpers import mni_slice, quick_settings\n"
            "from inrreg_pipeline.core import register\n"
            "from inrreg_pipeline.core.scratch import inductor_cache_dir\n"
            "from inrreg_pipeline.synthetic import deform, random_deformation\n"
            "ours = inductor_cache_dir()\n"
            "f = mni_slice(); m = deform(f, random_deformation(f, amplitude_mm=4.0, seed=2))\n"
            "register(f, m, quick_settings(iterations=5), torch.device('cpu'))\n"
            "print(sorted(os.listdir(os.environ['TMPDIR'])))\n"
            "from torch._inductor.runtime.cache_dir_utils import default_cache_dir\n"
            "print(ours == default_cache_dir())\n")
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    env["TMPDIR"] = str(tmp_path)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True,
                         cwd=str(Path(__file__).resolve().parents[1])).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True", out


def test_the_result_is_a_transform_object_that_maps_points_as_its_fields_do():
    fixed = mni_slice()
    moving = deform(fixed, random_deformation(fixed, amplitude_mm=4.0, seed=2))
    result = register(fixed, moving, quick_settings(iterations=30), CPU, seed=0)
    grid = fixed.world_grid()
    chain = result.transform(fixed.affine)
    mapped = chain.map(grid.reshape(-1, 2)).reshape(grid.shape)
    np.testing.assert_allclose(mapped, apply_affine(result.affine, grid + result.displacement), atol=1e-4)
    inside = brain(fixed)
    back = chain.inverse().map(mapped[inside])
    assert np.abs(back - grid[inside]).max() < 0.5 * fixed.spacing.min()


def test_patches_cover_the_same_anatomy_at_any_input_resolution(monkeypatch, tmp_path):
    """``optimisation.image_spacing_mm``: on images already that coarse nothing changes (bit for bit);
    on images at half that voxel size the patches are drawn from both images shrunk to it, so a
    16-voxel patch spans the same millimetres, while the outputs stay on the fixed image's own grid
    and the deformation is still recovered. A negative or infinite size is refused naming the key."""
    import inrreg_pipeline.core.optimisation as optimisation_module

    seen: list[np.ndarray] = []
    original = optimisation_module.PatchSampler.__init__

    def spy(self, fixed, mask, patch_size, device):
        seen.append(np.asarray(fixed.spacing))
        original(self, fixed, mask, patch_size, device)

    monkeypatch.setattr(optimisation_module.PatchSampler, "__init__", spy)
    coarse = mni_small()  # 4 mm
    psi = random_deformation(coarse, amplitude_mm=5.0, seed=2)
    plain, in_mm = quick_settings(iterations=60), quick_settings(iterations=60)
    in_mm.optimisation.image_spacing_mm = 4.0
    a = register(coarse, deform(coarse, psi), plain, CPU, seed=0)
    b = register(coarse, deform(coarse, psi), in_mm, CPU, seed=0)
    np.testing.assert_array_equal(a.displacement, b.displacement)
    np.testing.assert_allclose(seen[1], 4.0)

    fine = mni_small(1)  # the same anatomy on 2 mm voxels
    psi = random_deformation(fine, amplitude_mm=5.0, seed=2)
    moving = deform(fine, psi)
    seen.clear()
    result = register(fine, moving, in_mm, CPU, seed=0)
    np.testing.assert_allclose(seen[0], 4.0)  # the optimisation saw 4 mm voxels
    assert result.displacement.shape == fine.shape + (3,)
    grid = fine.world_grid()
    inside = brain(fine)
    affine_only = registration_error(psi, apply_affine(result.affine, grid), grid)[inside].mean()
    after = registration_error(psi, apply_affine(result.affine, grid + result.displacement), grid)[inside].mean()
    assert after < affine_only, (affine_only, after)
    for bad in ("-1", "1e309"):
        path = tmp_path / "bad.json"
        path.write_text('{"base": "default", "optimisation": {"image_spacing_mm": %s}}' % bad)
        with pytest.raises(ValueError, match="image_spacing_mm"):
            load_preset(str(path))


def test_affine_levels_in_mm_mean_the_same_anatomy_at_any_resolution(monkeypatch):
    """``affine.level_spacing_mm``: on 4 mm images ``[8, 4]`` is ``shrink_factors [2, 1]`` bit for bit;
    on 2 mm images the same sizes shrink by 4 and 2 (the shipped ``default``'s [8, 4, 2] mm is its
    tuned [4, 2, 1] on 2 mm images and [8, 4, 2] on 1 mm ones), each image by its own factor."""
    import inrreg_pipeline.core.affine as affine_module
    from inrreg_pipeline.core.affine import register_affine
    from inrreg_pipeline.core.pair import prepare_pair

    assert load_preset("default").affine.level_spacing_mm == [8.0, 4.0, 2.0]
    seen: list[int] = []
    original = affine_module.downsample

    def spy(image, factor):
        seen.append(factor)
        return original(image, factor)

    monkeypatch.setattr(affine_module, "downsample", spy)

    def affine_of(fixed, moving, shrink, mm):
        s = quick_settings().affine
        s.shrink_factors, s.level_spacing_mm, s.iterations, s.rigid_iterations = shrink, mm, [20, 10], 10
        pair = prepare_pair(fixed, moving, CPU, 0)
        return register_affine(pair.fixed_norm, pair.moving_norm, s, CPU, pair.rng)[0]

    coarse = mni_small()  # 4 mm
    moving = deform(coarse, random_deformation(coarse, amplitude_mm=2.0, rotation_deg=5.0, translation_mm=4.0, seed=3))
    np.testing.assert_array_equal(affine_of(coarse, moving, [2, 1], None), affine_of(coarse, moving, [4, 4], [8.0, 4.0]))
    seen.clear()
    fine = mni_small(1)  # 2 mm
    affine_of(fine, SpatialImage(sample_image(moving, fine.world_grid()).astype(np.float32), fine.affine), [2, 1],
              [8.0, 4.0])
    assert seen == [4, 4, 4, 4, 2, 2], seen  # (fixed, moving) at the rigid level, then per level
