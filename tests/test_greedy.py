"""greedy baselines (PyPI ``picsl-greedy``) write what ``inrreg register`` writes, in ANTs' conventions.

The pair is nilearn's MNI152 at 6 mm and a copy under a known smooth deformation, rotation and
shift; iterations are scaled down. ANTs (antspyx) is the independent reader: applying the written
``[1Warp, 0GenericAffine]`` with antsApplyTransforms must give greedy's own resampled image, and
ANTs' Jacobian of the written warp must match ``Pjacobian``.
"""
from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from helpers import masked_ncc, mni_slice

from inrreg_pipeline.baselines import BASELINE_PRESETS, is_baseline_preset, run_baseline
from inrreg_pipeline.core.space import downsample, foreground_mask
from inrreg_pipeline.greedy import GREEDY_PRESETS, greedy_commands
from inrreg_pipeline.io.images import InputError, save_image
from inrreg_pipeline.io.itk import read_ants_displacement_field, read_itk_affine
from inrreg_pipeline.register import OUTPUT_SUFFIXES
from inrreg_pipeline.synthetic import deform, random_deformation

pytest.importorskip("picsl_greedy")
ants = pytest.importorskip("ants")


@pytest.fixture(scope="module", params=sorted(GREEDY_PRESETS))
def run(request, pair):
    tmp, _, _ = pair
    out = run_baseline(str(tmp / "fixed.nii.gz"), str(tmp / "moving.nii.gz"), str(tmp / f"{request.param}_"),
                       preset=request.param, scale_iterations=0.5)
    return tmp, request.param, out


def test_presets_are_baselines_and_record_their_commands():
    assert {"greedy", "greedy-permissive"} <= set(BASELINE_PRESETS)
    assert is_baseline_preset("greedy") and is_baseline_preset("antspyx-syn-s") and not is_baseline_preset("svf")
    files = {k: k.upper() for k in ("moments", "affine", "warp", "inverse_warp", "warped", "inverse_warped")}
    default = greedy_commands("greedy", 3, "F", "M", files, threads=1)
    permissive = greedy_commands("greedy-permissive", 3, "F", "M", files, threads=1)
    assert "-m WNCC 2x2x2 -n 100x50x10 -o WARP -oinv INVERSE_WARP" in default[2] and " -s " not in default[2]
    assert "-s 1.5mm 0.5mm" in permissive[2]
    assert "-a -dof 12 -ia MOMENTS -m NCC 2x2x2" in default[1] and "-moments 1" in default[0]
    with pytest.raises(InputError, match="unknown greedy preset"):
        greedy_commands("greedy-fast", 3, "F", "M", files, threads=1)
    json.dumps(GREEDY_PRESETS)


def test_outputs_are_those_of_inrreg_register(run):
    tmp, preset, out = run
    assert set(out) == set(OUTPUT_SUFFIXES)
    assert {p.name for p in tmp.iterdir() if p.name.startswith(f"{preset}_")} == \
        {f"{preset}_{suffix}" for suffix in OUTPUT_SUFFIXES.values()}
    assert not [p for p in tmp.iterdir() if p.name.startswith(".inrreg")]


def test_warped_is_much_closer_to_fixed(run, pair):
    _, fixed, moving = pair
    _, _, out = run
    inside = foreground_mask(fixed.data)
    warped = nib.load(str(out["warped"])).get_fdata()
    before, after = masked_ncc(moving.data, fixed.data, inside), masked_ncc(warped, fixed.data, inside)
    assert 1.0 - after < 0.5 * (1.0 - before), (before, after)


def test_ants_applies_the_written_transforms_as_greedy_does(run, pair):
    """greedy's RAS text affine and LPS warp, as written, are the ANTs chain greedy itself applied."""
    tmp, _, out = run
    _, fixed, moving = pair
    f, m = ants.image_read(str(tmp / "fixed.nii.gz")), ants.image_read(str(tmp / "moving.nii.gz"))
    warped = nib.load(str(out["warped"])).get_fdata()
    by_files = ants.apply_transforms(f, m, [str(out["warp"]), str(out["affine"])], interpolator="linear",
                                     whichtoinvert=[False, False]).numpy()
    by_h5 = ants.apply_transforms(f, m, [str(out["composite"])], interpolator="linear").numpy()
    inside = foreground_mask(fixed.data)
    assert masked_ncc(by_files, warped, inside) >= 0.999
    assert masked_ncc(by_h5, warped, inside) >= 0.999
    inverse_warped = nib.load(str(out["inverse_warped"])).get_fdata()
    inv_files = ants.apply_transforms(m, f, [str(out["affine"]), str(out["inverse_warp"])], interpolator="linear",
                                      whichtoinvert=[True, False]).numpy()
    assert masked_ncc(inv_files, inverse_warped, foreground_mask(moving.data)) >= 0.999


def test_jacobian_agrees_with_ants(run, pair):
    tmp, preset, out = run
    _, fixed, _ = pair
    ours = nib.load(str(out["jacobian"])).get_fdata()
    theirs = ants.create_jacobian_determinant_image(ants.image_read(str(tmp / "fixed.nii.gz")),
                                                    str(out["warp"])).numpy()
    inside = foreground_mask(fixed.data)
    assert np.corrcoef(ours[inside], theirs[inside])[0, 1] > 0.99
    difference = np.abs(ours - theirs)[inside]
    if preset == "greedy":
        assert difference.max() < 0.1
    else:  # greedy-permissive's field is rough on the 6 mm grid: the two difference schemes part more
        assert np.median(difference) < 0.05


def test_metadata_records_commands_versions_and_folding(run):
    tmp, preset, out = run
    md = json.loads(out["metadata"].read_text())
    assert md["method"] == "greedy" and md["preset"] == preset and md["parameters"] == GREEDY_PRESETS[preset]
    assert all(str(tmp) not in c for c in md["greedy_commands"])  # placeholders, no temporary paths
    assert md["greedy_commands"][2].startswith("-d 3 -threads 1 -i {fixed} {moving} -it {affine}")
    assert md["versions"]["picsl-greedy"]
    assert md["runtime_s"]["total"] > 0 and md["memory"]["peak_rss_mb"] > 0
    assert np.allclose(md["affine_matrix_ras"], read_itk_affine(out["affine"]), atol=1e-5)
    assert 0.0 <= md["jacobian"]["percent_nonpositive_in_mask"] <= 100.0
    field, _ = read_ants_displacement_field(out["warp"])
    assert np.abs(field).max() > 0.1


def test_2d_with_masks(tmp_path):
    fixed = downsample(mni_slice(), 2)
    psi = random_deformation(fixed, amplitude_mm=4.0, rotation_deg=4.0, translation_mm=3.0, seed=1)
    moving = deform(fixed, psi)
    save_image(fixed.data, fixed.affine, tmp_path / "f.nii.gz")
    save_image(moving.data, moving.affine, tmp_path / "m.nii.gz")
    save_image(foreground_mask(fixed.data).astype(np.uint8), fixed.affine, tmp_path / "fm.nii.gz", dtype=np.uint8)
    out = run_baseline(str(tmp_path / "f.nii.gz"), str(tmp_path / "m.nii.gz"), str(tmp_path / "g_"), preset="greedy",
                       fixed_mask=str(tmp_path / "fm.nii.gz"), scale_iterations=0.5)
    field, grid = read_ants_displacement_field(out["warp"])
    assert field.shape == (*fixed.shape, 2) and read_itk_affine(out["affine"]).shape == (3, 3)
    md = json.loads(out["metadata"].read_text())
    assert md["dimension"] == 2 and all("-gm {fixed_mask}" in c for c in md["greedy_commands"][:3])
    inside = foreground_mask(fixed.data)
    warped = nib.load(str(out["warped"])).get_fdata()
    assert masked_ncc(warped, fixed.data, inside) > masked_ncc(moving.data, fixed.data, inside)


def test_cli_runs_greedy_and_refuses_bad_input(pair, tmp_path):
    tmp, _, _ = pair
    cmd = [sys.executable, "-m", "inrreg_pipeline.cli", "register", str(tmp / "fixed.nii.gz"),
           str(tmp / "moving.nii.gz"), "-o", str(tmp_path / "c_"), "--preset", "greedy"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Level" not in done.stdout + done.stderr  # greedy's iteration log is kept out of the terminal
    assert (tmp_path / "c_1Warp.nii.gz").exists()
    bad = subprocess.run(cmd[:4] + [str(tmp_path / "missing.nii.gz")] + cmd[5:-3] + ["-o", str(tmp_path / "d_"),
                                                                                      "--preset", "greedy"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.glob("d_*"))
