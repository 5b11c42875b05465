"""Physical space: images as voxels + affine, world <-> voxel maps, and sampling at world points.

Conventions used throughout :mod:`inrreg_pipeline.core`:

* World space is RAS+ millimetres (NIfTI/nibabel convention). ITK's LPS appears only in
  :mod:`inrreg_pipeline.io`.
* An image of dimension ``d`` (2 or 3) is an array of shape ``(n_0, ..., n_{d-1})`` and a
  ``(d+1) x (d+1)`` affine mapping voxel indices ``(i, j[, k])`` to world millimetres. Voxel
  centres sit at integer indices.
* Transforms are *pull-back* point maps: they take a point of the fixed (reference) space to the
  point of the moving space whose intensity is sampled there, ``phi(x) = x + u(x)``.
* Values outside an image's field of view are 0 (as in ANTs' default resampling).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as nnf
from scipy.ndimage import distance_transform_edt, gaussian_filter

# the torch-free part of physical space (images, grids, affine maps), re-exported here
from .geometry import SpatialImage, affine_problem, apply_affine, voxel_grid_to_world, world_bounding_box

__all__ = ["SpatialImage", "affine_problem", "apply_affine", "voxel_grid_to_world", "world_bounding_box", "DeviceImage", "downsample",
           "smooth", "sample_array", "sample_labels", "rescale_intensity", "foreground_mask", "resolve_device",
           "world_to_grid_map"]


def downsample(image: SpatialImage, factor: int) -> SpatialImage:
    """Gaussian-smooth (sigma = factor/2 voxels) and keep every ``factor``-th voxel.

    The returned affine keeps voxel ``i`` of the result at the world position of voxel
    ``factor * i`` of the input, so the physical geometry is unchanged.
    """
    if factor <= 1:
        return image
    smoothed = gaussian_filter(image.data.astype(np.float32), sigma=factor / 2.0, mode="constant")
    sl = tuple(slice(0, None, factor) for _ in range(image.ndim))
    scale = np.diag([float(factor)] * image.ndim + [1.0])
    return SpatialImage(smoothed[sl], image.affine @ scale)


def shrink_factor(image: SpatialImage, spacing_mm: float) -> int:
    """The integer factor that brings ``image``'s finest voxel axis closest to ``spacing_mm`` (at
    least 1): 4 mm on 1 mm voxels is 4, 2 mm on 0.9 mm voxels 2, 2 mm on 2.5 mm voxels 1."""
    return max(1, int(round(spacing_mm / float(np.min(image.spacing)))))


def smooth(image: SpatialImage, sigma_mm: float) -> SpatialImage:
    """Gaussian smoothing with ``sigma_mm`` millimetres along every world axis direction of the
    grid (converted per voxel axis with the voxel spacing, so anisotropic grids smooth the same
    physical width); ``sigma_mm <= 0`` returns the image unchanged."""
    if sigma_mm <= 0:
        return image
    sigma_vox = sigma_mm / image.spacing
    return image.with_data(gaussian_filter(image.data.astype(np.float32), sigma=sigma_vox, mode="nearest"))


def world_to_grid_map(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(linear, offset)`` with ``points @ linear + offset`` the ``grid_sample`` coordinates
    (``align_corners=True``, last array axis first) of world points (mm) on the grid ``(shape, affine)``."""
    d = len(shape)
    world_to_voxel = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    # Fold voxel -> [-1, 1] normalisation (align_corners=True) into one affine map.
    sizes = np.array(shape, dtype=np.float64)
    norm = np.diag(list(2.0 / np.maximum(sizes - 1.0, 1.0)) + [1.0])
    norm[:d, d] = -1.0
    world_to_grid = norm @ world_to_voxel
    # grid_sample wants the last array axis first (x = W).
    world_to_grid = world_to_grid[list(range(d))[::-1] + [d]]
    return world_to_grid[:d, :d].T.copy(), world_to_grid[:d, d].copy()


class DeviceImage:
    """An image (or vector field) held on a torch device, sampled at world points with
    (multi)linear interpolation.

    Sampling is differentiable with respect to the points, which is how the registration
    gradients reach the transform. ``data`` has shape ``(*shape)`` for a scalar image or
    ``(*shape, C)`` with ``vector=True``.
    """

    def __init__(self, data: np.ndarray, affine: np.ndarray, device: torch.device,
                 dtype: torch.dtype = torch.float32, vector: bool = False):
        data = np.asarray(data)
        self.vector = vector
        self.ndim = data.ndim - 1 if vector else data.ndim
        self.shape = tuple(data.shape[: self.ndim])
        self.affine = np.asarray(affine, dtype=np.float64)
        self.device = device
        vol = torch.as_tensor(np.ascontiguousarray(data), dtype=dtype, device=device)
        self.volume = vol.movedim(-1, 0)[None] if vector else vol[None, None]
        linear, offset = world_to_grid_map(self.shape, self.affine)
        self._linear = torch.as_tensor(linear, dtype=dtype, device=device)
        self._offset = torch.as_tensor(offset, dtype=dtype, device=device)

    @classmethod
    def from_image(cls, image: SpatialImage, device: torch.device, dtype: torch.dtype = torch.float32
                   ) -> "DeviceImage":
        return cls(image.data, image.affine, device, dtype)

    def sample(self, points: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Values at world points ``(..., d)`` (mm): shape ``(...)`` (or ``(..., C)``); 0 outside."""
        lead = points.shape[:-1]
        grid = points.reshape(-1, self.ndim).to(self._linear.dtype) @ self._linear + self._offset
        grid = grid.reshape((1, -1) + (1,) * (self.ndim - 1) + (self.ndim,))
        out = nnf.grid_sample(self.volume, grid, mode=mode, padding_mode="zeros", align_corners=True)
        if self.vector:
            return out.reshape(self.volume.shape[1], -1).T.reshape(lead + (self.volume.shape[1],))
        return out.reshape(lead)


def sample_array(data: np.ndarray, affine: np.ndarray, points: np.ndarray, device: torch.device,
                 vector: bool = False, mode: str = "bilinear", chunk: int = 262144) -> np.ndarray:
    """Interpolate an image ``(*shape)`` or vector field ``(*shape, C)`` (``vector=True``) at world
    points ``(..., d)`` (mm), in chunks; ``mode`` is ``bilinear`` (multilinear) or ``nearest``;
    0 outside the grid."""
    dev = DeviceImage(data, affine, device, vector=vector)
    flat = points.reshape(-1, points.shape[-1])
    out = []
    with torch.no_grad():
        for s in range(0, len(flat), chunk):
            block = torch.as_tensor(flat[s:s + chunk], dtype=torch.float32, device=device)
            out.append(dev.sample(block, mode=mode).cpu().numpy())
    tail = (data.shape[-1],) if vector else ()
    return np.concatenate(out).reshape(points.shape[:-1] + tail).astype(np.float32)


def sample_labels(labels: np.ndarray, affine: np.ndarray, points: np.ndarray, device: torch.device,
                  chunk: int = 262144) -> np.ndarray:
    """Label-aware resampling (as ANTs' ``GenericLabel``): each label's indicator, background 0
    included, is interpolated multilinearly and the label with the largest weight wins. Never
    produces a label value that is not in the input; outside the grid gives 0."""
    values = np.union1d([0], np.unique(labels))  # background first: it wins ties (outside the grid)
    flat = points.reshape(-1, points.shape[-1])
    best = np.full(len(flat), -1.0, dtype=np.float32)
    result = np.zeros(len(flat), dtype=labels.dtype)
    for value in values:
        weight = sample_array((labels == value).astype(np.float32), affine, flat, device, chunk=chunk)
        better = weight > best
        best[better] = weight[better]
        result[better] = value
    return result.reshape(points.shape[:-1])


def rescale_intensity(data: np.ndarray, mask: np.ndarray | None = None, lower: float = 0.5,
                      upper: float = 99.5) -> np.ndarray:
    """Clip to the ``lower``/``upper`` percentiles of the foreground and rescale to [0, 1].

    Foreground: ``mask`` if given, else the non-zero voxels (else all voxels).
    """
    data = np.asarray(data, dtype=np.float32)
    values = data[mask > 0] if mask is not None else data[data != 0]
    if values.size == 0:
        values = data.ravel()
    lo, hi = np.percentile(values, [lower, upper])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def foreground_mask(data: np.ndarray, fraction: float = 0.1) -> np.ndarray:
    """Voxels above ``fraction`` of the image's 99th percentile (for sampling when no mask is given)."""
    data = np.asarray(data, dtype=np.float32)
    ref = np.percentile(data, 99)
    mask = data > fraction * ref
    return mask if mask.any() else np.ones(data.shape, bool)


def dilate_mm(mask: np.ndarray, spacing: np.ndarray, distance_mm: float) -> np.ndarray:
    """``mask`` (boolean, any dimension) grown by ``distance_mm``: the voxels whose centre lies within
    that Euclidean distance (mm, through the per-axis voxel ``spacing``) of a mask voxel's centre;
    ``mask > 0`` itself for a distance of 0 or an empty mask."""
    inside = np.asarray(mask) > 0
    if distance_mm <= 0 or not inside.any():
        return inside
    return distance_transform_edt(~inside, sampling=np.asarray(spacing, dtype=float)) <= distance_mm


def resolve_device(spec: str = "auto") -> torch.device:
    """Map ``auto|cpu|cuda|cuda:N`` to a torch device.

    ``auto`` picks CUDA when available and the CPU otherwise. Asking for CUDA on a machine
    without it raises ``ValueError`` (a user error, not a silent fall-back).
    """
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{spec}' requested but CUDA is not available (use --device cpu or auto)")
        dev = torch.device(spec)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device '{spec}' requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return dev
    raise ValueError(f"unknown device '{spec}' (expected auto, cpu, cuda or cuda:N)")
