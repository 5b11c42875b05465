"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest
from helpers import mni_small

from inrreg_pipeline.io.images import save_image
from inrreg_pipeline.synthetic import deform, random_deformation


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """nilearn's MNI152 at 6 mm (31 x 37 x 31) and a copy under a known smooth deformation, 4 degree
    rotation and 4 mm shift, written as ``fixed.nii.gz`` / ``moving.nii.gz``: ``(folder, fixed, moving)``."""
    tmp = tmp_path_factory.mktemp("baseline_pair")
    fixed = mni_small(3)
    psi = random_deformation(fixed, amplitude_mm=5.0, rotation_deg=4.0, translation_mm=4.0, seed=3)
    moving = deform(fixed, psi)
    save_image(fixed.data, fixed.affine, tmp / "fixed.nii.gz")
    save_image(moving.data, moving.affine, tmp / "moving.nii.gz")
    return tmp, fixed, moving
