"""Register two image files and write ANTs-compatible outputs under a prefix.

Outputs for prefix ``P`` (what ``antsRegistration --output P`` writes, plus inrreg's extras):

=========================  ===================================================================
``P0GenericAffine.mat``    ITK affine (LPS), fixed -> moving points
``P1Warp.nii.gz``          5-D vector NIfTI on the fixed grid, LPS mm (apply as ``[P1Warp, P0GenericAffine]``)
``P1InverseWarp.nii.gz``   its numerical inverse, same grid (apply as ``[[P0GenericAffine,1], P1InverseWarp]``)
``PComposite.h5``          ITK HDF5 composite of affine + warp; ``PInverseComposite.h5`` its inverse
``PWarped.nii.gz``         moving image on the fixed grid; ``PInverseWarped.nii.gz`` fixed on the moving grid
``Pjacobian.nii.gz``       ``det(I + du/dx)`` of the deformable part, fixed grid (finite differences of ``u``, mm)
``Pregistration.json``     settings, seed, device, versions, runtime, memory, losses, folding, affine
=========================  ===================================================================

The ``fusion`` variant adds ``Pfusion_weights.nii.gz`` (its weights ``(s_M, s_L, s_G)`` on the
moving grid as an RGB24 NIfTI: red = moving image, green = Laplacian, blue = Gaussian) and
``Pfusion_weights.png`` (three orthogonal mid slices; 2-D: the image). The ``cycle`` variant's
``1InverseWarp`` is its backward network, not the numerical inverse.

All outputs appear together or not at all (:class:`~inrreg_pipeline.io.images.StagedOutputs`).
"""
from __future__ import annotations

import json
import platform
import struct
import sys
import zlib
from pathlib import Path
from typing import Any, Callable

import nibabel as nib
import numpy as np
import SimpleITK
import torch
from tqdm import tqdm

from . import __version__
from .core.choices import SEED_MAX
from .core.config import RegistrationSettings
from .core.quality import NoOverlapError
from .core.registration import RegistrationResult, register
from .core.space import resolve_device
from .io.images import (InputError, StagedOutputs, check_outputs_not_inputs, expand_affine, load_pair, save_image,
                        save_nifti)
from .io.itk import (write_ants_displacement_field, write_itk_affine, write_itk_composite_h5,
                     write_itk_inverse_composite_h5)
from .presets import PresetError, resolve

OUTPUT_SUFFIXES = {
    "affine": "0GenericAffine.mat",
    "warp": "1Warp.nii.gz",
    "inverse_warp": "1InverseWarp.nii.gz",
    "composite": "Composite.h5",
    "inverse_composite": "InverseComposite.h5",
    "warped": "Warped.nii.gz",
    "inverse_warped": "InverseWarped.nii.gz",
    "jacobian": "jacobian.nii.gz",
    "metadata": "registration.json",
}
#: Outputs of some variants only (written when the result has them).
VARIANT_SUFFIXES = {
    "fusion_weights": "fusion_weights.nii.gz",
    "fusion_weights_png": "fusion_weights.png",
}


def check_prefix_outputs(prefix: str, fixed: str, moving: str, fixed_mask: str | None = None,
                         moving_mask: str | None = None, preset: object = None) -> None:
    """:class:`InputError` when any output of ``prefix`` (standard or variant) is one of the inputs,
    e.g. ``register F out/p_Warped.nii.gz -o out/p_`` would replace the moving image."""
    outputs = [f"{prefix}{suffix}" for suffix in {**OUTPUT_SUFFIXES, **VARIANT_SUFFIXES}.values()]
    preset_file = preset if isinstance(preset, (str, Path)) and Path(preset).is_file() else None
    check_outputs_not_inputs(outputs, {"fixed image": fixed, "moving image": moving, "fixed mask": fixed_mask,
                                       "moving mask": moving_mask, "preset file": preset_file})


def recorded_inputs(fixed: str, moving: str, fixed_mask: str | None = None, moving_mask: str | None = None
                    ) -> dict[str, str | None]:
    """The ``inputs`` entry of ``Pregistration.json``: absolute paths of the images and masks given."""
    def absolute(path: str | None) -> str | None:
        return str(Path(path).resolve()) if path else None

    return {"fixed": absolute(fixed), "moving": absolute(moving), "fixed_mask": absolute(fixed_mask),
            "moving_mask": absolute(moving_mask)}


def library_versions() -> dict[str, str]:
    """Versions of inrreg and the libraries a result depends on (the metadata's ``versions``)."""
    return {"inrreg": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "nibabel": nib.__version__, "SimpleITK": SimpleITK.Version_VersionString()}


class ProgressBars:
    """tqdm bars (loss and time left) for each stage; silent when stderr is not a terminal."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bars: list[Any] = []

    def __call__(self, stage: str, total: int):
        if not self.enabled:
            return None
        bar = tqdm(total=total, desc=f"{stage:>10}", unit="it", leave=True, dynamic_ncols=True)
        self.bars.append(bar)

        smoothed: list[float] = []

        def update(steps: int, loss: float) -> None:
            # per-batch losses are noisy (random patches): show an exponential moving average
            smoothed.append(loss if not smoothed else 0.9 * smoothed[-1] + 0.1 * loss)
            bar.update(steps)
            if bar.n % 10 == 0 or bar.n == bar.total:
                bar.set_postfix(loss=f"{smoothed[-1]:.4f}")
            if bar.n >= bar.total:
                bar.close()

        return update

    def close(self) -> None:
        for bar in self.bars:
            bar.close()


def register_files(fixed: str, moving: str, prefix: str, preset: str | RegistrationSettings | None = None,
                   device: str = "auto", seed: int = 0, fixed_mask: str | None = None,
                   moving_mask: str | None = None, use_affine: bool = True, threads: int | None = None,
                   progress: bool | None = None, method: str | None = None, motion: str | None = None,
                   omega: str | None = None, activation: str | None = None) -> dict[str, Path]:
    """Register ``moving`` to ``fixed`` and write the outputs listed in the module docstring.

    ``preset`` (a shipped name, a JSON file or settings; ``None``: the method's own preset) and the
    overrides ``method`` (``siren``, ``two-network``, ``svf`` or an INR variant), ``motion``
    (two-network: ``rigid``, ``deformable``, ``affine-param``), ``omega`` (``fixed``,
    ``trainable``, ``width``, ``attention``) and ``activation`` are resolved by
    :func:`inrreg_pipeline.presets.resolve` (its rules; a bad one is an :class:`InputError` whose
    message starts with the option, ``--omega ...``).

    Returns the output paths by key (see :data:`OUTPUT_SUFFIXES`). Raises :class:`InputError` for
    bad inputs, images that cannot overlap in world space included (nothing is written then). The
    result's quality warnings (:mod:`inrreg_pipeline.core.quality`: too little overlap, no better
    than the start) go to stderr, one line each, and into ``registration.json``'s ``quality``.
    """
    check_prefix_outputs(prefix, fixed, moving, fixed_mask, moving_mask, preset)
    try:
        settings = resolve(preset, method, motion, omega, activation)
    except PresetError as err:
        raise InputError(err.for_cli()) from None
    try:
        dev = resolve_device(device)
    except ValueError as err:
        raise InputError(str(err)) from None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= SEED_MAX:
        raise InputError(f"seed must be an integer in [0, {SEED_MAX}], got {seed!r}")
    if threads is not None:
        if int(threads) < 1:
            raise InputError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    fixed_img, moving_img, f_mask, m_mask = load_pair(fixed, moving, fixed_mask, moving_mask)

    with StagedOutputs(prefix) as stage:  # fails early when the output folder is not writable
        bars = ProgressBars(progress)
        try:
            result = register(fixed_img, moving_img, settings, dev, seed=seed, fixed_mask=f_mask,
                              moving_mask=m_mask, use_affine=use_affine, progress=bars)
        except NoOverlapError as err:
            raise InputError(str(err)) from None
        finally:
            bars.close()
        for warning in result.summary.get("quality", {}).get("warnings", []):
            print(f"inrreg: warning: {warning}", file=sys.stderr)
        write_outputs(stage, result, fixed_img, moving_img)
        metadata = {
            "inputs": recorded_inputs(fixed, moving, fixed_mask, moving_mask),
            "method": settings.method,
            "preset": settings.name,
            "settings": settings.to_dict(),
            "seed": seed,
            "use_affine": use_affine,
            "device": str(dev),
            "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
            "threads": torch.get_num_threads(),
            "versions": library_versions(),
            "transform_convention": "ANTs: apply [1Warp, 0GenericAffine] to map fixed points to moving points",
            "outputs": {key: stage.final(suffix).name for key, suffix in _suffixes(result).items()},
            **result.summary,
        }
        stage.path(OUTPUT_SUFFIXES["metadata"]).write_text(json.dumps(metadata, indent=2))
    return {key: stage.final(suffix) for key, suffix in _suffixes(result).items()}


def _suffixes(result: RegistrationResult) -> dict[str, str]:
    """The output suffixes of ``result``: the standard ones plus its variant's."""
    extra = {}
    if "fusion_weights" in result.extras:
        extra = {k: VARIANT_SUFFIXES[k] for k in ("fusion_weights", "fusion_weights_png")}
    return {**OUTPUT_SUFFIXES, **extra}


def write_transforms(path: Callable[[str], str], affine: np.ndarray, displacement: np.ndarray,
                     inverse_displacement: np.ndarray, fixed_affine: np.ndarray) -> None:
    """The five ANTs/ITK transform files of ``phi(x) = A(x + u(x))`` (RAS mm, fixed -> moving):
    ``path(key)`` is the file of each key ``affine``, ``warp``, ``inverse_warp``, ``composite``,
    ``inverse_composite`` (those of :data:`OUTPUT_SUFFIXES`); ``displacement`` / ``inverse_displacement``
    are ``u`` / ``v`` on the fixed grid whose voxel -> RAS map is ``fixed_affine``."""
    write_itk_affine(path("affine"), affine)
    write_ants_displacement_field(path("warp"), displacement, fixed_affine)
    write_ants_displacement_field(path("inverse_warp"), inverse_displacement, fixed_affine)
    write_itk_composite_h5(path("composite"), affine, displacement, fixed_affine)
    write_itk_inverse_composite_h5(path("inverse_composite"), affine, inverse_displacement, fixed_affine)


def write_outputs(stage: StagedOutputs, result: RegistrationResult, fixed, moving) -> None:
    """Write transforms and images of ``result`` into ``stage``."""
    s = OUTPUT_SUFFIXES
    write_transforms(lambda key: stage.path(s[key]), result.affine, result.displacement,
                     result.inverse_displacement, fixed.affine)
    save_image(result.warped, fixed.affine, stage.path(s["warped"]))
    save_image(result.inverse_warped, moving.affine, stage.path(s["inverse_warped"]))
    save_image(result.jacobian, fixed.affine, stage.path(s["jacobian"]))
    if "fusion_weights" in result.extras:
        write_fusion_weights(stage, result.extras["fusion_weights"], moving.affine)


def fusion_rgb(weights: np.ndarray) -> np.ndarray:
    """``(*shape, 3)`` weights in [0, 1] -> ``(*shape, 3)`` uint8 (red s_M, green s_L, blue s_G)."""
    return np.clip(np.rint(np.asarray(weights) * 255.0), 0, 255).astype(np.uint8)


def write_fusion_weights(stage: StagedOutputs, weights: np.ndarray, affine: np.ndarray) -> None:
    """The fusion variant's weight map as an RGB24 NIfTI (on the moving grid) and a PNG figure."""
    rgb = fusion_rgb(weights)
    structured = rgb.copy().view(np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])).reshape(rgb.shape[:-1])
    img = nib.Nifti1Image(structured, expand_affine(np.asarray(affine, dtype=np.float64)))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    save_nifti(img, stage.path(VARIANT_SUFFIXES["fusion_weights"]))
    write_png(stage.path(VARIANT_SUFFIXES["fusion_weights_png"]), _montage(rgb))


def _montage(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8: a 2-D map as is, a 3-D map as its three mid slices side by side
    (each rotated so the second array axis points up), on a black background."""
    if rgb.ndim == 3:
        return np.rot90(rgb)
    slices = [np.rot90(np.take(rgb, rgb.shape[axis] // 2, axis=axis)) for axis in range(3)]
    height = max(s.shape[0] for s in slices)
    padded = [np.pad(s, ((height - s.shape[0], 0), (0, 2), (0, 0))) for s in slices]
    return np.concatenate(padded, axis=1)


def write_png(path, rgb: np.ndarray) -> None:
    """A ``(H, W, 3)`` uint8 image as an 8-bit RGB PNG (zlib only, no imaging library needed)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    h, w = rgb.shape[:2]
    raw = b"".join(b"\x00" + rgb[row].tobytes() for row in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
           + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))
    with open(path, "wb") as fh:
        fh.write(png)
