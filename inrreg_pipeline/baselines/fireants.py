"""FireANTs (PyPI ``fireants``) baselines with ``inrreg register``'s outputs.

FireANTs is the GPU-first classical registration library of Jena et al. (2024): an affine stage,
then a greedy or SyN deformable registration optimised with a Riemannian Adam, in PyTorch (CUDA when
present, the CPU otherwise). :func:`run_fireants` runs one of :data:`FIREANTS_PRESETS` through
FireANTs' own Python API and writes exactly the files of :func:`inrreg_pipeline.register.register_files`
(same keys, all together or none), so every method is scored by the same code from its own written
transform.

The set-up is the one FireANTs' quickstart gives for brain MRI (``docs/quickstart.md``), started from
the images' centres of mass as FireANTs' own OASIS configuration and its ``fireantsRegistration
--initial-moving-transform`` do (the quickstart's images come pre-aligned; subjects in native space
are centimetres apart, where an affine from the identity fails):

0. ``MomentsRegistration`` of order 1 at scale 4 (a translation);
1. ``AffineRegistration`` at scales 4, 2, 1 (200, 100, 50 Adam steps at 3e-3, CC kernel 5);
2. ``GreedyRegistration`` (``fireants``) or ``SyNRegistration`` (``fireants-syn``), compositive, at
   scales 4, 2, 1 (200, 100, 25 steps), CC kernel 5, gradient smoothing sigma 1 voxel, warp smoothing
   0.5 voxel, Adam at 0.5, started from the affine.

File conventions. FireANTs' affine matrix maps fixed points to moving points in ITK's LPS
millimetres; its deformable map is in normalised ``[-1, 1]`` grid coordinates (``torch2phy`` takes
them to LPS mm). Here the affine stage's matrix is taken to RAS mm (``0GenericAffine.mat``, fixed ->
moving), and the deformable result is read as what
it is, the full map ``y(x)`` at every fixed voxel (``get_warped_coordinates``); the written warp is
``u(x) = A^-1 y(x) - x``, so ``[1Warp, 0GenericAffine]`` is FireANTs' map exactly, whatever its
internal parameterisation. FireANTs' greedy warp has no inverse of its own (it optimises one on
request), so ``1InverseWarp`` is the fixed-point inverse inrreg uses for every displacement field
(:func:`inrreg_pipeline.core.fields.invert_displacement`, as ANTs' ``InvertDisplacementField``).
``Warped`` is FireANTs' own resampling (``evaluate``); ``InverseWarped`` resamples the fixed image
through the written inverse chain.

Masks: FireANTs' greedy and SyN losses take none, so a given mask multiplies its image (the
skull-stripped inputs FireANTs' brain examples use). FireANTs pins ``simpleitk==2.2.1`` exactly; it
runs with the SimpleITK inrreg's I/O is tested with, so ``.ci/install`` installs it without its
pins (``pip install --no-deps``; its run-time needs are torch, SimpleITK, scipy and tqdm). It is
optional: imported where used.

Presets (:data:`FIREANTS_PRESETS`) are data: ``inrreg_pipeline/baselines/presets/<name>.json``,
recorded verbatim as ``parameters``. Keys: ``source``, ``description``, ``moments`` (``scale``,
``moments``: the order), ``affine`` (``scales``,
``iterations``, ``optimizer``, ``lr``, ``loss``, ``cc_kernel_size``) and ``deformable``
(``registration``: ``greedy`` or ``syn``, ``scales``, ``iterations``, ``deformation_type``,
``optimizer``, ``lr``, ``loss``, ``cc_kernel_size``, ``smooth_grad_sigma`` and ``smooth_warp_sigma``
in voxels).
"""
from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import io
import json
import logging
import resource
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..core.choices import SEED_MAX
from ..core.fields import invert_displacement
from ..core.geometry import SpatialImage
from ..core.space import resolve_device, sample_array
from ..core.transform import AffineTransform
from ..io.images import InputError, StagedOutputs, save_image, staging_prefix
from ..io.itk import write_ants_displacement_field, write_itk_affine
from ..register import OUTPUT_SUFFIXES, library_versions, recorded_inputs
from .arguments import checked_baseline_inputs, scaled_iterations
from .outputs import baseline_metadata, write_baseline_outputs, write_inputs
from .presets import FIREANTS_PRESETS, is_fireants_preset

__all__ = ["FIREANTS_PRESETS", "is_fireants_preset", "run_fireants", "fireants_map_to_ras"]

#: LPS <-> RAS: both flip x and y (its own inverse)
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _fireants() -> dict[str, Any]:
    """FireANTs' image and registration classes (fireants is optional: imported here)."""
    try:
        for name in ("fireants", "fireants.utils.imageutils", "fireants.registration.optimizers.adam"):
            logging.getLogger(name).setLevel(logging.ERROR)  # "fused ops not found": the CPU path is the plain one
        with contextlib.redirect_stdout(io.StringIO()):  # its import prints which CUDA kernels it found
            from fireants.io.image import BatchedImages, Image
            from fireants.registration.affine import AffineRegistration
            from fireants.registration.greedy import GreedyRegistration
            from fireants.registration.moments import MomentsRegistration
            from fireants.registration.syn import SyNRegistration
    except ImportError:
        raise RuntimeError("FireANTs baselines need fireants (pip install --no-deps fireants==1.5.0 tqdm)") from None
    return {"Image": Image, "BatchedImages": BatchedImages, "moments": MomentsRegistration, "affine": AffineRegistration,
            "greedy": GreedyRegistration, "syn": SyNRegistration}


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def fireants_map_to_ras(coords: torch.Tensor, moving_torch2phy: torch.Tensor) -> np.ndarray:
    """FireANTs' warped coordinates ``(1, k, j, i, 3)`` (normalised moving coordinates in ITK index
    order ``(i, j, k)``, at every fixed voxel in its array order) as RAS mm moving points
    ``(i, j, k, 3)``, NIfTI voxel order (the fixed image's grid as nibabel reads it). 3-D."""
    d = coords.shape[-1]
    flat = coords[0].reshape(-1, d).double()
    t2p = moving_torch2phy[0].double()
    lps = flat @ t2p[:d, :d].T + t2p[:d, d]
    ras = lps * torch.tensor([-1.0, -1.0, 1.0], dtype=lps.dtype, device=lps.device)
    spatial = tuple(coords.shape[1:-1])  # array order (k, j, i)
    return ras.reshape(spatial + (d,)).cpu().numpy().transpose(tuple(range(d - 1, -1, -1)) + (d,))


def _affine_ras(matrix_lps: torch.Tensor) -> np.ndarray:
    """FireANTs' affine (``get_affine_matrix``: ``(1, 4, 4)``, LPS mm, fixed point -> moving point) in RAS mm."""
    return _LPS @ matrix_lps[0].double().cpu().numpy() @ _LPS


def _load(fa: dict[str, Any], path: Path, mask_path: Path | None, device: torch.device) -> Any:
    image = fa["Image"].load_file(str(path), device=str(device))
    if mask_path is not None:
        mask = fa["Image"].load_file(str(mask_path), device=str(device))
        image.array = image.array * (mask.array > 0).to(image.array.dtype)
    return fa["BatchedImages"]([image])


def run_fireants(fixed: str, moving: str, prefix: str, preset: str = "fireants", threads: int | None = None,
                 seed: int = 0, fixed_mask: str | None = None, moving_mask: str | None = None,
                 scale_iterations: float = 1.0, device: str = "auto") -> dict[str, Path]:
    """Register ``moving`` to ``fixed`` with FireANTs and write ``inrreg register``'s outputs.

    Arguments as :func:`inrreg_pipeline.baselines.ants.run_ants` (``threads`` ``None`` = 1: torch's
    CPU threads), plus ``device`` (``auto``: CUDA when present). 3-D pairs only. Returns the output
    paths by key; raises :class:`InputError` for bad input (nothing written) and ``RuntimeError`` when
    FireANTs is missing or fails (nothing written either).
    """
    start = time.perf_counter()
    n_threads, scale, fixed_img, moving_img, f_mask, m_mask = checked_baseline_inputs(
        "FireANTs", FIREANTS_PRESETS, preset, fixed, moving, prefix, threads, seed, scale_iterations, fixed_mask,
        moving_mask, SEED_MAX)
    if fixed_img.ndim != 3:
        raise InputError(f"the FireANTs presets register 3-D images; these are {fixed_img.ndim}-D "
                         "(use greedy or an ANTs preset for 2-D)")
    try:
        dev = resolve_device(device)
    except ValueError as err:
        raise InputError(str(err)) from None
    fa = _fireants()
    p = FIREANTS_PRESETS[preset]
    a, w = p["affine"], p["deformable"]

    with StagedOutputs(prefix) as stage, tempfile.TemporaryDirectory(prefix=staging_prefix("fireants"),
                                                                     dir=stage.directory) as tmp, \
            _torch_threads(n_threads):
        work = Path(tmp)
        names = write_inputs(work, fixed_img, moving_img, f_mask, m_mask, ".nii.gz")
        torch.manual_seed(int(seed))
        t0 = time.perf_counter()
        try:
            f_batch = _load(fa, names["fixed"], names.get("fixed_mask"), dev)
            m_batch = _load(fa, names["moving"], names.get("moving_mask"), dev)
            moments = fa["moments"](p["moments"]["scale"], f_batch, m_batch, moments=p["moments"]["moments"],
                                    progress_bar=False)
            moments.optimize()
            affine_reg = fa["affine"](a["scales"], scaled_iterations(a["iterations"], scale), f_batch, m_batch,
                                      loss_type=a["loss"], optimizer=a["optimizer"], optimizer_lr=a["lr"],
                                      cc_kernel_size=a["cc_kernel_size"], init_rigid=moments.get_affine_init(),
                                      progress_bar=False)
            affine_reg.optimize()
            affine_lps = affine_reg.get_affine_matrix().detach()
            deformable = fa[w["registration"]](
                w["scales"], scaled_iterations(w["iterations"], scale), f_batch, m_batch, loss_type=w["loss"],
                deformation_type=w["deformation_type"], optimizer=w["optimizer"], optimizer_lr=w["lr"],
                cc_kernel_size=w["cc_kernel_size"], smooth_grad_sigma=w["smooth_grad_sigma"],
                smooth_warp_sigma=w["smooth_warp_sigma"], init_affine=affine_lps, progress_bar=False)
            deformable.optimize()
            # SyN's map composes one half with the inverse of the other, which FireANTs optimises with
            # progress bars of its own (on stderr, whatever progress_bar says): kept out of the terminal
            with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
                mapped = fireants_map_to_ras(deformable.get_warped_coordinates(f_batch, m_batch),
                                             m_batch.get_torch2phy())
                warped = deformable.evaluate(f_batch, m_batch)[0, 0].cpu().numpy().transpose(2, 1, 0)
        except (RuntimeError, ValueError, TypeError, AssertionError) as err:
            raise RuntimeError(f"FireANTs failed: {' '.join(str(err).split())}") from None
        reg_seconds = time.perf_counter() - t0

        t0 = time.perf_counter()
        affine = _affine_ras(affine_lps)
        files = _write_tool_files(work, fixed_img, moving_img, affine, mapped, warped, dev)
        s = OUTPUT_SUFFIXES
        write_itk_affine(stage.path(s["affine"]), affine)
        jacobian = write_baseline_outputs(stage, fixed_img, f_mask, files["warp"], files["inverse_warp"],
                                          files["warped"], files["inverse_warped"], affine)
        output_seconds = time.perf_counter() - t0

        metadata = {
            "inputs": recorded_inputs(fixed, moving, fixed_mask, moving_mask),
            "method": "fireants",
            "preset": preset,
            "parameters": copy.deepcopy(p),
            "scale_iterations": scale,
            "iterations_used": {"affine": scaled_iterations(a["iterations"], scale),
                                "deformable": scaled_iterations(w["iterations"], scale)},
            "seed": int(seed),
            "versions": {**library_versions(), "fireants": importlib.metadata.version("fireants")},
            "memory": {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                       "peak_gpu_mb": (torch.cuda.max_memory_allocated(dev) / 2 ** 20 if dev.type == "cuda"
                                       else None),
                       "measured": "peak_rss_mb: this process (getrusage), FireANTs running in it"},
            **baseline_metadata(stage, affine, jacobian, n_threads, {
                "registration": reg_seconds, "outputs": output_seconds, "total": time.perf_counter() - start}, 3),
            "device": dev.type,
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        }
        stage.path(s["metadata"]).write_text(json.dumps(metadata, indent=2))
    return {key: stage.final(suffix) for key, suffix in OUTPUT_SUFFIXES.items()}


def _write_tool_files(work: Path, fixed: SpatialImage, moving: SpatialImage, affine: np.ndarray,
                      mapped: np.ndarray, warped: np.ndarray, device: torch.device) -> dict[str, Path]:
    """The files :func:`write_baseline_outputs` takes, from FireANTs' map ``mapped`` (RAS mm moving points
    at every fixed voxel) and its resampled moving image: the warp ``A^-1 y(x) - x``, its fixed-point
    inverse, ``Warped`` and ``InverseWarped`` (the fixed image through ``A^-1`` then the inverse warp)."""
    to_fixed = AffineTransform(affine).inverse()
    field = (to_fixed.map(mapped) - fixed.world_grid()).astype(np.float32)
    inverse_field = invert_displacement(field, fixed.affine, device)
    z = to_fixed.map(moving.world_grid())
    back = z + sample_array(inverse_field, fixed.affine, z, device, vector=True)
    inverse_warped = sample_array(fixed.data, fixed.affine, back, device)
    files = {"warp": work / "fireants_warp.nii.gz", "inverse_warp": work / "fireants_inverse_warp.nii.gz",
             "warped": work / "fireants_warped.nii.gz", "inverse_warped": work / "fireants_inverse_warped.nii.gz"}
    write_ants_displacement_field(files["warp"], field, fixed.affine)
    write_ants_displacement_field(files["inverse_warp"], inverse_field, fixed.affine)
    save_image(warped, fixed.affine, files["warped"])
    save_image(inverse_warped.reshape(moving.shape), moving.affine, files["inverse_warped"])
    return files
