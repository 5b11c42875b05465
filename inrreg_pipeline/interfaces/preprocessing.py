"""Preprocessing interfaces: reorientation, N4, masking, intensity normalisation, resampling.

Each one reads NIfTI files and writes one NIfTI into its node directory; the world geometry
(voxel -> RAS mm) of the data is kept, so transforms estimated on the outputs apply to the inputs.
"""
from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from nibabel import orientations as ornt
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)
from scipy import ndimage
from scipy.ndimage import gaussian_filter

from ..core.space import foreground_mask, rescale_intensity, sample_array, sample_labels, voxel_grid_to_world
from ..io.images import InputError, load_image, save_image
from .base import derived_name, fail, optional, output_path

_AXES = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}


def _load_nifti(path: str, name: str):
    try:
        img = nib.load(os.fspath(path))
        img.get_fdata(dtype=np.float32)  # read now: a truncated file fails here, naming the input
    except Exception as err:  # nibabel raises many types for non-images and truncated files
        raise fail(name, f"'{path}' is not a readable NIfTI image ({type(err).__name__})") from None
    if len(img.shape) < 2 or len(img.shape) > 4 or (len(img.shape) == 4 and img.shape[3] != 1):
        raise fail(name, f"'{path}' has shape {img.shape}; a single 2-D or 3-D image is needed")
    return img


def _load(path: str, name: str, ndim: int | None = None):
    """A :class:`SpatialImage` (2-D or 3-D, float32); one-line errors naming ``name``."""
    try:
        return load_image(path, name, ndim=ndim)
    except InputError as err:
        raise fail(name, str(err)) from None


def _same_grid(a, b) -> bool:
    return a.shape == b.shape and np.allclose(a.affine, b.affine, atol=1e-3)


def _save_like(data: np.ndarray, header_img, path: str, dtype=np.float32) -> None:
    """Write ``data`` with the header (qform, sform, codes) of ``header_img``."""
    data = np.asarray(data, dtype=dtype).reshape(header_img.shape[:3] if len(header_img.shape) >= 3
                                                 else header_img.shape)
    out = nib.Nifti1Image(data, header_img.affine, header_img.header)
    out.set_data_dtype(dtype)
    out.header.set_slope_inter(1.0, 0.0)
    nib.save(out, path)


# --------------------------------------------------------------------------------------------
class ReorientInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="NIfTI image (or label map, or mask)")
    orientation = traits.Str("RAS", usedefault=True, desc="target axis codes, e.g. RAS (canonical) or LPS")


class ReorientOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the same image with its axes permuted/flipped to `orientation`")
    in_orientation = traits.Str(desc="axis codes of the input (closest to its affine)")


class Reorient(SimpleInterface):
    """Permute/flip voxel axes to a canonical orientation; the world geometry is unchanged.

    Only the storage order changes (as ``nibabel.as_closest_canonical``): every voxel keeps its
    world position, so images, masks and label maps can be reoriented separately.
    """

    input_spec = ReorientInputSpec
    output_spec = ReorientOutputSpec

    def _run_interface(self, runtime):
        codes = self.inputs.orientation.strip().upper()
        if len(codes) != 3 or any(c not in _AXES for c in codes) or len({_AXES[c] for c in codes}) != 3:
            raise fail("orientation", f"'{self.inputs.orientation}' is not 3 axis codes with one of L/R, A/P, "
                                      "S/I each (e.g. RAS, LPS)")

        img = _load_nifti(self.inputs.in_file, "in_file")
        if len(img.shape) == 2:  # a 2-D NIfTI: one slice along the third axis
            img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., None], img.affine, img.header)
        current = ornt.io_orientation(img.affine)
        transform = ornt.ornt_transform(current, ornt.axcodes2ornt(tuple(codes)))
        if img.shape[2] == 1 and transform[2, 0] != 2:
            # 2-D: moving the slice axis would make a 3-D-looking image; flip in-plane axes only
            transform = np.array([[0, transform[0, 1] if transform[0, 0] == 0 else 1],
                                  [1, transform[1, 1] if transform[1, 0] == 1 else 1], [2, 1]], dtype=float)
        out_img = img.as_reoriented(transform)
        out = output_path(runtime.cwd, derived_name(self.inputs.in_file, "_reorient", ".nii.gz"))
        nib.save(out_img, out)
        self._results["out_file"] = out
        self._results["in_orientation"] = "".join(ornt.aff2axcodes(img.affine))
        return runtime


# --------------------------------------------------------------------------------------------
class N4InputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="intensity image")
    mask_file = File(exists=True, desc="region where the bias field is fitted (default: voxels > 0)")
    backend = traits.Enum("auto", "antspyx", "simpleitk", usedefault=True,
                          desc="N4 implementation: antspyx when importable ('auto'), else SimpleITK")
    shrink_factor = traits.Int(4, usedefault=True, desc="fit on a grid shrunk by this factor")
    n_iterations = traits.List(traits.Int, [50, 50, 50, 50], usedefault=True,
                               desc="iterations per fitting level")
    convergence_threshold = traits.Float(1e-7, usedefault=True, desc="convergence tolerance")
    bspline_fitting_distance = traits.Float(200.0, usedefault=True, desc="B-spline knot spacing (mm)")
    num_threads = traits.Int(1, usedefault=True, desc="ITK threads (also the node's n_procs)")


class N4OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="bias-corrected image (input header kept)")
    bias_image = File(exists=True, desc="estimated bias field (input / output)")
    backend = traits.Str(desc="implementation that ran")


class N4BiasFieldCorrection(SimpleInterface):
    """N4 bias-field correction (Tustison et al. 2010) through antspyx or SimpleITK."""

    input_spec = N4InputSpec
    output_spec = N4OutputSpec

    def _run_interface(self, runtime):
        img = _load_nifti(self.inputs.in_file, "in_file")
        data = np.squeeze(np.asarray(img.get_fdata(dtype=np.float32)))
        if data.ndim not in (2, 3):
            raise fail("in_file", f"'{self.inputs.in_file}' is {data.ndim}-D; N4 needs a 2-D or 3-D image")
        if not np.isfinite(data).all():
            raise fail("in_file", f"'{self.inputs.in_file}' contains NaN or infinite voxels")
        if self.inputs.shrink_factor < 1:
            raise fail("shrink_factor", f"must be >= 1, got {self.inputs.shrink_factor}")
        if not self.inputs.n_iterations or min(self.inputs.n_iterations) < 1:
            raise fail("n_iterations", f"needs one or more positive counts, got {self.inputs.n_iterations}")
        if optional(self.inputs.mask_file):
            mask_img = _load_nifti(self.inputs.mask_file, "mask_file")
            mask = np.squeeze(np.asarray(mask_img.get_fdata(dtype=np.float32))) > 0
            if mask.shape != data.shape or not np.allclose(mask_img.affine, img.affine, atol=1e-3):
                raise fail("mask_file", f"'{self.inputs.mask_file}' is not on the grid of in_file")
        else:
            mask = data > 0
        if not mask.any():
            raise fail("mask_file" if optional(self.inputs.mask_file) else "in_file",
                       "no voxel to fit the bias field on (empty mask / no voxel above 0)")
        positive = data[mask & (data > 0)]
        if positive.size == 0:
            raise fail("in_file", "no positive intensity inside the mask")
        # N4 works on log intensities: voxels <= 0 inside the mask are lifted to a small value
        floor = float(np.percentile(positive, 0.1)) * 0.5
        work = np.where(mask, np.maximum(data, floor), data).astype(np.float32)
        spacing = [float(s) for s in np.linalg.norm(img.affine[:3, :3], axis=0)[: data.ndim]]

        backend = self.inputs.backend
        if backend == "auto":
            try:
                import ants  # noqa: F401
                backend = "antspyx"
            except ImportError:
                backend = "simpleitk"
        if backend == "antspyx":
            bias = self._ants(work, mask, spacing)
        else:
            bias = self._sitk(work, mask, spacing)
        bias = np.where(np.isfinite(bias) & (bias > 0), bias, 1.0).astype(np.float32)
        corrected = data / bias
        out = output_path(runtime.cwd, derived_name(self.inputs.in_file, "_n4", ".nii.gz"))
        bias_out = output_path(runtime.cwd, derived_name(self.inputs.in_file, "_n4bias", ".nii.gz"))
        _save_like(corrected, img, out)
        _save_like(bias, img, bias_out)
        self._results.update(out_file=out, bias_image=bias_out, backend=backend)
        return runtime

    def _ants(self, data, mask, spacing):
        try:
            import ants
        except ImportError:
            raise fail("backend", "antspyx is not installed (pip install antspyx, or backend='simpleitk')") from None
        previous = os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(max(1, self.inputs.num_threads))
        try:
            image = ants.from_numpy(np.ascontiguousarray(data, dtype=np.float32), spacing=tuple(spacing))
            mask_img = ants.from_numpy(np.ascontiguousarray(mask, dtype=np.float32), spacing=tuple(spacing))
            bias = ants.n4_bias_field_correction(
                image, mask=mask_img, shrink_factor=self.inputs.shrink_factor,
                convergence={"iters": list(self.inputs.n_iterations), "tol": self.inputs.convergence_threshold},
                spline_param=float(self.inputs.bspline_fitting_distance), return_bias_field=True)
        finally:
            if previous is None:
                os.environ.pop("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", None)
            else:
                os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = previous
        return bias.numpy()

    def _sitk(self, data, mask, spacing):
        order = tuple(range(data.ndim - 1, -1, -1))  # numpy (i, j, k) <-> SimpleITK (z, y, x)
        image = sitk.GetImageFromArray(np.transpose(data, order).astype(np.float32))
        image.SetSpacing(spacing)
        mask_img = sitk.GetImageFromArray(np.transpose(mask, order).astype(np.uint8))
        mask_img.CopyInformation(image)
        shrink = [self.inputs.shrink_factor] * data.ndim
        small = sitk.Shrink(image, shrink)
        small_mask = sitk.Shrink(mask_img, shrink)
        n4 = sitk.N4BiasFieldCorrectionImageFilter()
        n4.SetMaximumNumberOfIterations(list(self.inputs.n_iterations))
        n4.SetConvergenceThreshold(self.inputs.convergence_threshold)
        extent = np.array(image.GetSize()) * np.array(spacing)
        n4.SetNumberOfControlPoints([max(4, int(round(e / self.inputs.bspline_fitting_distance)) + 3)
                                     for e in extent])
        n4.SetNumberOfThreads(max(1, self.inputs.num_threads))
        n4.Execute(small, small_mask)
        log_bias = n4.GetLogBiasFieldAsImage(image)
        return np.transpose(np.exp(sitk.GetArrayFromImage(log_bias)), order)


# --------------------------------------------------------------------------------------------
class ApplyMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image")
    in_mask = File(exists=True, mandatory=True, desc="mask on the image's grid (voxels > threshold kept)")
    threshold = traits.Float(0.5, usedefault=True, desc="mask voxels above this value are inside")


class ApplyMaskOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="image with 0 outside the mask")


class ApplyMask(SimpleInterface):
    """Zero the image outside a (brain) mask on the same grid."""

    input_spec = ApplyMaskInputSpec
    output_spec = ApplyMaskOutputSpec

    def _run_interface(self, runtime):
        img = _load(self.inputs.in_file, "in_file")
        mask = _load(self.inputs.in_mask, "in_mask")
        if not _same_grid(img, mask):
            raise fail("in_mask", f"'{self.inputs.in_mask}' is not on the grid of in_file "
                                  f"(shape {mask.shape} vs {img.shape}); resample it first")
        inside = mask.data > self.inputs.threshold
        if not inside.any():
            raise fail("in_mask", f"'{self.inputs.in_mask}' is empty (no voxel above {self.inputs.threshold:g})")
        out = output_path(runtime.cwd, derived_name(self.inputs.in_file, "_masked", ".nii.gz"))
        save_image(np.where(inside, img.data, 0.0), img.affine, out)
        self._results["out_file"] = out
        return runtime


# --------------------------------------------------------------------------------------------
class ForegroundMaskInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="intensity image")
    fraction = traits.Range(low=0.0, high=1.0, value=0.1, usedefault=True,
                            desc="voxels above this fraction of the 99th percentile are foreground")


class ForegroundMaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="binary mask (uint8): largest connected foreground, holes filled")


class ForegroundMask(SimpleInterface):
    """A head/brain foreground mask by thresholding (for evaluation regions and reports)."""

    input_spec = ForegroundMaskInputSpec
    output_spec = ForegroundMaskOutputSpec

    def _run_interface(self, runtime):
        img = _load(self.inputs.in_file, "in_file")
        mask = foreground_mask(img.data, self.inputs.fraction)
        labels, n = ndimage.label(mask)
        if n > 1:
            sizes = ndimage.sum(mask, labels, index=range(1, n + 1))
            mask = labels == (int(np.argmax(sizes)) + 1)
        mask = ndimage.binary_fill_holes(mask)
        out = output_path(runtime.cwd, derived_name(self.inputs.in_file, "_mask", ".nii.gz"))
        save_image(mask.astype(np.uint8), img.affine, out, dtype=np.uint8)
        self._results["out_mask"] = out
        return runtime


# --------------------------------------------------------------------------------------------
class NormalizeIntensityInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="intensity image")
    in_mask = File(exists=True, desc="percentiles taken inside this mask (default: non-zero voxels)")
    lower_percentile = traits.Range(low=0.0, high=100.0, value=0.5, usedefault=True, desc="clip below")
    upper_percentile = traits.Range(low=0.0, high=100.0, value=99.5, usedefault=True, desc="clip above")


class NormalizeIntensityOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="intensities clipped to the percentiles and rescaled to [0, 1]")


class NormalizeIntensity(SimpleInterface):
    """Percentile clipping and rescaling to [0, 1] (the core's ``rescale_intensity``)."""

    input_spec = NormalizeIntensityInputSpec
    output_spec = NormalizeIntensityOutputSpec

    def _run_interface(self, runtime):
        lo, hi = self.inputs.lower_percentile, self.inputs.upper_percentile
        if lo >= hi:
            raise fail("lower_percentile", f"{lo:g} must be below upper_percentile {hi:g}")
        img = _load(self.inputs.in_file, "in_file")
        mask = None
        if optional(self.inputs.in_mask):
            m = _load(self.inputs.in_mask, "in_mask")
            if not _same_grid(img, m):
                raise fail("in_mask", f"'{self.inputs.in_mask}' is not on the grid of in_file")
            mask = m.data > 0
            if not mask.any():
                raise fail("in_mask", f"'{self.inputs.in_mask}' is empty")
        out = output_path(runtime.cwd, derived_name(self.inputs.in_file, "_norm", ".nii.gz"))
        save_image(rescale_intensity(img.data, mask, lo, hi), img.affine, out)
        self._results["out_file"] = out
        return runtime


# --------------------------------------------------------------------------------------------
class ResampleInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="image, mask or label map")
    resolution = traits.List(traits.Float, minlen=1, maxlen=3, xor=["reference_image"],
                             desc="voxel size in mm (one value: isotropic); the field of view is kept")
    reference_image = File(exists=True, xor=["resolution"], desc="resample onto this image's grid instead")
    interpolation = traits.Enum("linear", "nearest", "label", usedefault=True,
                                desc="linear for intensities; label (label-aware) or nearest for masks/labels")
    antialias = traits.Bool(True, usedefault=True,
                            desc="Gaussian pre-smoothing when downsampling with linear interpolation")


class ResampleOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="resampled image")


def processing_grid(shape: tuple[int, ...], affine: np.ndarray, resolution: list[float]) -> tuple[tuple, np.ndarray]:
    """A grid of voxel size ``resolution`` covering the same field of view with the same axes.

    The outer voxel faces stay where they were (up to rounding to whole voxels), the axis
    directions are those of ``affine``.
    """
    d = len(shape)
    old = np.linalg.norm(affine[:d, :d], axis=0)
    new = np.asarray(resolution if len(resolution) == d else [resolution[0]] * d, dtype=float)
    new_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, old, new))
    scale = new / old  # voxel-index scaling
    index_map = np.eye(d + 1)
    index_map[:d, :d] = np.diag(scale)
    # keep the centre of the field of view: centre index (n-1)/2 maps to the same point
    centre_old = (np.asarray(shape) - 1) / 2.0
    centre_new = (np.asarray(new_shape) - 1) / 2.0
    index_map[:d, d] = centre_old - scale * centre_new
    return new_shape, affine @ index_map


class Resample(SimpleInterface):
    """Resample to a processing resolution (same field of view and axes) or onto a reference grid."""

    input_spec = ResampleInputSpec
    output_spec = ResampleOutputSpec

    def _run_interface(self, runtime):
        img = _load(self.inputs.in_file, "in_file")
        d = img.ndim
        if optional(self.inputs.reference_image):
            ref = _load(self.inputs.reference_image, "reference_image")
            if ref.ndim != d:
                raise fail("reference_image", f"is {ref.ndim}-D but in_file is {d}-D")
            shape, affine = ref.shape, ref.affine
        elif optional(self.inputs.resolution):
            res = [float(r) for r in self.inputs.resolution]
            if len(res) not in (1, d) or min(res) <= 0:
                raise fail("resolution", f"needs 1 or {d} positive values (mm), got {res}")
            shape, affine = processing_grid(img.shape, img.affine, res)
        else:
            raise fail("resolution", "give resolution (mm) or reference_image")
        data = img.data
        mode = self.inputs.interpolation
        if mode == "linear" and self.inputs.antialias:
            factor = np.linalg.norm(affine[:d, :d], axis=0) / img.spacing
            # voxel steps of the new grid along the input's axes (axes are shared for resolution=)
            sigma = [max(0.0, (f - 1.0) / 2.0) for f in factor]
            if any(s > 0 for s in sigma):
                data = gaussian_filter(data, sigma=sigma, mode="nearest")
        points = voxel_grid_to_world(tuple(shape), affine)
        cpu = torch.device("cpu")
        if mode == "linear":
            out, dtype = sample_array(data, img.affine, points, cpu), np.float32
        else:
            labels = np.rint(data).astype(np.int32)
            if mode == "nearest":
                out = np.rint(sample_array(labels.astype(np.float32), img.affine, points, cpu, mode="nearest"))
            else:
                out = sample_labels(labels, img.affine, points, cpu)
            dtype = np.int32
        out_path = output_path(runtime.cwd, derived_name(self.inputs.in_file, "_resampled", ".nii.gz"))
        save_image(out, affine, out_path, dtype=dtype)
        self._results["out_file"] = out_path
        return runtime
