"""Classical baselines write what ``inrreg register`` writes: every preset, ANTs (real antsRegistration
through antspyx), greedy (picsl-greedy) and FireANTs, checked the same way; then the ANTs-only checks.

A small real pair: nilearn's MNI152 at 6 mm and a copy under a known smooth deformation, small
rotation and shift.  Iterations are scaled down so each run takes seconds on one core; the checks
are about files, conventions and bookkeeping, not about the tools' accuracy.  ANTs is the
independent reader for every tool's files (antsApplyTransforms, its Jacobian).  greedy's own
checks (its command lines, 2-D masks, the command line) are in ``test_greedy.py``; FireANTs' (its
frame conversion, masks, 2-D refusal) in ``test_fireants.py``.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import masked_ncc as ncc, mni_slice

from inrreg_pipeline import baselines
from inrreg_pipeline.baselines import (ANTS_PRESETS, BASELINE_PARAMETERS, BASELINE_PRESETS, GREEDY_PRESETS,
                                       antsregistration_arguments, baseline_tool, is_ants_preset, run_ants,
                                       run_baseline)
from inrreg_pipeline.baselines import ants as ants_baseline
from inrreg_pipeline.core.space import downsample, foreground_mask
from inrreg_pipeline.demo import oblique_grid
from inrreg_pipeline.io.images import InputError, save_image
from inrreg_pipeline.io.itk import read_ants_displacement_field, read_itk_affine
from inrreg_pipeline.register import OUTPUT_SUFFIXES
from inrreg_pipeline.synthetic import deform, random_deformation, sample_image

ants = pytest.importorskip("ants")

HAS_GREEDY = importlib.util.find_spec("picsl_greedy") is not None
HAS_FIREANTS = importlib.util.find_spec("fireants") is not None

#: iteration scaling per preset: enough for SyN / greedy to move, a few seconds each on one core
SCALE = {"ants-syn": 0.1, "ants-syn-cc": 0.05, "ants-precise": 0.05, "antspyx-syn-s": 0.2,
         "antspyx-synquick-s": 0.2,  # antspyx-*: at 0.05 their MI affine stage diverges on 6 mm
         "greedy": 0.5, "greedy-permissive": 0.5, "fireants": 0.25, "fireants-syn": 0.25}
#: the tool's own interpolator for PWarped (antspyx spelling); linear where not listed
INTERPOLATOR = {"ants-precise": "lanczosWindowedSinc"}
#: presets whose field is rough on the 6 mm grid (SyN[0.2] with CC radius 2; greedy's permissive
#: smoothing; FireANTs' warp smoothing of 0.5 voxel), where ANTs' and our difference schemes part at
#: a few kinks: compared by the median
ROUGH_FIELDS = {"antspyx-syn-s", "antspyx-synquick-s", "greedy-permissive", "fireants", "fireants-syn"}


#: the optional package each tool's presets need (ANTs' is this module's own importorskip)
MISSING = {"greedy": (not HAS_GREEDY, "picsl-greedy is not installed"),
           "fireants": (not HAS_FIREANTS, "fireants is not installed")}


def _preset_param(name: str):
    missing, reason = MISSING.get(baseline_tool(name), (False, ""))
    return pytest.param(name, marks=pytest.mark.skipif(missing, reason=reason))


@pytest.fixture(scope="module", params=[_preset_param(name) for name in BASELINE_PRESETS])
def run(request, pair):
    tmp, fixed, moving = pair
    preset = request.param
    out = run_baseline(str(tmp / "fixed.nii.gz"), str(tmp / "moving.nii.gz"), str(tmp / f"{preset}_"),
                       preset=preset, seed=0, scale_iterations=SCALE[preset])
    return tmp, preset, out


# ---------------------------------------------------------------------------------------------
def test_presets_are_data_files_with_their_source():
    """Every preset is ``presets/<name>.json`` (package data), listed once in ``index.json``, and
    states what it is and where its parameters come from."""
    folder = resources.files("inrreg_pipeline.baselines") / "presets"
    files = {p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json") and p.name != "index.json"}
    index = json.loads((folder / "index.json").read_text())
    listed = index["ants"] + index["greedy"] + index["fireants"]
    assert sorted(listed) == sorted(files) and len(set(listed)) == len(listed)
    assert tuple(listed) == BASELINE_PRESETS and list(ANTS_PRESETS) == index["ants"]
    assert list(GREEDY_PRESETS) == index["greedy"]
    for name in listed:
        preset = json.loads((folder / f"{name}.json").read_text())
        assert preset == BASELINE_PARAMETERS[name]
        assert preset["description"] and preset["source"], name


def test_ants_child_is_a_module_that_loads_no_torch():
    """antsRegistration runs in ``python -m inrreg_pipeline._ants_child``, whose import stays light
    (its peak memory is the registration's)."""
    code = "import sys, inrreg_pipeline._ants_child; print(sorted(m for m in ('torch', 'ants', 'numpy') if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert res.stdout.strip() == "[]"
    assert ants_baseline.CHILD_MODULE == "inrreg_pipeline._ants_child"


# ---------------------------------------------------------------------------------------------
def test_presets_are_named_and_explicit():
    assert set(ANTS_PRESETS) == {"ants-syn", "ants-syn-cc", "ants-precise", "antspyx-syn-s", "antspyx-synquick-s"}
    assert is_ants_preset("ants-syn-cc") and not is_ants_preset("default") and not is_ants_preset(None)
    cc = ANTS_PRESETS["ants-syn-cc"]
    assert [s["transform"] for s in cc["stages"]] == ["Rigid", "Affine", "SyN"]
    for s in cc["stages"][:2]:
        assert (s["metric"], s["radius_or_number_of_bins"], s["sampling_strategy"], s["sampling_percentage"]) == \
            ("MI", 32, "Regular", 0.25)
        assert s["iterations"] == [1000, 500, 250, 100]
    syn = cc["stages"][2]
    assert (syn["metric"], syn["radius_or_number_of_bins"], syn["transform_parameters"]) == ("CC", 4, [0.1, 3, 0])
    assert syn["iterations"] == [100, 70, 50, 20] and syn["shrink_factors"] == [8, 4, 2, 1]
    assert all((s["convergence_threshold"], s["convergence_window_size"]) == (1e-6, 10) for s in cc["stages"])
    assert cc["winsorize_image_intensities"] == [0.005, 0.995] and cc["use_histogram_matching"] is False
    precise = ANTS_PRESETS["ants-precise"]
    assert precise["float"] and precise["collapse_output_transforms"] and not precise["write_composite_transform"]
    assert precise["stages"][2]["transform_parameters"] == [0.1, 3.0, 0.0]
    json.dumps(ANTS_PRESETS)  # recorded verbatim: must be plain JSON


def test_scaled_iterations_keep_zero_levels_and_at_least_one():
    assert baselines.scaled_iterations([2100, 1200, 1200, 0], 0.1) == [210, 120, 120, 0]
    assert baselines.scaled_iterations([100, 70, 50, 20], 0.01) == [1, 1, 1, 1]
    args = antsregistration_arguments("ants-syn-cc", 3, "F", "M", "P", "W", "IW", scale_iterations=0.1)
    assert "[10x7x5x2,1e-06,10]" in args


def _canonical(args: list[str], roles: dict[str, str]) -> dict[str, list[str]]:
    """antsRegistration arguments as option -> values in order, roles named, numbers normalised."""
    long = {"-r": "--initial-moving-transform", "-x": "--masks", "-u": "--use-histogram-matching",
            "-z": "--collapse-output-transforms", "-o": "--output", "-m": "--metric", "-t": "--transform",
            "-c": "--convergence", "-s": "--smoothing-sigmas", "-f": "--shrink-factors", "-d": "--dimensionality"}
    out: dict[str, list[str]] = {}
    for opt, val in zip(args[::2], args[1::2]):
        val = str(val)
        for old, new in sorted(roles.items(), key=lambda kv: -len(kv[0])):
            val = val.replace(old, new)
        val = re.sub(r"\d+(?:\.\d*)?(?:e-?\d+)?", lambda m: repr(float(m.group())), val)
        out.setdefault(long.get(opt, opt), []).append(val)
    return out


#: inrreg preset -> the antspyx call it replicates, and the options ours states that antspyx leaves at
#: antsRegistration's default (collapse-output-transforms 1, use-histogram-matching 0).
ANTSPYX_CALLS = {"ants-syn": ("SyN", {}),
                 "antspyx-syn-s": ("antsRegistrationSyN[s]",
                                   {"--collapse-output-transforms": ["1.0"], "--use-histogram-matching": ["0.0"]}),
                 "antspyx-synquick-s": ("antsRegistrationSyNQuick[s]",
                                        {"--collapse-output-transforms": ["1.0"], "--use-histogram-matching": ["0.0"]})}


@pytest.mark.parametrize("preset", sorted(ANTSPYX_CALLS))
def test_antspyx_presets_are_antspyx_argument_for_argument(pair, monkeypatch, preset):
    """ants.registration(type_of_transform=...) builds the same antsRegistration call as our preset."""
    tmp, _, _ = pair
    type_of_transform, defaults_we_state = ANTSPYX_CALLS[preset]
    captured = {}
    reg_module = sys.modules["ants.registration.registration"]
    monkeypatch.setattr(reg_module, "get_lib_fn", lambda name: (lambda a: captured.setdefault("args", list(a)) and 0))
    f, m = ants.image_read(str(tmp / "fixed.nii.gz")), ants.image_read(str(tmp / "moving.nii.gz"))
    try:
        ants.registration(f, m, type_of_transform=type_of_transform, mask=ants.get_mask(f),
                          outprefix=str(tmp / "capture_"))
    except Exception:  # nothing ran, so reading the outputs back may fail after the call was captured
        pass
    theirs = captured["args"]
    fptr, mptr = re.fullmatch(r"\[(\w+),(\w+),1\]", theirs[theirs.index("-r") + 1]).groups()
    out = re.fullmatch(r"\[(.+),(\w+),(\w+)\]", theirs[theirs.index("--output") + 1]).groups()
    mask_ptr = re.fullmatch(r"\[(\w+),NA\]", theirs[len(theirs) - 1 - theirs[::-1].index("-x") + 1]).group(1)
    theirs = _canonical(theirs, {fptr: "FIXED", mptr: "MOVING", mask_ptr: "FMASK", out[0]: "PREFIX",
                                 out[1]: "WARPED", out[2]: "INVWARPED"})
    ours = _canonical(antsregistration_arguments(preset, 3, "FIXED", "MOVING", "PREFIX", "WARPED", "INVWARPED",
                                                 fixed_mask="FMASK"), {})
    assert ours.pop("--random-seed") == ["1.0"]  # ours always seeds; antspyx only when set globally
    for option, value in defaults_we_state.items():
        assert ours.pop(option) == value
    if preset != "ants-syn":  # one mask for all stages: antspyx [FMASK,NA], ours [FMASK,NULL] (the same to ANTs)
        assert theirs.pop("--masks") == ["[FMASK,NA]"] and ours.pop("--masks") == ["[FMASK,NULL]"]
    assert ours == theirs


# ---------------------------------------------------------------------------------------------
def test_outputs_are_those_of_inrreg_register(run):
    tmp, preset, out = run
    assert set(out) == set(OUTPUT_SUFFIXES)
    expected = {f"{preset}_{suffix}" for suffix in OUTPUT_SUFFIXES.values()}
    assert {p.name for p in out.values()} == expected
    assert {p.name for p in tmp.iterdir() if p.name.startswith(f"{preset}_")} == expected
    assert not [p for p in tmp.iterdir() if p.name.startswith(".inrreg")]  # staging folder gone


def test_warped_is_much_closer_to_fixed(run, pair):
    _, fixed, moving = pair
    _, _, out = run
    inside = foreground_mask(fixed.data)
    warped = nib.load(str(out["warped"])).get_fdata()
    before, after = ncc(moving.data, fixed.data, inside), ncc(warped, fixed.data, inside)
    assert 1.0 - after < 0.5 * (1.0 - before), (before, after)


def test_ants_reproduces_warped_images_from_the_outputs(run, pair):
    """The written ``[1Warp, 0GenericAffine]`` (and the composites) are, to antsApplyTransforms, the
    chain the tool itself applied: for greedy, its RAS text affine and LPS warp as written."""
    tmp, preset, out = run
    _, fixed, moving = pair
    f, m = ants.image_read(str(tmp / "fixed.nii.gz")), ants.image_read(str(tmp / "moving.nii.gz"))
    interp = INTERPOLATOR.get(preset, "linear")
    inside, inside_m = foreground_mask(fixed.data), foreground_mask(moving.data)
    warped = nib.load(str(out["warped"])).get_fdata()
    by_files = ants.apply_transforms(f, m, [str(out["warp"]), str(out["affine"])], interpolator=interp,
                                     whichtoinvert=[False, False]).numpy()
    by_h5 = ants.apply_transforms(f, m, [str(out["composite"])], interpolator=interp).numpy()
    assert ncc(by_files, warped, inside) >= 0.999
    assert ncc(by_h5, warped, inside) >= 0.999
    inverse_warped = nib.load(str(out["inverse_warped"])).get_fdata()
    inv_files = ants.apply_transforms(m, f, [str(out["affine"]), str(out["inverse_warp"])], interpolator=interp,
                                      whichtoinvert=[True, False]).numpy()
    inv_h5 = ants.apply_transforms(m, f, [str(out["inverse_composite"])], interpolator=interp).numpy()
    assert ncc(inv_files, inverse_warped, inside_m) >= 0.999
    assert ncc(inv_h5, inverse_warped, inside_m) >= 0.999


def test_jacobian_agrees_with_ants(run, pair):
    tmp, preset, out = run
    _, fixed, _ = pair
    ours = nib.load(str(out["jacobian"])).get_fdata()
    theirs = ants.create_jacobian_determinant_image(ants.image_read(str(tmp / "fixed.nii.gz")),
                                                    str(out["warp"])).numpy()
    inside = foreground_mask(fixed.data)
    assert ours.shape == fixed.shape
    assert np.corrcoef(ours[inside], theirs[inside])[0, 1] > 0.99
    difference = np.abs(ours - theirs)[inside]
    if preset in ROUGH_FIELDS:
        assert np.median(difference) < 0.05
    else:
        assert difference.max() < 0.1


def test_metadata_records_preset_runtime_and_folding(run):
    tmp, preset, out = run
    md = json.loads(out["metadata"].read_text())
    tool = baseline_tool(preset)
    assert md["method"] == tool and md["preset"] == preset
    assert md["parameters"] == json.loads(json.dumps(BASELINE_PARAMETERS[preset]))
    assert md["scale_iterations"] == SCALE[preset] and md["seed"] == 0 and md["threads"] == 1
    assert md["runtime_s"]["total"] > 0 and md["memory"]["peak_rss_mb"] > 0
    jac = md["jacobian"]
    for key in ("percent_nonpositive_in_mask", "percent_nonpositive_fov", "min", "max"):
        assert isinstance(jac[key], float) and np.isfinite(jac[key])
    assert 0.0 <= jac["percent_nonpositive_in_mask"] <= 100.0
    assert np.allclose(md["affine_matrix_ras"], read_itk_affine(out["affine"]), atol=1e-6 if tool == "ants" else 1e-5)
    field, grid = read_ants_displacement_field(out["warp"])
    assert field.shape[-1] == 3 and np.abs(field).max() > 0.1  # the tool did move
    if tool == "fireants":
        assert md["versions"]["fireants"] and md["device"] == "cpu"
        assert md["iterations_used"]["deformable"] == baselines.scaled_iterations(
            BASELINE_PARAMETERS[preset]["deformable"]["iterations"], SCALE[preset])
        return
    if tool == "greedy":
        assert all(str(tmp) not in c for c in md["greedy_commands"])  # placeholders, no temporary paths
        assert md["greedy_commands"][2].startswith("-d 3 -threads 1 -i {fixed} {moving} -it {affine}")
        assert md["versions"]["picsl-greedy"]
        return
    assert md["iterations_used"] == [baselines.scaled_iterations(s["iterations"], SCALE[preset])
                                     for s in ANTS_PRESETS[preset]["stages"]]
    args = md["antsRegistration_arguments"]
    assert args[:2] == ["--dimensionality", "3"] and "{fixed}" in " ".join(args)
    assert args[args.index("--random-seed") + 1] == "1"
    assert md["versions"]["antspyx"] == ants.__version__ and md["versions"]["ANTs"]


# ---------------------------------------------------------------------------------------------
def test_2d_oblique_with_masks_and_same_seed_same_result(tmp_path):
    fixed = downsample(mni_slice(), 2)  # 4 mm, 46 x 55
    psi = random_deformation(fixed, amplitude_mm=4.0, rotation_deg=4.0, translation_mm=3.0, seed=1)
    mshape, maffine = oblique_grid(fixed, spacing=(4.5, 3.8), angle_deg=-10.0, flip_first_axis=True)
    moving = deform(fixed, psi, mshape, maffine)  # rotated, x-flipped, anisotropic grid
    save_image(fixed.data, fixed.affine, tmp_path / "f.nii.gz")
    save_image(moving.data, moving.affine, tmp_path / "m.nii.gz")
    save_image(foreground_mask(fixed.data).astype(np.uint8), fixed.affine, tmp_path / "fm.nii.gz", dtype=np.uint8)
    save_image(foreground_mask(moving.data).astype(np.uint8), moving.affine, tmp_path / "mm.nii.gz", dtype=np.uint8)
    kw = dict(preset="ants-syn-cc", seed=5, fixed_mask=str(tmp_path / "fm.nii.gz"),
              moving_mask=str(tmp_path / "mm.nii.gz"), scale_iterations=0.1)
    a = run_ants(str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), str(tmp_path / "a_"), **kw)
    b = run_ants(str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), str(tmp_path / "b_"), **kw)
    assert all(p.exists() for p in a.values())
    field, grid = read_ants_displacement_field(a["warp"])
    assert field.shape == (*fixed.shape, 2) and grid.shape == (3, 3)
    assert read_itk_affine(a["affine"]).shape == (3, 3)
    md = json.loads(a["metadata"].read_text())
    assert md["dimension"] == 2 and md["ants_random_seed"] == 6
    assert "--masks" in md["antsRegistration_arguments"]
    assert "[{fixed_mask},{moving_mask}]" in md["antsRegistration_arguments"]
    inside = foreground_mask(fixed.data)
    warped = nib.load(str(a["warped"])).get_fdata()
    moving_on_fixed_grid = sample_image(moving, fixed.world_grid())
    assert ncc(warped, fixed.data, inside) > ncc(moving_on_fixed_grid, fixed.data, inside)
    f, m = ants.image_read(str(tmp_path / "f.nii.gz")), ants.image_read(str(tmp_path / "m.nii.gz"))
    by_h5 = ants.apply_transforms(f, m, [str(a["composite"])]).numpy()
    assert ncc(by_h5, warped, inside) >= 0.999
    inverse_warped = nib.load(str(a["inverse_warped"])).get_fdata()
    assert inverse_warped.shape == moving.shape
    inv_h5 = ants.apply_transforms(m, f, [str(a["inverse_composite"])]).numpy()
    assert ncc(inv_h5, inverse_warped, foreground_mask(moving.data)) >= 0.999
    # one thread and a fixed seed: the same warp, bit for bit
    assert np.array_equal(np.asarray(nib.load(str(a["warp"])).dataobj), np.asarray(nib.load(str(b["warp"])).dataobj))


def test_bad_inputs_raise_input_error_and_write_nothing(pair, tmp_path):
    src, _, _ = pair
    fixed, moving = str(src / "fixed.nii.gz"), str(src / "moving.nii.gz")
    prefix = str(tmp_path / "bad_")
    (tmp_path / "notes.txt").write_text("not an image")
    save_image(np.random.default_rng(0).random((8, 9)).astype(np.float32), np.eye(3), tmp_path / "two_d.nii.gz")
    save_image(np.ones((4, 4, 4), np.uint8), np.eye(4), tmp_path / "small_mask.nii.gz", dtype=np.uint8)
    with pytest.raises(InputError, match="ants-syn, ants-syn-cc, ants-precise"):
        run_ants(fixed, moving, prefix, preset="syn")
    with pytest.raises(InputError, match="does not exist"):
        run_ants(str(tmp_path / "missing.nii.gz"), moving, prefix)
    with pytest.raises(InputError, match="not a readable NIfTI"):
        run_ants(fixed, str(tmp_path / "notes.txt"), prefix)
    with pytest.raises(InputError, match="2-D"):
        run_ants(fixed, str(tmp_path / "two_d.nii.gz"), prefix)
    with pytest.raises(InputError, match="not on the grid"):
        run_ants(fixed, moving, prefix, fixed_mask=str(tmp_path / "small_mask.nii.gz"))
    with pytest.raises(InputError, match="threads"):
        run_ants(fixed, moving, prefix, threads=0)
    with pytest.raises(InputError, match="seed"):
        run_ants(fixed, moving, prefix, seed=-1)
    with pytest.raises(InputError, match="scale_iterations"):
        run_ants(fixed, moving, prefix, scale_iterations=0)
    with pytest.raises(InputError, match="not a directory"):  # a missing folder is made (mkdir -p), not a file's
        run_ants(fixed, moving, str(tmp_path / "notes.txt" / "x_"))
    clash = tmp_path / "bad_Warped.nii.gz"  # the moving image under the name of an output of prefix bad_
    clash.write_bytes(Path(moving).read_bytes())
    with pytest.raises(InputError, match="overwritten"):
        run_ants(fixed, str(clash), prefix)
    assert clash.read_bytes() == Path(moving).read_bytes()
    clash.unlink()
    assert not list(tmp_path.glob("bad_*"))


def test_ants_failure_leaves_no_outputs(pair, tmp_path, monkeypatch):
    src, _, _ = pair
    monkeypatch.setattr(ants_baseline, "antsregistration_arguments", lambda *a, **k: ["--dimensionality", "3"])
    with pytest.raises(RuntimeError, match="antsRegistration failed"):
        run_ants(str(src / "fixed.nii.gz"), str(src / "moving.nii.gz"), str(tmp_path / "fail_"))
    assert list(tmp_path.iterdir()) == []


def test_uncollapsed_linear_transforms_are_composed(pair, tmp_path, monkeypatch):
    """Without --collapse-output-transforms ANTs writes 0DerivedInitialMovingTranslation, 1Rigid,
    2Affine, 3Warp: P0GenericAffine must be their composition, in ANTs' order."""
    src, fixed, _ = pair
    preset = json.loads(json.dumps(ANTS_PRESETS["ants-syn"]))
    preset["collapse_output_transforms"] = False
    preset["stages"].insert(0, {**preset["stages"][0], "transform": "Rigid"})
    monkeypatch.setitem(ANTS_PRESETS, "uncollapsed", preset)
    out = run_ants(str(src / "fixed.nii.gz"), str(src / "moving.nii.gz"), str(tmp_path / "u_"), preset="uncollapsed",
                   scale_iterations=0.05)
    f, m = ants.image_read(str(src / "fixed.nii.gz")), ants.image_read(str(src / "moving.nii.gz"))
    warped = nib.load(str(out["warped"])).get_fdata()
    inside = foreground_mask(fixed.data)
    by_files = ants.apply_transforms(f, m, [str(out["warp"]), str(out["affine"])], whichtoinvert=[False, False])
    by_h5 = ants.apply_transforms(f, m, [str(out["composite"])])
    assert ncc(by_files.numpy(), warped, inside) >= 0.999
    assert ncc(by_h5.numpy(), warped, inside) >= 0.999
