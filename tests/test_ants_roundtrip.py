"""``inrreg register`` outputs are consumed by ANTs unchanged (antspyx's apply_transforms).

The pair is stored on oblique, anisotropic grids of different orientations, so any slip between
RAS and LPS, qform and sform, or transform order would show.
"""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from helpers import masked_ncc as ncc
from helpers import mni_small, quick_settings

from inrreg_pipeline.apply import apply_transforms
from inrreg_pipeline.core.space import SpatialImage, voxel_grid_to_world
from inrreg_pipeline.demo import oblique_grid
from inrreg_pipeline.io.images import save_image
from inrreg_pipeline.register import register_files
from inrreg_pipeline.synthetic import deform, random_deformation, sample_image

ants = pytest.importorskip("ants")


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("roundtrip")
    base = mni_small()
    fshape, faff = oblique_grid(base, spacing=(3.5, 4.2, 3.8), angle_deg=12.0, flip_first_axis=False)
    fixed = SpatialImage(sample_image(base, voxel_grid_to_world(fshape, faff)).astype(np.float32), faff)
    psi = random_deformation(base, amplitude_mm=5.0, seed=8)
    mshape, maff = oblique_grid(base, spacing=(4.5, 3.6, 4.0), angle_deg=-8.0, flip_first_axis=True)
    moving = deform(base, psi, mshape, maff)
    save_image(fixed.data, fixed.affine, tmp / "fixed.nii.gz")
    save_image(moving.data, moving.affine, tmp / "moving.nii.gz")
    labels = np.digitize(moving.data, np.percentile(moving.data[moving.data > 0.05], [30, 60, 85])) * (moving.data > 0.05)
    save_image(labels.astype(np.int16), moving.affine, tmp / "moving_labels.nii.gz", dtype=np.int16)
    outputs = register_files(str(tmp / "fixed.nii.gz"), str(tmp / "moving.nii.gz"), str(tmp / "sub_"),
                             preset=quick_settings(), device="cpu", seed=0, progress=False)
    return tmp, fixed, moving, outputs


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_ants_reproduces_our_warped_images(registered, direction):
    """``[1Warp, 0GenericAffine]`` / ``Composite.h5`` resample the moving image as ours does, and
    ``[[0GenericAffine, 1], 1InverseWarp]`` / ``InverseComposite.h5`` the fixed image."""
    tmp, fixed, moving, out = registered
    f, m = ants.image_read(str(tmp / "fixed.nii.gz")), ants.image_read(str(tmp / "moving.nii.gz"))
    if direction == "forward":
        ours, reference, image, grid = nib.load(str(out["warped"])).get_fdata(), f, m, fixed
        files, invert, composite = [str(out["warp"]), str(out["affine"])], [False, False], out["composite"]
    else:
        ours, reference, image, grid = nib.load(str(out["inverse_warped"])).get_fdata(), m, f, moving
        files, invert, composite = [str(out["affine"]), str(out["inverse_warp"])], [True, False], out["inverse_composite"]
    inside = grid.data > 0.1 * grid.data.max()
    by_files = ants.apply_transforms(reference, image, files, interpolator="linear", whichtoinvert=invert).numpy()
    by_h5 = ants.apply_transforms(reference, image, [str(composite)], interpolator="linear").numpy()
    assert ncc(by_files, ours, inside) >= 0.999
    assert ncc(by_h5, ours, inside) >= 0.999
    if direction == "forward":
        # and the registration did something: ours is much closer to the fixed image than the
        # moving image brought over by the affine alone.
        affine_only = ants.apply_transforms(f, m, [str(out["affine"])], interpolator="linear").numpy()
        assert ncc(ours, fixed.data, inside) > ncc(affine_only, fixed.data, inside)


def test_inrreg_apply_agrees_with_ants(registered):
    tmp, fixed, moving, out = registered
    f, m = ants.image_read(str(tmp / "fixed.nii.gz")), ants.image_read(str(tmp / "moving.nii.gz"))
    chain = [str(out["warp"]), str(out["affine"])]
    inside = fixed.data > 0.1 * fixed.data.max()

    apply_transforms(str(tmp / "moving.nii.gz"), str(tmp / "fixed.nii.gz"), chain, str(tmp / "applied.nii.gz"))
    theirs = ants.apply_transforms(f, m, chain, interpolator="linear", whichtoinvert=[False, False]).numpy()
    assert ncc(nib.load(str(tmp / "applied.nii.gz")).get_fdata(), theirs, inside) >= 0.999

    lab = ants.image_read(str(tmp / "moving_labels.nii.gz"))
    for ours_mode, ants_mode in (("label", "genericLabel"), ("nearest", "nearestNeighbor")):
        target = tmp / f"labels_{ours_mode}.nii.gz"
        apply_transforms(str(tmp / "moving_labels.nii.gz"), str(tmp / "fixed.nii.gz"), chain, str(target),
                         interpolation=ours_mode)
        ours = np.asarray(nib.load(str(target)).dataobj)
        theirs = ants.apply_transforms(f, lab, chain, interpolator=ants_mode, whichtoinvert=[False, False]).numpy()
        assert set(np.unique(ours)) <= {0, 1, 2, 3}, "label maps keep their values"
        agreement = np.mean(ours[inside] == np.rint(theirs[inside]))
        assert agreement >= 0.97, (ours_mode, agreement)
