"""Shared test data: real images that ship with nilearn, a registration pair with labels, masks and
landmarks, quick settings, and the locations of the research presets and the shared data."""
from __future__ import annotations

import copy
import csv
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from nilearn import datasets

from inrreg_pipeline.core.config import load_preset
from inrreg_pipeline.core.space import SpatialImage, apply_affine, downsample, foreground_mask
from inrreg_pipeline.io.images import save_image
from inrreg_pipeline.synthetic import deform, random_deformation


@lru_cache(maxsize=None)
def _mni(resolution: int = 2) -> SpatialImage:
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


#: The shared data sets, ``../shared/data`` next to the repository (tests that need them skip when absent).
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: A few iterations of a small SIREN: the settings of the shipped ``sloppy`` preset, written out so that
#: tests can change a copy (seconds per registration on 2 CPU cores).
QUICK_PRESET = {"affine": {"shrink_factors": [2, 1], "iterations": [20, 10], "rigid_iterations": 10, "samples": 2000},
                "network": {"hidden_layers": 2, "hidden_features": 32},
                "optimisation": {"iterations": 20, "patch_size": 8, "patches": 2}, "inverse_iterations": 5}


def mni_tissue(kind: str = "t1") -> SpatialImage:
    """nilearn's MNI152 (2 mm): the T1w template (``t1``) or a tissue probability map (``gm``, ``wm``)."""
    loader = {"t1": datasets.load_mni152_template, "gm": datasets.load_mni152_gm_template,
              "wm": datasets.load_mni152_wm_template}[kind]
    img = loader(resolution=2)
    return SpatialImage(np.asarray(img.get_fdata(), np.float32), img.affine)


def make_pair(folder: Path, factor: int = 3, seed: int = 1, amplitude_mm: float = 4.0) -> dict[str, str]:
    """Fixed = MNI152 (2 mm) downsampled ``factor`` times; moving = fixed under a known deformation.

    Also writes GM/WM label maps (1 = GM, 2 = WM from nilearn's tissue templates) of both images,
    a brain mask of each, 8 landmark pairs (RAS) and a quick preset JSON. Returns the paths.
    """
    folder.mkdir(parents=True, exist_ok=True)
    fixed = downsample(mni_tissue("t1"), factor)
    gm, wm = downsample(mni_tissue("gm"), factor), downsample(mni_tissue("wm"), factor)
    labels = np.zeros(fixed.shape, np.int16)
    tissue = np.maximum(gm.data, wm.data) > 0.3
    labels[tissue] = np.where(wm.data[tissue] >= gm.data[tissue], 2, 1)
    psi = random_deformation(fixed, amplitude_mm=amplitude_mm, seed=seed)
    moving = deform(fixed, psi)
    moving_labels = deform(fixed.with_data(labels.astype(np.float32)), psi, order=0)
    mask = (fixed.data > 0.1 * np.percentile(fixed.data, 99)).astype(np.uint8)
    moving_mask = (moving.data > 0.1 * np.percentile(moving.data, 99)).astype(np.uint8)
    paths = {k: str(folder / f"{k}.nii.gz") for k in
             ("fixed", "moving", "fixed_labels", "moving_labels", "fixed_mask", "moving_mask")}
    save_image(fixed.data, fixed.affine, paths["fixed"])
    save_image(moving.data, moving.affine, paths["moving"])
    save_image(labels, fixed.affine, paths["fixed_labels"], dtype=np.int16)
    save_image(np.rint(moving_labels.data), moving.affine, paths["moving_labels"], dtype=np.int16)
    save_image(mask, fixed.affine, paths["fixed_mask"], dtype=np.uint8)
    save_image(moving_mask, moving.affine, paths["moving_mask"], dtype=np.uint8)
    # landmarks: moving points y inside the brain, fixed points x = psi(y) (psi: moving -> fixed)
    rng = np.random.default_rng(seed)
    inside = np.argwhere(labels == 2)
    vox = inside[rng.choice(len(inside), 8, replace=False)].astype(float)
    y = vox @ moving.affine[:3, :3].T + moving.affine[:3, 3]
    x = psi(y)
    for name, pts in (("fixed_landmarks", x), ("moving_landmarks", y)):
        paths[name] = str(folder / f"{name}.tsv")
        with open(paths[name], "w") as fh:
            fh.write("x\ty\tz\n" + "".join(f"{a:.4f}\t{b:.4f}\t{c:.4f}\n" for a, b, c in pts))
    paths["preset"] = str(folder / "quick.json")
    Path(paths["preset"]).write_text(json.dumps(QUICK_PRESET))
    return paths


def read_tsv(path) -> list[dict]:
    """The rows of a TSV file with a header line, as dicts."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def ensure_run_ants() -> None:
    """Skip when the ANTs baseline (``inrreg_pipeline.baselines`` + antspyx) is not importable."""
    pytest.importorskip("ants")
    pytest.importorskip("inrreg_pipeline.baselines")


def quick_svf():
    """The shipped ``svf`` one octave coarser for 4 mm test images: 16, 8, 4 mm levels on 16, 8, 8 mm
    control grids (20 + 20 + 40 steps), the hash levels fading in over the first two levels as the
    shipped ones do, and a short affine stage (seconds on 2 CPU cores)."""
    s = copy.deepcopy(load_preset("svf"))
    s.affine.iterations = [40, 20]
    s.affine.shrink_factors = [2, 1]
    s.affine.rigid_iterations = 20
    s.affine.samples = 4000
    s.network.hidden_features = 32
    s.svf.level_spacing_mm = [16.0, 8.0, 4.0]
    s.svf.level_control_spacing_mm = [16.0, 8.0, 8.0]
    s.svf.iterations = [20, 20, 40]
    s.svf.hash.coarse_to_fine_steps = 40
    return s


def known_deformation_pair():
    """``(fixed, moving, psi)``: the MNI152 at 4 mm and itself under a known smooth deformation ``psi``
    (6 mm, 3 degrees, 3 mm; seed 5)."""
    fixed = mni_small(2)
    psi = random_deformation(fixed, amplitude_mm=6.0, rotation_deg=3.0, translation_mm=3.0, seed=5)
    return fixed, deform(fixed, psi), psi


def assert_recovered_without_folding(fixed, psi, result) -> None:
    """Inside the brain, the registration leaves under 0.8 of the affine stage's error and under 2 mm
    on average (mm, half a 4 mm voxel; against the known ``psi``), with no voxel whose det J <= 0."""
    inside = foreground_mask(fixed.data)
    grid = fixed.world_grid()
    after_affine = np.linalg.norm(psi(apply_affine(result.affine, grid)) - grid, axis=-1)[inside]
    after = np.linalg.norm(psi(apply_affine(result.affine, grid + result.displacement)) - grid, axis=-1)[inside]
    assert after.mean() < 0.8 * after_affine.mean() and after.mean() < 2.0, (after_affine.mean(), after.mean())
    assert result.jacobian[inside].min() > 0
