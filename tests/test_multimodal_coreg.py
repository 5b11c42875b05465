"""The multi-modal co-registration default (``init_multimodal_coreg_wf``'s preset) on a same-head pair.

A T2w-like image is built from nilearn's MNI152 tissue maps (CSF bright, grey matter intermediate,
white matter dark, plus noise) on the 6 mm grid of the T1w template, so the two images show the
same head in different contrasts. A known rigid motion ``B`` (RAS mm) is put in the T2w's affine:
the anatomy at moving world point ``B x`` is the anatomy at ``x``, so the true fixed -> moving map
is ``phi(x) = B x`` and ``|| A(x + u(x)) - B x ||`` is the error in mm at a fixed point ``x``.
Both tests run the registration through the core API with the workflow's default preset, as the
workflow's registration node does (``inrreg_pipeline.presets.resolve``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import mni_tissue

from inrreg_pipeline.core import register
from inrreg_pipeline.core.space import SpatialImage, apply_affine, downsample
from inrreg_pipeline.presets import resolve

pytest.importorskip("inrreg_pipeline.workflows")
from inrreg_pipeline.workflows import default_multimodal_preset  # noqa: E402

CPU = torch.device("cpu")
#: 2 mm template -> 6 mm (33 x 39 x 32 voxels): the resolution keeps a registration near a minute on 2 CPU cores
FACTOR = 3


def rigid_motion(centre: np.ndarray, degrees: tuple[float, float, float],
                 translation_mm: tuple[float, float, float]) -> np.ndarray:
    """``B(x) = Rz Ry Rx (x - c) + c + t`` (4 x 4, RAS mm; rotations about the RAS x, y, z axes)."""
    rx, ry, rz = np.deg2rad(degrees)
    mx = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    my = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    mz = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    b = np.eye(4)
    b[:3, :3] = mz @ my @ mx
    b[:3, 3] = centre - b[:3, :3] @ centre + np.asarray(translation_mm, float)
    return b


def same_head_pair() -> tuple[SpatialImage, SpatialImage, np.ndarray]:
    """``(T1w, T2w-like, brain mask)`` on the same 6 mm grid: the T2w is ``CSF + 0.55 GM + 0.3 WM``
    inside the brain (CSF the brain minus GM and WM probability), with Gaussian noise of 0.03."""
    t1 = downsample(mni_tissue("t1"), FACTOR)
    gm, wm = downsample(mni_tissue("gm"), FACTOR).data, downsample(mni_tissue("wm"), FACTOR).data
    brain = t1.data > 0.1 * np.percentile(t1.data, 99)
    csf = np.clip(brain.astype(np.float32) - gm - wm, 0.0, 1.0)
    noise = 0.03 * np.random.default_rng(0).standard_normal(t1.shape)
    t2 = np.clip((csf + 0.55 * gm + 0.3 * wm) * brain + noise, 0.0, None).astype(np.float32)
    return t1, SpatialImage(t2, t1.affine.copy()), brain


def mapped_points(fixed: SpatialImage, moving: SpatialImage) -> np.ndarray:
    """``phi(x) = A(x + u(x))`` at the fixed voxel centres, from the default multi-modal preset."""
    result = register(fixed, moving, resolve(default_multimodal_preset()), CPU, seed=0)
    return apply_affine(result.affine, fixed.world_grid() + result.displacement)


def test_default_is_a_multichannel_rigid_preset():
    """The default stores each contrast in its own image channel and moves rigidly (6 dof)."""
    settings = resolve(default_multimodal_preset())
    assert settings.method == "two-network"
    assert settings.two_network.multimodal and settings.two_network.shared_latent > 0
    assert settings.two_network.motion == "affine-param" and settings.two_network.affine_param_rigid


def test_default_recovers_a_known_rigid_motion_within_1mm():
    t1, t2, brain = same_head_pair()
    grid = t1.world_grid()
    motion = rigid_motion(grid[brain].mean(0), (4.0, -3.0, 5.0), (3.0, -4.0, 2.5))
    moving = SpatialImage(t2.data, motion @ t2.affine)
    truth = apply_affine(motion, grid)
    before = np.linalg.norm(grid - truth, axis=-1)[brain]
    error = np.linalg.norm(mapped_points(t1, moving) - truth, axis=-1)[brain]
    assert before.mean() > 6.0
    assert error.mean() < 1.0, (before.mean(), error.mean(), error.max())


def test_default_leaves_an_aligned_pair_alone():
    t1, t2, brain = same_head_pair()
    grid = t1.world_grid()
    displacement = np.linalg.norm(mapped_points(t1, t2) - grid, axis=-1)[brain]
    assert displacement.mean() < 1.0, (displacement.mean(), displacement.max())
