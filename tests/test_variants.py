"""The INR variants of methods.md section 1 (``inrreg_pipeline.core.variants``): activations and their
initialisation, omega control, joint affine, ensemble, cascade, cycle consistency and
registration-guided fusion, end to end and by one property each.

Pairs: an axial MNI152 slice (2 mm) under a known smooth 5 mm deformation; one 3-D run at 4 mm.
Settings: the variants' ``fast-*`` presets cut down like ``helpers.quick_settings``.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import masked_ncc, mni_slice, mni_small, research_preset

from inrreg_pipeline.core import load_preset, register
from inrreg_pipeline.core.config import VARIANT_METHODS, validate
from inrreg_pipeline.core.networks import ACTIVATIONS, OMEGA_MODES, PERIODIC, Activation, DeformationINR
from inrreg_pipeline.core.encodings import NormalisedBox
from inrreg_pipeline.core.variants import CascadeDeformation, CycleDeformation, EnsembleDeformation
from inrreg_pipeline.io.images import save_image
from inrreg_pipeline.register import OUTPUT_SUFFIXES, register_files
from inrreg_pipeline.synthetic import deform, random_deformation

CPU = torch.device("cpu")
VARIANT_PRESETS = [pytest.param(research_preset(name), id=name) for name in (
    "fast-trainable-omega", "fast-width-omega", "fast-attention-omega", "fast-joint-affine",
    "fast-ensemble", "fast-cascade", "fast-cascade-smooth", "fast-cycle", "fast-fusion")]


def cut_down(preset: str, iterations: int = 100, hidden: int = 48):
    """A ``fast-*`` preset cut down for tests (seconds per 2-D pair on one core)."""
    s = copy.deepcopy(load_preset(preset))
    s.optimisation.iterations = iterations
    s.optimisation.patches = 2
    s.optimisation.patch_size = 10
    s.optimisation.regulariser_points = 256
    s.network.hidden_features = hidden
    s.affine.iterations = [40, 20]
    s.affine.shrink_factors = [2, 1]
    s.affine.rigid_iterations = 20
    s.affine.samples = 3000
    s.inverse_iterations = 10
    if s.variants.cascade_iterations:
        s.variants.cascade_iterations = [iterations // 2] * len(s.variants.cascade_iterations)
    return s


@pytest.fixture(scope="module")
def pair2d():
    fixed = mni_slice()
    moving = deform(fixed, random_deformation(fixed, amplitude_mm=5.0, seed=1))
    return fixed, moving, fixed.data > 0.1 * fixed.data.max()


@pytest.fixture(scope="module")
def pair2d_files(pair2d, tmp_path_factory):
    fixed, moving, _ = pair2d
    folder = tmp_path_factory.mktemp("pair2d")
    save_image(fixed.data, fixed.affine, folder / "fixed.nii.gz")
    save_image(moving.data, moving.affine, folder / "moving.nii.gz")
    return folder / "fixed.nii.gz", folder / "moving.nii.gz"


# --- activations -------------------------------------------------------------------------------

def reference_activation(name: str, z: np.ndarray, w: float = 30.0) -> np.ndarray:
    """methods.md's table, written out independently of the implementation."""
    if name == "relu":
        return np.maximum(z, 0)
    if name == "sine":
        return np.sin(w * z)
    if name == "snake":
        return z + np.cos(w * z) / w + 1 / w
    if name == "sine+":
        return z + np.sin(w * z)
    if name == "chirp":
        return np.sin(w * z + 10.0 * z * np.tanh(w * z))
    a_w = math.pi ** -0.25 * (1 + math.exp(-w * w) - 2 * math.exp(-0.75 * w * w)) ** -0.5
    return a_w * np.exp(-z * z / 2) * (np.sin(w * z) - math.exp(-w * w / 2))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activation_formula_and_initialisation(name):
    z = np.linspace(-2, 2, 101)
    for w in (30.0, 1.5):  # at omega 1.5 morlet's b_w and a_w's correction are not negligible
        got = Activation(name, omega=w)(torch.as_tensor(z, dtype=torch.float64)).numpy()
        np.testing.assert_allclose(got, reference_activation(name, z, w), atol=1e-9, err_msg=f"{name} omega {w}")
    torch.manual_seed(0)
    net = DeformationINR(NormalisedBox(np.zeros(3), np.ones(3) * 100), 3, hidden_layers=3, hidden_features=256,
                         activation=name, omega=30.0)
    for i, layer in enumerate(net.layers):
        n = layer.in_features
        if name in PERIODIC:  # SIREN: first layer U(-1/n, 1/n) (frequency omega applied in sigma), then sqrt(6/n)/omega
            bound = 1.0 / n if i == 0 else math.sqrt(6.0 / n) / 30.0
        else:  # He (Kaiming) uniform for ReLU
            bound = math.sqrt(6.0 / n)
        top = float(layer.weight.detach().abs().max())
        assert 0.95 * bound < top <= bound, (name, i, top, bound)
    assert float(net.out.weight.detach().abs().max()) <= 1e-4 and float(net.out.bias.detach().abs().max()) == 0.0


def test_cli_choices_match_the_core():
    from inrreg_pipeline import cli

    assert cli.ACTIVATIONS == ACTIVATIONS and cli.OMEGA_MODES == OMEGA_MODES
    parser = cli.build_parser()
    args = parser.parse_args(["register", "f", "m", "-o", "p", "--method", "cycle", "--omega", "attention",
                              "--activation", "chirp"])
    assert (args.method, args.omega, args.activation) == ("cycle", "attention", "chirp")
    for method in VARIANT_METHODS:
        parser.parse_args(["register", "f", "m", "-o", "p", "--method", method])


def test_settings_validation():
    s = load_preset("fast")
    s.variants.omega_mode = "trainable"
    s.network.activation = "relu"
    with pytest.raises(ValueError, match="periodic activation"):
        validate(s)
    s = load_preset(research_preset("fast-cascade"))
    s.variants.cascade_iterations = [10]
    with pytest.raises(ValueError, match="cascade_iterations"):
        validate(s)
    from inrreg_pipeline.presets import PresetError, resolve

    s = resolve("fast", method="ensemble", omega=None, activation="morlet")
    assert s.method == "ensemble" and s.network.activation == "morlet"
    with pytest.raises(PresetError) as err:
        resolve("two-network-rigid", omega="width")
    assert "--omega" in err.value.for_cli()  # what the command line prints


@pytest.mark.parametrize("overrides, preset", [
    ({}, "svf"), ({"method": "svf"}, "svf"), ({"method": "siren"}, "default"), ({"method": "cascade"}, "default"),
    ({"omega": "trainable"}, "default"), ({"activation": "relu"}, "default"),
    ({"method": "two-network"}, "two-network-deformable"),
    ({"method": "two-network", "motion": "rigid"}, "two-network-rigid")])
def test_a_run_without_a_preset_gets_the_methods_own_and_svf_when_nothing_is_named(overrides, preset):
    """No ``--preset``: the diffeomorphic svf preset, unless an option names the displacement INR
    (``--method siren``/a variant, ``--omega`` or ``--activation`` alone) or two-network."""
    from inrreg_pipeline.presets import resolve

    s = resolve(None, **overrides)
    assert s.name == preset
    assert s.method == overrides.get("method", load_preset(preset).method)


def test_an_activation_applies_to_the_siren_velocity_and_is_refused_for_the_hash_grid():
    """``--activation`` sets the SIREN's activation: for ``svf-siren`` it does; the shipped ``svf``'s
    velocity is a hash-grid MLP, which has none to set, so the option is refused, never dropped."""
    from inrreg_pipeline.presets import PresetError, resolve

    assert resolve("svf-siren", method="svf", activation="relu").network.activation == "relu"
    with pytest.raises(PresetError, match="svf-siren") as err:
        resolve(None, method="svf", activation="relu")
    assert err.value.for_cli().startswith("--activation 'relu'")


# --- every variant end to end ------------------------------------------------------------------

@pytest.mark.parametrize("preset", VARIANT_PRESETS)
def test_variant_end_to_end(preset, pair2d, pair2d_files, tmp_path):
    fixed, moving, inside = pair2d
    settings = cut_down(preset)
    paths = register_files(str(pair2d_files[0]), str(pair2d_files[1]), str(tmp_path / "out_"), preset=settings,
                           device="cpu", seed=0, threads=1, progress=False)
    for key, suffix in OUTPUT_SUFFIXES.items():
        assert paths[key] == tmp_path / f"out_{suffix}" and paths[key].is_file(), key
    warped = nib.load(paths["warped"]).get_fdata().squeeze()
    before, after = masked_ncc(fixed.data, moving.data, inside), masked_ncc(fixed.data, warped, inside)
    assert after > before + 0.25, (preset, before, after)
    import json

    meta = json.loads(paths["metadata"].read_text())
    assert meta["method"] == settings.method and meta["variant"]["omega_mode"] == settings.variants.omega_mode
    assert meta["jacobian"]["percent_nonpositive_in_mask"] < 1.0
    if settings.method == "fusion":
        assert paths["fusion_weights"].is_file() and paths["fusion_weights_png"].read_bytes()[:4] == b"\x89PNG"
    else:
        assert "fusion_weights" not in paths and not list(tmp_path.glob("*fusion*"))
    if settings.method == "joint-affine":
        learned = np.array(meta["variant"]["joint_affine_ras"])
        assert learned.shape == (3, 3) and not np.allclose(learned, np.eye(3)), "the joint affine must train"


# --- one property each -------------------------------------------------------------------------

def test_trainable_and_attention_omega_change(pair2d):
    fixed, moving, _ = pair2d
    learned = {}
    for mode in ("trainable", "attention", "width"):
        s = cut_down(research_preset("fast-trainable-omega"), iterations=60)
        s.variants.omega_mode = mode
        s.affine.enabled = False
        learned[mode] = register(fixed, moving, s, CPU, seed=0)
    omegas = np.array(learned["trainable"].summary["variant"]["learned_omega_per_layer"][0])
    # omega starts at 30 in every layer; its Adam step (omega_lr 0.01) moves it by up to 0.6 in 60 steps
    assert np.all(np.abs(omegas - 30.0) > 1e-3) and np.all(np.abs(omegas - 30.0) < 1.0), omegas
    a_b = np.array(learned["attention"].summary["variant"]["attention_a_b_per_layer"][0])
    assert np.all(np.abs(a_b) > 1e-3), a_b  # a = b = 0 at the start
    width = learned["width"].model.network.frequencies[0].omega
    np.testing.assert_allclose(width[[0, -1]].numpy(), [10.0, 50.0])
    assert not any(p.requires_grad for p in learned["width"].model.network.frequencies.parameters())


def test_ensemble_field_is_the_mean_of_its_members(pair2d):
    fixed, moving, inside = pair2d
    s = cut_down(research_preset("fast-ensemble"), iterations=60)
    s.affine.enabled = False
    result = register(fixed, moving, s, CPU, seed=0)
    model = result.model
    assert isinstance(model, EnsembleDeformation)
    assert [m.activation.omega for m in model.members] == [10.0, 30.0, 50.0]
    points = torch.as_tensor(fixed.world_grid()[inside], dtype=torch.float32)
    with torch.no_grad():
        members = torch.stack([m(points) for m in model.members]).numpy()
    field = result.displacement[inside]
    np.testing.assert_allclose(field, members.mean(0), atol=1e-4)
    assert np.abs(members[0] - members[2]).mean() > 0.05, "members of different omegas must differ"


def test_cascade_second_stage_starts_from_the_first(pair2d):
    fixed, moving, inside = pair2d
    plain = cut_down(research_preset("fast-cascade"), iterations=60)
    plain.method = "siren"
    plain.affine.enabled = False
    cascade = cut_down(research_preset("fast-cascade-smooth"), iterations=60)
    cascade.affine.enabled = False
    cascade.variants.cascade_iterations = [60, 40]
    a = register(fixed, moving, plain, CPU, seed=0)
    b = register(fixed, moving, cascade, CPU, seed=0)
    assert isinstance(b.model, CascadeDeformation) and len(b.model.stages) == 2
    # stage 1 is the plain run (same seed, same steps) and stayed frozen while stage 2 trained ...
    for p, q in zip(a.model.parameters(), b.model.stages[0].parameters()):
        assert torch.equal(p, q)
    # ... and stage 2 started exactly from its field, then moved it
    assert b.summary["variant"]["stage_start_gap_mm"] == [0.0]
    points = torch.as_tensor(fixed.world_grid()[inside], dtype=torch.float32)
    with torch.no_grad():
        np.testing.assert_allclose(b.model(points, n_stages=1).numpy(), a.displacement[inside], atol=1e-4)
        refinement = b.model.stages[1](points).abs().max()
    assert float(refinement) > 0.01, "the second stage must train"


def test_cycle_consistency_lowers_inverse_consistency_error(pair2d):
    """The forward/backward pair with the cycle loss vs the same two SIRENs without it (cycle_alpha
    0: two plain SIRENs, one per direction), same pair and seed; the written inverse is the
    backward network."""
    fixed, moving, inside = pair2d
    errors = {}
    for alpha in (0.0, 100.0):
        s = cut_down(research_preset("fast-cycle"), iterations=100)
        s.affine.enabled = False
        s.variants.cycle_alpha = alpha
        result = register(fixed, moving, s, CPU, seed=0)
        errors[alpha] = result.summary["inverse_consistency"]
        assert isinstance(result.model, CycleDeformation) and result.summary["variant"]["inverse"] == "backward network"
        with torch.no_grad():
            v = result.model.backward_displacement(torch.as_tensor(fixed.world_grid()[inside], dtype=torch.float32))
        np.testing.assert_allclose(result.inverse_displacement[inside], v.numpy(), atol=1e-4)
    # measured: mean 1.50 -> 1.27 mm, and the tail more (after 100 steps both fields are still
    # short of the 5 mm deformation, which dominates the mean residual)
    assert errors[100.0]["mean_mm"] < 0.9 * errors[0.0]["mean_mm"], errors
    assert errors[100.0]["p95_mm"] < 0.9 * errors[0.0]["p95_mm"], errors


def test_fusion_weights_sum_to_one_3d(tmp_path):
    fixed = mni_small()
    moving = deform(fixed, random_deformation(fixed, amplitude_mm=5.0, seed=2))
    save_image(fixed.data, fixed.affine, tmp_path / "f.nii.gz")
    save_image(moving.data, moving.affine, tmp_path / "m.nii.gz")
    s = cut_down(research_preset("fast-fusion"), iterations=60, hidden=32)
    paths = register_files(str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), str(tmp_path / "o_"),
                           preset=s, device="cpu", seed=0, threads=1, progress=False)
    img = nib.load(paths["fusion_weights"])
    assert img.shape == moving.shape and img.get_data_dtype().names == ("R", "G", "B")
    np.testing.assert_allclose(img.affine, moving.affine, atol=1e-5)
    rgb = np.asarray(img.dataobj)
    rgb = np.stack([rgb["R"], rgb["G"], rgb["B"]], -1).astype(float)
    # weights in [0, 1] summing to 1 per point (up to uint8 rounding); they moved away from 1/3 each
    assert np.all(np.abs(rgb.sum(-1) - 255) <= 2)
    assert rgb.std(axis=(0, 1, 2)).max() > 1.0
    png = paths["fusion_weights_png"].read_bytes()
    width = moving.shape[1] + 2 * moving.shape[0] + 3 * 2  # three mid slices side by side, 2 px gaps
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(png[16:20], "big") == width


def test_fusion_weights_in_memory(pair2d):
    fixed, moving, _ = pair2d
    s = cut_down(research_preset("fast-fusion"), iterations=60)
    s.affine.enabled = False
    result = register(fixed, moving, s, CPU, seed=0)
    w = result.extras["fusion_weights"]
    assert w.shape == moving.shape + (3,)
    assert w.min() >= 0.0 and w.max() <= 1.0
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)
    means = result.summary["variant"]["fusion_weight_means"]
    assert set(means) == {"moving", "laplacian", "gaussian"}


def test_nipype_interface_runs_a_variant(pair2d_files, tmp_path):
    pytest.importorskip("nipype")
    from nipype.pipeline import engine as pe

    from inrreg_pipeline.interfaces import INRRegistration
    from inrreg_pipeline.interfaces.registration import inr_settings

    preset_file = tmp_path / "quick-fast.json"
    import json

    quick = cut_down("fast")
    preset_file.write_text(json.dumps({k: v for k, v in quick.to_dict().items() if k != "name"}))
    s = inr_settings("attention-omega", str(preset_file))
    assert s.variants.omega_mode == "attention" and s.method == "siren"
    s = inr_settings("cascade", research_preset("fast-ensemble"))
    assert s.method == "cascade"
    reg = INRRegistration(fixed_image=str(pair2d_files[0]), moving_image=str(pair2d_files[1]),
                          preset=str(preset_file), method="fusion", num_threads=1)
    out = pe.Node(reg, name="fusion", base_dir=str(tmp_path)).run().outputs
    meta = json.loads(Path(out.metadata).read_text())
    assert meta["method"] == "fusion" and Path(out.fusion_weights).is_file()
    assert Path(out.fusion_weights_figure).suffix == ".png"
