"""Shared test data: real images that ship with nilearn, and quick settings."""
from __future__ import annotations

import copy
from functools import lru_cache
from pathlib import Path

import numpy as np

from inrreg_pipeline.core.config import load_preset
from inrreg_pipeline.core.space import SpatialImage, downsample


@lru_cache(maxsize=None)
def _mni(resolution: int = 2) -> SpatialImage:
    from nilearn import datasets

    img = datasets.load_mni152_template(resolution=resolution)
    return SpatialImage(np.asarray(img.get_fdata(), np.float32), img.affine)


def mni_slice() -> SpatialImage:
    """An axial slice of nilearn's MNI152 (2 mm), as a 2-D image with its in-plane affine."""
    vol = _mni()
    return SpatialImage(vol.data[:, :, 45].copy(), vol.affine[np.ix_([0, 1, 3], [0, 1, 3])])


def mni_small(factor: int = 2) -> SpatialImage:
    """nilearn's MNI152 at 2 mm downsampled by ``factor`` (4 mm by default, 50 x 59 x 48)."""
    return downsample(_mni(), factor)


def quick_settings(iterations: int = 150, patches: int = 2, patch_size: int = 10, hidden: int = 64):
    """The ``fast`` preset cut down for tests (seconds per registration on 2 CPU cores)."""
    s = copy.deepcopy(load_preset("fast"))
    s.optimisation.iterations = iterations
    s.optimisation.patches = patches
    s.optimisation.patch_size = patch_size
    s.network.hidden_features = hidden
    s.affine.iterations = [60, 30]
    s.affine.shrink_factors = [2, 1]
    s.affine.rigid_iterations = 30
    s.affine.samples = 4000
    s.inverse_iterations = 10
    return s


def masked_ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Normalised cross-correlation of two images inside ``mask``."""
    a, b = a[mask] - a[mask].mean(), b[mask] - b[mask].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def differing_sections(base: dict, settings: dict) -> set[str]:
    """Top-level keys of two ``RegistrationSettings.to_dict()`` whose values differ, apart from the
    preset's ``name`` and ``description``."""
    return {key for key in base if base[key] != settings[key]} - {"name", "description"}


#: The research-only presets (``benchmarks/presets``: variants and activations of ``fast`` / ``default``),
#: found from this file so that no test depends on the working directory.
RESEARCH_PRESETS = Path(__file__).resolve().parents[1] / "benchmarks" / "presets"


def research_preset(name: str) -> str:
    """The path of ``benchmarks/presets/<name>.json`` (what a preset argument takes for a research preset)."""
    return str(RESEARCH_PRESETS / f"{name}.json")
