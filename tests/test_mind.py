"""MIND-SSC descriptors (``core.losses.mind_ssc``) and the velocity INR's optional term on them.

The descriptor is checked against its definition written out pair by pair (2-D and 3-D), for the
property users pick it for (it sees structure, not contrast), and in a registration of nilearn's
MNI152 under a known deformation.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as nnf
from helpers import assert_recovered_without_folding, known_deformation_pair, mni_small, quick_svf

import inrreg_pipeline.core.svf as svf_module
from inrreg_pipeline.core.config import validate
from inrreg_pipeline.core.losses import mind_ssc
from inrreg_pipeline.core.registration import register

CPU = torch.device("cpu")


def _mind_by_definition(image: torch.Tensor, distance: int, radius: int = 1) -> torch.Tensor:
    """MIND-SSC written out: for each pair of non-opposite axis neighbours ``a``, ``b`` at ``distance``
    voxels, the mean over the ``2r+1`` patch of ``(I(x + a + t) - I(x + b + t))^2`` (edges replicated),
    ``exp(-D / V)`` with ``V`` the mean over pairs clamped to [0.001, 1000] x its image mean, over its max."""
    d = image.ndim - 2
    neighbours = [tuple(s * distance if k == axis else 0 for k in range(d)) for axis in range(d) for s in (1, -1)]
    pairs = [(a, b) for i, a in enumerate(neighbours) for b in neighbours[i + 1:] if a != tuple(-x for x in b)]
    reach = distance + radius
    padded = nnf.pad(image, [reach, reach] * d, mode="replicate")
    size = image.shape[2:]

    def at(offset):
        return padded[(slice(None), slice(None)) + tuple(
            slice(reach - radius + o, reach - radius + o + n + 2 * radius) for o, n in zip(offset, size))]

    pool = nnf.avg_pool3d if d == 3 else nnf.avg_pool2d
    distances = torch.cat([pool((at(a) - at(b)) ** 2, 2 * radius + 1, 1) for a, b in pairs], 1)
    variance = distances.mean(1, keepdim=True)
    level = float(variance.mean())
    variance = variance.clamp(level * 1e-3, level * 1e3)
    descriptor = torch.exp(-distances / variance)
    return descriptor / descriptor.amax(1, keepdim=True)


@pytest.mark.parametrize("shape, distance, channels", [((17, 13, 15), 2, 12), ((16, 19), 3, 4), ((9, 10, 8), 1, 12)])
def test_mind_descriptors_follow_their_definition(shape, distance, channels):
    gen = torch.Generator().manual_seed(distance)
    image = torch.rand((1, 1) + shape, generator=gen, dtype=torch.float64)
    ours = mind_ssc(image, distance)
    assert ours.shape == (1, channels) + shape
    np.testing.assert_allclose(ours.numpy(), _mind_by_definition(image, distance).numpy(), rtol=1e-10, atol=1e-12)


def test_mind_descriptors_see_structure_not_contrast():
    """A contrast change, even an inverted one (as T1w against T2w), leaves the descriptors as they are;
    moving the structure by a voxel moves them with it (the image is 0 near its edges, so the roll is a
    translation), so they differ from those of the unmoved image."""
    image = torch.as_tensor(mni_small(2).data, dtype=torch.float64)[None, None]
    reference = mind_ssc(image, 1)
    for other in (3.0 * image + 7.0, 1.0 - 0.5 * image):
        np.testing.assert_allclose(mind_ssc(other, 1).numpy(), reference.numpy(), rtol=1e-9, atol=1e-9)
    shifted = torch.roll(image, 1, dims=2)
    np.testing.assert_allclose(mind_ssc(shifted, 1).numpy(), torch.roll(reference, 1, dims=2).numpy(), atol=1e-12)
    assert (mind_ssc(shifted, 1) - reference).abs().mean() > 0.02


def test_velocity_inr_with_mind_recovers_a_known_deformation_without_folding(monkeypatch):
    """``svf.level_mind_alpha`` adds the descriptor term at the levels it names (and only those): the
    known deformation is recovered, no voxel folds, and the transform differs from the one without it."""
    fixed, moving, psi = known_deformation_pair()
    s = quick_svf()
    without = register(fixed, moving, validate(copy.deepcopy(s)), CPU, seed=3)

    calls = []
    original = svf_module._mind_difference
    monkeypatch.setattr(svf_module, "_mind_difference", lambda *a: calls.append(a[3]) or original(*a))
    s.svf.level_mind_alpha = [1.0, 1.0, 0.0]
    s.svf.mind_distance_mm = 8.0
    result = register(fixed, moving, validate(s), CPU, seed=3)
    assert calls == [1] * 20 + [1] * 20  # 8 mm at the 16 mm level is still one voxel; none at 4 mm

    assert_recovered_without_folding(fixed, psi, result)
    assert np.abs(result.displacement - without.displacement).max() > 1e-3
