"""FireANTs baselines (PyPI ``fireants``): the checks only FireANTs has.

What every baseline preset shares (the file set, ANTs reproducing FireANTs' own ``Warped`` from the
written ``[1Warp, 0GenericAffine]`` and the inverse chain, ANTs' Jacobian matching ``Pjacobian``, the
metadata) is checked once for all presets, FireANTs' included, in ``test_baselines.py``. Here: the
frame conversion on an oblique, flipped, anisotropic moving grid, the affine stage as a transform of
its own, masks, the refusals, and the command line ``inrreg register --preset fireants``.
"""
from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from helpers import masked_ncc, mni_small, mni_slice

from inrreg_pipeline.baselines import FIREANTS_PRESETS, baseline_tool, is_baseline_preset, run_baseline, run_fireants
from inrreg_pipeline.baselines.fireants import fireants_map_to_ras
from inrreg_pipeline.core.space import downsample, foreground_mask
from inrreg_pipeline.demo import oblique_grid
from inrreg_pipeline.io.images import InputError, save_image
from inrreg_pipeline.io.itk import read_itk_affine
from inrreg_pipeline.synthetic import deform, random_deformation, sample_image

fireants_image = pytest.importorskip("fireants.io.image")
ants = pytest.importorskip("ants")


def test_presets_are_the_quickstart_set_up():
    assert list(FIREANTS_PRESETS) == ["fireants", "fireants-syn"]
    assert all(is_baseline_preset(n) and baseline_tool(n) == "fireants" for n in FIREANTS_PRESETS)
    greedy, syn = FIREANTS_PRESETS["fireants"], FIREANTS_PRESETS["fireants-syn"]
    assert greedy["moments"] == syn["moments"] == {"scale": 4, "moments": 1}  # centres of mass first
    assert (greedy["deformable"]["registration"], syn["deformable"]["registration"]) == ("greedy", "syn")
    assert greedy["affine"] == syn["affine"] == {"scales": [4, 2, 1], "iterations": [200, 100, 50], "optimizer": "Adam",
                                                 "lr": 0.003, "loss": "cc", "cc_kernel_size": 5}
    w = greedy["deformable"]
    assert (w["scales"], w["iterations"], w["lr"], w["cc_kernel_size"], w["smooth_grad_sigma"]) == \
        ([4, 2, 1], [200, 100, 25], 0.5, 5, 1.0)


def test_map_to_ras_reads_fireants_grid_coordinates_in_world_mm(tmp_path):
    """FireANTs' identity coordinates on an oblique, first-axis-flipped, anisotropic grid are, after
    the conversion, the world (RAS mm) position of every voxel as nibabel gives it."""
    image = mni_small(4)
    shape, affine = oblique_grid(image, spacing=(4.4, 4.0, 5.0), angle_deg=12.0, flip_first_axis=True)
    data = sample_image(image, _world(shape, affine))
    save_image(data, affine, tmp_path / "o.nii.gz")
    batch = fireants_image.BatchedImages([fireants_image.Image.load_file(str(tmp_path / "o.nii.gz"), device="cpu")])
    eye = torch.eye(3, 4)[None]
    coords = torch.nn.functional.affine_grid(eye, [1, 1, *batch.shape[2:]], align_corners=True)
    got = fireants_map_to_ras(coords, batch.get_torch2phy())
    assert got.shape == (*shape, 3)
    assert np.abs(got - _world(shape, affine)).max() < 1e-3


def _world(shape, affine):
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    return idx @ affine[:3, :3].T + affine[:3, 3]


@pytest.fixture(scope="module")
def oblique_run(tmp_path_factory):
    """A 6 mm MNI pair whose moving image lies on an oblique, flipped, anisotropic grid, registered by
    ``fireants`` with a fixed-image mask (iterations scaled to a few seconds)."""
    tmp = tmp_path_factory.mktemp("fireants_oblique")
    fixed = mni_small(3)
    psi = random_deformation(fixed, amplitude_mm=4.0, rotation_deg=5.0, translation_mm=5.0, seed=7)
    shape, affine = oblique_grid(fixed, spacing=(6.5, 6.0, 7.0), angle_deg=-10.0, flip_first_axis=True)
    moving = deform(fixed, psi, shape, affine)
    save_image(fixed.data, fixed.affine, tmp / "f.nii.gz")
    save_image(moving.data, moving.affine, tmp / "m.nii.gz")
    save_image(foreground_mask(fixed.data).astype(np.uint8), fixed.affine, tmp / "fm.nii.gz", dtype=np.uint8)
    out = run_baseline(str(tmp / "f.nii.gz"), str(tmp / "m.nii.gz"), str(tmp / "fa_"), preset="fireants",
                       fixed_mask=str(tmp / "fm.nii.gz"), scale_iterations=0.25)
    return tmp, fixed, moving, out


def test_oblique_pair_round_trips_through_ants(oblique_run):
    """ANTs applying the written files reproduces FireANTs' own resampling on a grid that is not
    axis-aligned, and the affine file alone is the affine stage: better than no transform, short of
    the whole chain."""
    tmp, fixed, moving, out = oblique_run
    f, m = ants.image_read(str(tmp / "f.nii.gz")), ants.image_read(str(tmp / "m.nii.gz"))
    inside = foreground_mask(fixed.data)
    warped = nib.load(str(out["warped"])).get_fdata()
    by_files = ants.apply_transforms(f, m, [str(out["warp"]), str(out["affine"])]).numpy()
    assert masked_ncc(by_files, warped, inside) >= 0.999
    affine_only = ants.apply_transforms(f, m, [str(out["affine"])]).numpy()
    unmoved = sample_image(moving, fixed.world_grid())
    scores = [masked_ncc(x, fixed.data, inside) for x in (unmoved, affine_only, warped)]
    assert scores[0] < scores[1] < scores[2], scores
    md = json.loads(out["metadata"].read_text())
    assert md["inputs"]["fixed_mask"].endswith("fm.nii.gz") and md["method"] == "fireants"
    assert np.allclose(md["affine_matrix_ras"], read_itk_affine(out["affine"]), atol=1e-5)


def test_refusals_write_nothing(oblique_run, tmp_path):
    tmp, _, _, _ = oblique_run
    with pytest.raises(InputError, match="unknown FireANTs preset"):
        run_fireants(str(tmp / "f.nii.gz"), str(tmp / "m.nii.gz"), str(tmp_path / "x_"), preset="fireants-fast")
    flat = downsample(mni_slice(), 2)
    save_image(flat.data, flat.affine, tmp_path / "f2.nii.gz")
    save_image(flat.data[::-1].copy(), flat.affine, tmp_path / "m2.nii.gz")
    with pytest.raises(InputError, match="3-D"):
        run_baseline(str(tmp_path / "f2.nii.gz"), str(tmp_path / "m2.nii.gz"), str(tmp_path / "y_"), preset="fireants")
    assert not list(tmp_path.glob("x_*")) and not list(tmp_path.glob("y_*"))


@pytest.mark.parametrize("preset", ["fireants", "fireants-syn"])
def test_cli_runs_fireants_quietly(pair, tmp_path, preset):
    tmp, _, _ = pair
    cmd = [sys.executable, "-m", "inrreg_pipeline.cli", "register", str(tmp / "fixed.nii.gz"),
           str(tmp / "moving.nii.gz"), "-o", str(tmp_path / "c_"), "--preset", preset]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "FFO" not in done.stdout + done.stderr and "iter:" not in done.stderr  # no banner, no progress bars
    assert (tmp_path / "c_1Warp.nii.gz").exists() and (tmp_path / "c_1InverseWarp.nii.gz").exists()
    md = json.loads((tmp_path / "c_registration.json").read_text())
    assert md["preset"] == preset and md["iterations_used"]["deformable"] == [200, 100, 25]
