"""greedy baselines (PyPI ``picsl-greedy``): the checks only greedy has.

What every baseline preset must do (``inrreg register``'s files, warped closer to fixed, ANTs
reproducing greedy's own resampled images from the written ``[1Warp, 0GenericAffine]``, ANTs'
Jacobian matching ``Pjacobian``, the metadata) is checked once for all presets, greedy's included,
in ``test_baselines.py``. Here: greedy's command lines from its presets, a 2-D pair with a mask,
and the command line ``inrreg register --preset greedy``.
"""
from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from helpers import masked_ncc, mni_slice

from inrreg_pipeline.baselines import BASELINE_PRESETS, GREEDY_PRESETS, greedy_commands, is_baseline_preset, run_baseline
from inrreg_pipeline.core.space import downsample, foreground_mask
from inrreg_pipeline.io.images import InputError, save_image
from inrreg_pipeline.io.itk import read_ants_displacement_field, read_itk_affine
from inrreg_pipeline.synthetic import deform, random_deformation

pytest.importorskip("picsl_greedy")


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
