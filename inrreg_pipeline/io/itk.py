"""ITK / ANTs transform files: affines (``.mat``/``.txt``), displacement fields (NIfTI), HDF5 composites.

Conventions
-----------
* Our world space is **RAS+ millimetres** (nibabel's ``img.affine``: voxel index -> RAS mm).
  ITK and ANTs work in **LPS** millimetres.  The change of frame is ``D = diag(-1, -1, 1)`` in 3-D
  and ``D = diag(-1, -1)`` in 2-D (both in-plane axes negated); ``D`` is its own inverse, so a
  point converts as ``p_lps = D p_ras``, a vector as ``v_lps = D v_ras`` and an affine map
  (homogeneous, ``(d+1) x (d+1)``) as ``A_lps = D A_ras D``.
* A *spatial transform* maps points of the FIXED (reference) space to points of the MOVING space
  (the pull-back map used for resampling: ``warped(x) = moving(T(x))``).
* Registration output: an affine ``A`` (RAS, fixed point -> moving point) and a displacement field
  ``u`` of shape ``(*fixed_shape, d)`` in RAS mm, sampled at the voxel centres of the fixed grid.
  The full map is ``p_moving = A @ (x + u(x))``.  In ANTs this is the transform list
  ``[1Warp.nii.gz, 0GenericAffine.mat]`` (``antsApplyTransforms -t 1Warp.nii.gz -t 0GenericAffine.mat``):
  for points, the list is applied first-element-first (warp, then affine); for images the
  moving image is affinely resampled "first", hence the usual "last listed is applied first" wording.
* The inverse uses its own field ``v`` on the fixed grid: ``z = A^{-1} y``, ``x = z + v(z)``;
  in ANTs ``[[0GenericAffine.mat, invert], 1InverseWarp.nii.gz]``.
* An ITK ``CompositeTransform`` applies its *last added* transform first, so an ANTs list
  ``[T_1, ..., T_n]`` corresponds to adding ``T_n, ..., T_1`` in that order (this is what
  antsApplyTransforms does internally).
* antspyx pitfalls (0.6.3): ``ants.apply_transforms(..., whichtoinvert=None)`` silently uses
  ``(True, False)`` when the list is ``[<*.mat>, <not .mat>]`` (so ``[mat, InverseWarp]`` works
  without flags, but ``[mat, Warp]`` is *not* ``W(A(x))`` unless ``whichtoinvert=[False, False]``);
  it only allows inverting paths containing ``.mat`` (not ``.txt``).
* NIfTI geometry: ITK 5.4 (SimpleITK and ANTs) does not always pick the sform as nibabel does
  (e.g. sform_code 2 with qform_code 1 -> ITK uses the qform).  We write both, identical, code 1.

In memory a transform is one of the RAS objects of :mod:`inrreg_pipeline.core.transform`
(:class:`AffineTransform`, :class:`DisplacementField`, :class:`TransformChain` in ``-t`` order).
This module converts them to and from files and SimpleITK objects, and is the only place that
does the LPS <-> RAS change for transforms: :func:`read_transform`, :func:`read_transform_chain`,
:func:`write_itk_transform`, :func:`transform_from_sitk`, :func:`transform_to_sitk`. The older
array-based functions (``read_itk_affine``, ``write_itk_composite_h5``, ...) are kept and built on
the same conversions.

Units are millimetres throughout; matrices are NumPy float64 arrays.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import Optional, Sequence, Union

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..core.transform import AffineTransform, DisplacementField, Transform, TransformChain, registration_transform
from .frames import frame_signs, lps_to_ras_points, ras_to_lps_matrix
from .nifti import save_nifti

__all__ = [
    "ras_to_lps_matrix",
    "affine_ras_to_lps",
    "affine_lps_to_ras",
    "affine_to_itk_geometry",
    "itk_geometry_to_affine",
    "write_itk_affine",
    "read_itk_affine",
    "write_ants_displacement_field",
    "read_ants_displacement_field",
    "write_itk_composite_h5",
    "write_itk_inverse_composite_h5",
    "read_chain_transform",
    "chain_transform",
    "transform_chain_to_points",
    "transform_points_through_chain",
    "read_transform",
    "read_transform_chain",
    "write_itk_transform",
    "transform_from_sitk",
    "transform_to_sitk",
    "parse_transform_spec",
]

PathLike = Union[str, os.PathLike]

#: NIfTI intent code for a vector image (``NIFTI_INTENT_VECTOR``), as written by antsRegistration.
NIFTI_INTENT_VECTOR = 1007

#: Tolerance on ``R^T R - I`` (``R`` = unit-column direction matrix) below which a grid affine is
#: accepted as shear-free.  NIfTI stores the sform as float32, hence not tighter than ~1e-6.
_ORTHO_ATOL = 1e-4

_AFFINE_EXTS = (".mat", ".txt", ".tfm")
_H5_EXTS = (".h5", ".hdf5", ".hdf")
_NIFTI_EXTS = (".nii", ".nii.gz")
_BRACKET = re.compile(r"^\[\s*(?P<path>[^,\]]+?)\s*,\s*(?P<flag>[01])\s*\]$")


def parse_transform_spec(spec: str) -> tuple[str, bool]:
    """One ``-t`` argument as antsApplyTransforms spells it: ``file``, ``[file,1]`` (the inverse,
    linear transforms only) or ``[file,0]`` -> ``(path, invert)``. The file is not opened."""
    match = _BRACKET.match(spec.strip())
    return (match["path"], match["flag"] == "1") if match else (spec.strip(), False)


# --------------------------------------------------------------------------------------------
# Frames and grid geometry
# --------------------------------------------------------------------------------------------
def _check_affine(affine: np.ndarray, name: str = "affine") -> tuple[np.ndarray, int]:
    """Return (float64 copy, d) of a homogeneous (d+1)x(d+1) affine, d in {2, 3}."""
    a = np.asarray(affine, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] not in (3, 4):
        raise ValueError(f"{name} must be a 3x3 (2-D) or 4x4 (3-D) homogeneous matrix, got shape {a.shape}")
    d = a.shape[0] - 1
    if not np.allclose(a[d], np.eye(d + 1)[d]):
        raise ValueError(f"{name} last row must be [0, ..., 0, 1], got {a[d].tolist()}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains non-finite values")
    return a, d


def affine_ras_to_lps(affine_ras: np.ndarray) -> np.ndarray:
    """Express a homogeneous point map (RAS mm -> RAS mm) in LPS mm: ``D A D``."""
    a, d = _check_affine(affine_ras)
    D = ras_to_lps_matrix(d)
    return D @ a @ D


def affine_lps_to_ras(affine_lps: np.ndarray) -> np.ndarray:
    """Inverse of :func:`affine_ras_to_lps` (the same operation, ``D`` being an involution)."""
    return affine_ras_to_lps(affine_lps)


def affine_to_itk_geometry(
    affine: np.ndarray,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Split a voxel->RAS grid affine into ITK image geometry (LPS).

    Parameters
    ----------
    affine
        ``(d+1) x (d+1)`` voxel index -> RAS mm affine (nibabel convention), d = 2 or 3.

    Returns
    -------
    origin, spacing, direction
        ``origin``: LPS mm position of voxel ``(0, ..., 0)``; ``spacing``: mm per voxel along each
        array axis (column norms); ``direction``: row-major flattened ``d x d`` LPS direction
        matrix with unit columns -- exactly what ``sitk.Image.SetOrigin/SetSpacing/SetDirection``
        take.  Such an image satisfies ``D @ affine == [[direction @ diag(spacing), origin], [0, 1]]``.

    Raises
    ------
    ValueError
        If the affine has shear (non-orthogonal columns) or a zero column: ITK images cannot
        represent it.
    """
    a, d = _check_affine(affine, "grid affine")
    D = ras_to_lps_matrix(d)[:d, :d]
    m = D @ a[:d, :d]
    spacing = np.linalg.norm(m, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"grid affine has a zero-length voxel axis (spacing {spacing.tolist()})")
    direction = m / spacing
    err = np.abs(direction.T @ direction - np.eye(d)).max()
    if err > _ORTHO_ATOL:
        raise ValueError(
            f"grid affine has shear (direction columns not orthogonal, max |R^T R - I| = {err:.2g}); "
            "ITK/ANTs images cannot represent it"
        )
    origin = D @ a[:d, d]
    return (
        tuple(float(v) for v in origin),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in direction.ravel()),
    )


def itk_geometry_to_affine(
    origin: Sequence[float], spacing: Sequence[float], direction: Sequence[float]
) -> np.ndarray:
    """Inverse of :func:`affine_to_itk_geometry`: LPS origin/spacing/direction -> voxel->RAS affine."""
    d = len(origin)
    D = ras_to_lps_matrix(d)[:d, :d]
    m = np.asarray(direction, dtype=np.float64).reshape(d, d) * np.asarray(spacing, dtype=np.float64)
    a = np.eye(d + 1)
    a[:d, :d] = D @ m
    a[:d, d] = D @ np.asarray(origin, dtype=np.float64)
    return a


def _reference_image(shape: Sequence[int], affine: np.ndarray) -> sitk.Image:
    """Empty ITK image (scalar, 1 byte) carrying the grid geometry of ``shape``/``affine``."""
    shape = tuple(int(s) for s in shape)
    _, d = _check_affine(affine, "reference affine")
    if len(shape) != d:
        raise ValueError(f"reference_shape {shape} has {len(shape)} axes but the affine is {d}-D")
    origin, spacing, direction = affine_to_itk_geometry(affine)
    img = sitk.Image(list(shape), sitk.sitkUInt8)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    return img


def _grid_points_ras(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """RAS mm coordinates of all voxel centres, shape ``(*shape, d)``."""
    a, d = _check_affine(affine)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"), axis=-1)
    return idx @ a[:d, :d].T + a[:d, d]


# --------------------------------------------------------------------------------------------
# Affine transforms
# --------------------------------------------------------------------------------------------
def _lower_ext(path: PathLike) -> str:
    name = os.fspath(path).lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(name)[1]


def _sitk_affine_from_ras(affine_ras: np.ndarray) -> sitk.AffineTransform:
    """``sitk.AffineTransform`` (LPS, centre 0) equivalent to a RAS point map."""
    lps = affine_ras_to_lps(affine_ras)
    d = lps.shape[0] - 1
    tx = sitk.AffineTransform(d)
    tx.SetCenter([0.0] * d)
    tx.SetMatrix(tuple(float(v) for v in lps[:d, :d].ravel()))
    tx.SetTranslation(tuple(float(v) for v in lps[:d, d]))
    return tx


def _linear_sitk_to_lps(tx: sitk.Transform) -> np.ndarray:
    """Homogeneous LPS matrix of any linear SimpleITK transform (affine, Euler, similarity, ...).

    Evaluated generically by transforming the origin and the unit vectors, which covers
    ``MatrixOffsetTransformBase`` semantics ``T(x) = M (x - c) + c + t`` for any centre ``c``.
    """
    d = tx.GetDimension()
    if not tx.IsLinear():
        raise ValueError(f"transform {tx.GetName()} is not linear")
    o = np.asarray(tx.TransformPoint((0.0,) * d), dtype=np.float64)
    a = np.eye(d + 1)
    a[:d, d] = o
    for k in range(d):
        e = [0.0] * d
        e[k] = 1.0
        a[:d, k] = np.asarray(tx.TransformPoint(tuple(e)), dtype=np.float64) - o
    return a


def write_itk_affine(path: PathLike, affine_ras: np.ndarray) -> None:
    """Write a RAS point map (fixed -> moving, mm) as an ITK ``AffineTransform_double_D_D``.

    Parameters
    ----------
    path
        ``.mat`` (MATLAB v4 binary, the format of antsRegistration's ``0GenericAffine.mat``) or
        ``.txt``/``.tfm`` (ITK "Insight Transform File V1.0" text); chosen by extension.
    affine_ras
        ``(d+1) x (d+1)`` homogeneous matrix, d = 2 or 3, mapping RAS mm points of the fixed
        space to RAS mm points of the moving space.  Stored in LPS (``D A D``) with centre 0.
    """
    ext = _lower_ext(path)
    if ext not in _AFFINE_EXTS:
        raise ValueError(f"affine transform path must end in .mat, .txt or .tfm, got {os.fspath(path)!r}")
    sitk.WriteTransform(_sitk_affine_from_ras(affine_ras), os.fspath(path))


def _read_sitk_transform(path: PathLike) -> sitk.Transform:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(p)
    tx = sitk.ReadTransform(p)
    return tx


def read_itk_affine(path: PathLike) -> np.ndarray:
    """Read any linear ITK transform file and return its RAS point map ``(d+1) x (d+1)``.

    Accepts ``.mat``/``.txt``/``.tfm`` (and ``.h5`` holding only linear transforms) containing
    ``AffineTransform``, ``MatrixOffsetTransformBase``-derived transforms with a centre (as
    written by ANTs), Euler/Rigid/Versor/Similarity/Scale transforms, or a composite of linear
    transforms.  The returned matrix maps RAS mm points of the fixed space to RAS mm points of
    the moving space (``D M_lps D``).
    """
    tx = _read_sitk_transform(path)
    if not tx.IsLinear():
        raise ValueError(f"{os.fspath(path)}: transform {tx.GetName()} is not linear (not an affine)")
    return affine_lps_to_ras(_linear_sitk_to_lps(tx))


# --------------------------------------------------------------------------------------------
# Displacement fields (ANTs NIfTI layout)
# --------------------------------------------------------------------------------------------
def _check_field(field_ras: np.ndarray, grid_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    f = np.asarray(field_ras)
    a, d = _check_affine(grid_affine, "grid affine")
    if f.ndim != d + 1 or f.shape[-1] != d:
        raise ValueError(
            f"a {d}-D displacement field must have shape (*grid_shape, {d}), got {f.shape}"
        )
    if not np.all(np.isfinite(f)):
        raise ValueError("displacement field contains non-finite values")
    return f, a, d


def _embed_affine_4x4(affine: np.ndarray) -> np.ndarray:
    """3x3 (2-D) voxel->RAS affine -> 4x4 with an identity third axis; 4x4 returned as is."""
    a, d = _check_affine(affine)
    if d == 3:
        return a
    out = np.eye(4)
    out[:2, :2] = a[:2, :2]
    out[:2, 3] = a[:2, 2]
    return out


def write_ants_displacement_field(path: PathLike, field_ras: np.ndarray, grid_affine: np.ndarray) -> None:
    """Write a displacement field in the NIfTI layout antsRegistration uses for ``1Warp.nii.gz``.

    Parameters
    ----------
    path
        ``.nii`` or ``.nii.gz``.
    field_ras
        ``(*grid_shape, d)`` displacements in RAS mm at the voxel centres of the grid
        (``x -> x + u(x)``).
    grid_affine
        ``(d+1) x (d+1)`` voxel index -> RAS mm affine of the grid; must be shear-free.

    The file is 5-D ``(X, Y, Z, 1, 3)`` (2-D: ``(X, Y, 1, 1, 2)``), float32, intent ``vector``
    (1007), vectors in LPS mm, qform and sform both set to the grid affine with code 1 (scanner),
    units mm -- what ITK/ANTs read as a displacement field.
    """
    f, a, d = _check_field(field_ras, grid_affine)
    affine_to_itk_geometry(a)  # raises on shear: ANTs could not read the grid faithfully
    ext = _lower_ext(path)
    if ext not in _NIFTI_EXTS:
        raise ValueError(f"displacement field path must end in .nii or .nii.gz, got {os.fspath(path)!r}")
    lps = np.asarray(f, dtype=np.float32) * frame_signs(d).astype(np.float32)  # sign flips: exact in float32
    spatial = f.shape[:d]
    data = lps.reshape(*spatial, *([1] * (3 - d)), 1, d)
    aff4 = _embed_affine_4x4(a)
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    img = nib.Nifti1Image(data, aff4, header=hdr)
    img.header.set_intent(NIFTI_INTENT_VECTOR, (), name="")
    img.set_qform(aff4, code=1)
    img.set_sform(aff4, code=1)
    img.header.set_xyzt_units("mm", "sec")
    save_nifti(img, path)


def read_ants_displacement_field(path: PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an ANTs/ITK displacement-field NIfTI (e.g. ``1Warp.nii.gz``, ``1InverseWarp.nii.gz``).

    Returns
    -------
    field_ras, grid_affine
        ``field_ras``: float64 array ``(*grid_shape, d)`` of displacements in RAS mm;
        ``grid_affine``: ``(d+1) x (d+1)`` voxel index -> RAS mm affine (nibabel's best affine:
        sform if its code is set, else qform).  d = 2 when the file holds 2 vector components.

    Accepts the 5-D layout ``(X, Y, Z, 1, d)``; 2-D fields have ``Z == 1`` and ``d == 2``.
    """
    img = nib.load(os.fspath(path))
    shape = img.shape
    if len(shape) != 5 or shape[3] != 1 or shape[4] not in (2, 3):
        raise ValueError(
            f"{os.fspath(path)}: not an ITK displacement field (expected 5-D shape (X, Y, Z, 1, 2|3), got {shape})"
        )
    d = int(shape[4])
    if d == 2 and shape[2] != 1:
        raise ValueError(f"{os.fspath(path)}: 2-component field must have Z == 1, got shape {shape}")
    data = np.asarray(img.dataobj, dtype=np.float64)[..., 0, :]  # (X, Y, Z, d)
    aff4 = np.asarray(img.affine, dtype=np.float64)
    if d == 2:
        data = data[:, :, 0, :]
        grid_affine = np.eye(3)
        grid_affine[:2, :2] = aff4[:2, :2]
        grid_affine[:2, 2] = aff4[:2, 3]
    else:
        grid_affine = aff4
    # ITK (hence ANTs) chooses between sform and qform differently from nibabel (e.g. ITK 5.4 uses
    # the qform when sform_code is 2 and qform_code is 1).  When the two readings disagree, return
    # the grid ANTs will actually use.
    itk_affine = _itk_header_affine(path)
    if itk_affine.shape == grid_affine.shape and not np.allclose(itk_affine, grid_affine, atol=1e-3, rtol=0):
        warnings.warn(
            f"{os.fspath(path)}: sform and qform disagree; using the grid ITK/ANTs read "
            f"(sform_code={int(img.header['sform_code'])}, qform_code={int(img.header['qform_code'])})",
            stacklevel=2,
        )
        grid_affine = itk_affine
    return data * frame_signs(d), grid_affine


def _itk_header_affine(path: PathLike) -> np.ndarray:
    """Voxel->RAS affine of an image file as ITK reads its header (no pixel data loaded)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(os.fspath(path))
    reader.ReadImageInformation()
    return itk_geometry_to_affine(reader.GetOrigin(), reader.GetSpacing(), reader.GetDirection())


def _sitk_field_transform(field_ras: np.ndarray, grid_affine: np.ndarray) -> sitk.DisplacementFieldTransform:
    """``sitk.DisplacementFieldTransform`` (LPS, float64, linear interpolation) from a RAS field."""
    f, a, d = _check_field(field_ras, grid_affine)
    origin, spacing, direction = affine_to_itk_geometry(a)
    # LPS, float64, (Z, Y, X, d) in one pass (no intermediate copy of the field)
    axes = tuple(range(d - 1, -1, -1)) + (d,)
    arr = np.empty(tuple(f.shape[i] for i in axes), dtype=np.float64)
    np.multiply(np.transpose(f, axes), frame_signs(d), out=arr)
    img = sitk.GetImageFromArray(arr, isVector=True)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    return sitk.DisplacementFieldTransform(img)


# --------------------------------------------------------------------------------------------
# HDF5 composites
# --------------------------------------------------------------------------------------------
def _check_h5_path(path: PathLike) -> str:
    p = os.fspath(path)
    if _lower_ext(p) not in _H5_EXTS:
        raise ValueError(f"ITK composite transform path must end in .h5 (or .hdf5), got {p!r}")
    return p


def _composite_dim(affine_ras: Optional[np.ndarray], field_ras: Optional[np.ndarray], grid_affine) -> int:
    if affine_ras is None and field_ras is None:
        raise ValueError("at least one of affine_ras and field_ras must be given")
    dims = set()
    if affine_ras is not None:
        dims.add(_check_affine(affine_ras)[1])
    if field_ras is not None:
        if grid_affine is None:
            raise ValueError("grid_affine is required with a displacement field")
        dims.add(_check_field(field_ras, grid_affine)[2])
    if len(dims) != 1:
        raise ValueError(f"affine and displacement field have different dimensions: {sorted(dims)}")
    return dims.pop()


def write_itk_composite_h5(
    path: PathLike,
    affine_ras: Optional[np.ndarray],
    field_ras: Optional[np.ndarray],
    grid_affine: Optional[np.ndarray],
) -> None:
    """Write the forward chain ``p = A (x + u(x))`` as one ITK HDF5 ``CompositeTransform``.

    ``antsApplyTransforms -t path`` (antspyx ``transformlist=[path]``) then equals
    ``-t 1Warp.nii.gz -t 0GenericAffine.mat``.  ``affine_ras``: ``(d+1) x (d+1)`` RAS map (fixed ->
    moving) or None; ``field_ras``: ``(*grid_shape, d)`` RAS mm on the fixed grid or None;
    ``grid_affine``: voxel -> RAS affine of that grid (required with a field).  The composite
    holds (in ITK queue order) the affine then the field; ITK applies the last one first.
    """
    p = _check_h5_path(path)
    _composite_dim(affine_ras, field_ras, grid_affine)
    write_itk_transform(p, registration_transform(affine_ras, field_ras, grid_affine))


def write_itk_inverse_composite_h5(
    path: PathLike,
    affine_ras: Optional[np.ndarray],
    inverse_field_ras: Optional[np.ndarray],
    grid_affine: Optional[np.ndarray],
) -> None:
    """Write the inverse chain ``z = A^{-1} y, x = z + v(z)`` as one ITK HDF5 ``CompositeTransform``.

    Equivalent to ``-t [0GenericAffine.mat,1] -t 1InverseWarp.nii.gz``.  ``affine_ras`` is the
    *forward* affine (fixed -> moving, RAS), inverted here; ``inverse_field_ras`` is ``v`` in RAS mm
    on the fixed grid ``grid_affine``.  Either may be None.  The file maps moving-space points to
    fixed-space points (use it to resample a fixed-space image onto the moving grid).
    """
    p = _check_h5_path(path)
    _composite_dim(affine_ras, inverse_field_ras, grid_affine)
    parts: list[Transform] = []  # the inverse chain [A^-1, v] (``-t`` order)
    if affine_ras is not None:
        parts.append(AffineTransform(_check_affine(affine_ras)[0]).inverse())
    if inverse_field_ras is not None:
        parts.append(DisplacementField(inverse_field_ras, grid_affine))
    write_itk_transform(p, TransformChain(parts))


# --------------------------------------------------------------------------------------------
# Transform chains -> points
# --------------------------------------------------------------------------------------------
def read_chain_transform(path: PathLike, invert: bool, ndim: int) -> sitk.Transform:
    """One element of an ANTs transform list as the SimpleITK transform antsApplyTransforms uses (LPS mm).

    Parameters
    ----------
    path
        ``.mat``/``.txt``/``.tfm`` (linear), ``.h5`` (single or composite) or a displacement-field
        NIfTI (5-D vector image, LPS mm, as ANTs writes ``1Warp.nii.gz``).
    invert
        ANTs' ``[file,1]``: the inverse, for linear transforms only (a field cannot be inverted
        here; use its inverse warp).
    ndim
        Dimension ``d`` (2 or 3) of the reference grid the chain is used with.

    Returns
    -------
    SimpleITK.Transform
        A transform mapping LPS mm points of the fixed space to LPS mm points of the moving space
        (for ``invert``: the reverse). Convert points with :mod:`inrreg_pipeline.io.frames`.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        A wrong dimension, an inverted non-linear transform, or an unsupported extension.
    RuntimeError
        SimpleITK cannot read the file.
    """
    path = os.fspath(path)
    d = int(ndim)
    if not os.path.exists(path):
        raise FileNotFoundError(path)
    ext = _lower_ext(path)
    if ext in _NIFTI_EXTS:
        if invert:
            raise ValueError(
                f"cannot invert displacement field {path!r}: only linear transforms can be inverted; "
                "use the inverse warp (e.g. 1InverseWarp.nii.gz) instead"
            )
        img = sitk.ReadImage(path, sitk.sitkVectorFloat64)
        if img.GetDimension() != d or img.GetNumberOfComponentsPerPixel() != d:
            raise ValueError(
                f"{path!r}: expected a {d}-D displacement field with {d} components, got a "
                f"{img.GetDimension()}-D image with {img.GetNumberOfComponentsPerPixel()} components"
            )
        return sitk.DisplacementFieldTransform(img)
    if ext in _AFFINE_EXTS or ext in _H5_EXTS:
        tx = sitk.ReadTransform(path)
        if tx.GetDimension() != d:
            raise ValueError(f"{path!r}: {tx.GetDimension()}-D transform used with a {d}-D reference grid")
        if invert:
            if not tx.IsLinear():
                raise ValueError(
                    f"cannot invert {tx.GetName()} in {path!r}: only linear transforms can be inverted"
                )
            lps = np.linalg.inv(_linear_sitk_to_lps(tx))
            tx = sitk.AffineTransform(d)
            tx.SetMatrix(tuple(float(v) for v in lps[:d, :d].ravel()))
            tx.SetTranslation(tuple(float(v) for v in lps[:d, d]))
        return tx
    raise ValueError(f"unsupported transform file {path!r} (expected .mat, .txt, .tfm, .h5 or .nii[.gz])")


def chain_transform(transforms: Sequence[tuple[PathLike, bool]], ndim: int) -> sitk.CompositeTransform:
    """An ANTs transform list ``[(path, invert), ...]`` (antsApplyTransforms order) as one ITK
    ``CompositeTransform`` (LPS mm, fixed -> moving). ITK applies the last added transform first, so
    the list is added in reverse. Elements are read with :func:`read_chain_transform`."""
    comp = sitk.CompositeTransform(int(ndim))
    for path, invert in reversed(list(transforms)):  # ITK: last added is applied first
        comp.AddTransform(read_chain_transform(path, bool(invert), ndim))
    return comp


def transform_chain_to_points(
    transforms: Sequence[tuple[PathLike, bool]],
    reference_shape: tuple[int, ...],
    reference_affine: np.ndarray,
) -> np.ndarray:
    """Map every reference voxel centre through an ANTs transform list.

    Parameters
    ----------
    transforms
        ``[(path, invert), ...]`` in antsApplyTransforms order (the order of the ``-t`` flags and
        of antspyx ``transformlist``), e.g. ``[("1Warp.nii.gz", False), ("0GenericAffine.mat", False)]``
        or ``[("0GenericAffine.mat", True), ("1InverseWarp.nii.gz", False)]``.  Points go through
        the list first element first.  Files: ``.mat``/``.txt``/``.tfm`` (linear), ``.h5``
        (single or composite), displacement-field NIfTI (5-D vector, as ANTs writes them).
        ``invert=True`` is allowed for linear transforms only.
    reference_shape
        Shape of the reference (output) grid, length d = 2 or 3.
    reference_affine
        ``(d+1) x (d+1)`` voxel index -> RAS mm affine of the reference grid (shear-free).

    Returns
    -------
    np.ndarray
        ``(*reference_shape, d)`` float64 RAS mm points in the input (moving) image space:
        where antsApplyTransforms samples the input image for each reference voxel.
    """
    ref = _reference_image(reference_shape, reference_affine)
    d = ref.GetDimension()
    comp = chain_transform(transforms, d)
    disp = sitk.TransformToDisplacementField(
        comp,
        sitk.sitkVectorFloat64,
        ref.GetSize(),
        ref.GetOrigin(),
        ref.GetSpacing(),
        ref.GetDirection(),
    )
    arr = sitk.GetArrayFromImage(disp)  # (Z, Y, X, d) LPS mm displacements
    disp_lps = np.transpose(arr, tuple(range(d - 1, -1, -1)) + (d,))
    grid_ras = _grid_points_ras(reference_shape, reference_affine)
    return grid_ras + lps_to_ras_points(disp_lps)  # x_ras + D (T(x_lps) - x_lps) = D T(x_lps)


def transform_points_through_chain(points_ras: np.ndarray, transforms: Sequence[tuple[PathLike, bool]]) -> np.ndarray:
    """Map RAS mm points ``(N, d)`` through an ANTs transform list (antsApplyTransforms order).

    ``transforms`` is as in :func:`transform_chain_to_points` (``[(path, invert), ...]``, points go
    through the first element first; for a registration's fixed -> moving map,
    ``[(1Warp, False), (0GenericAffine, False)]`` or ``[(Composite.h5, False)]``). The points are
    converted to LPS, mapped by ITK and converted back: the result is ``(N, d)`` RAS mm points in
    the moving space. Errors as :func:`read_chain_transform`.
    """
    pts = np.asarray(points_ras, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] not in (2, 3):
        raise ValueError(f"points must be an (N, 2) or (N, 3) array, got shape {pts.shape}")
    return read_transform_chain(transforms, pts.shape[1]).map(pts)


# --------------------------------------------------------------------------------------------
# Transform objects (RAS, core.transform) <-> SimpleITK transforms and files (LPS)
# --------------------------------------------------------------------------------------------
def _field_from_sitk_image(img: sitk.Image) -> DisplacementField:
    """A vector image of LPS mm displacements (ITK geometry) as a RAS :class:`DisplacementField`."""
    d = img.GetDimension()
    arr = sitk.GetArrayFromImage(img)  # (Z, Y, X, d) LPS mm
    field = np.transpose(arr, tuple(range(d - 1, -1, -1)) + (d,)).astype(np.float64) * frame_signs(d)
    return DisplacementField(field, itk_geometry_to_affine(img.GetOrigin(), img.GetSpacing(), img.GetDirection()))


def transform_from_sitk(tx: sitk.Transform) -> Transform:
    """A SimpleITK transform (LPS mm, fixed -> moving) as the RAS object of the same point map.

    Linear transforms of any kind (affine, Euler, versor, similarity, centred, translation, identity)
    become an :class:`AffineTransform`, a ``DisplacementFieldTransform`` a :class:`DisplacementField`
    on its own grid, and a ``CompositeTransform`` a :class:`TransformChain` in ``-t`` order (ITK's
    queue reversed: ITK applies the last added first). Other kinds (B-spline, ...) raise ValueError.
    """
    tx = tx.Downcast() if hasattr(tx, "Downcast") else tx
    name = tx.GetName()
    if name == "CompositeTransform":
        comp = sitk.CompositeTransform(tx)
        n = comp.GetNumberOfTransforms()
        if n == 0:
            return AffineTransform.identity(comp.GetDimension())
        return TransformChain([transform_from_sitk(comp.GetNthTransform(i)) for i in reversed(range(n))])
    if tx.IsLinear():
        return AffineTransform(affine_lps_to_ras(_linear_sitk_to_lps(tx)))
    if name == "DisplacementFieldTransform":
        return _field_from_sitk_image(sitk.DisplacementFieldTransform(tx).GetDisplacementField())
    raise ValueError(f"{name} is not supported (linear transforms, displacement fields and composites of them are)")


def transform_to_sitk(transform: Transform) -> sitk.Transform:
    """The SimpleITK transform (LPS mm) of a RAS transform object: the inverse of :func:`transform_from_sitk`.

    An affine becomes an ``AffineTransform`` (centre 0), a field a float64
    ``DisplacementFieldTransform`` (the field's grid must be shear-free), a chain a
    ``CompositeTransform`` holding its elements last first, so that ITK applies the first first.
    """
    if isinstance(transform, AffineTransform):
        return _sitk_affine_from_ras(transform.matrix)
    if isinstance(transform, DisplacementField):
        return _sitk_field_transform(transform.field, transform.grid_affine)
    if isinstance(transform, TransformChain):
        comp = sitk.CompositeTransform(transform.ndim)
        for t in reversed(transform.transforms):  # ITK: last added is applied first
            comp.AddTransform(transform_to_sitk(t))
        return comp
    raise TypeError(f"not a transform object: {type(transform).__name__}")


def read_transform(path: PathLike, invert: bool = False, ndim: Optional[int] = None) -> Transform:
    """One element of an ANTs transform list (``-t path`` or ``-t [path,1]``) as a RAS object.

    Files as :func:`read_chain_transform` (which reads them, with ITK, as antsApplyTransforms does):
    ``.mat``/``.txt``/``.tfm`` -> :class:`AffineTransform`; a displacement-field NIfTI ->
    :class:`DisplacementField` on the file's grid as ITK reads it; ``.h5`` -> the transform or
    :class:`TransformChain` it holds. ``invert`` is ANTs' ``[file,1]``, linear transforms only.
    ``ndim`` (2 or 3): the dimension the transform must have; None takes the file's.
    """
    if ndim is None:
        ndim = _file_dimension(path)
    return transform_from_sitk(read_chain_transform(path, invert, ndim))


def read_transform_chain(transforms: Sequence[Union[PathLike, tuple[PathLike, bool]]],
                         ndim: Optional[int] = None) -> TransformChain:
    """An ANTs transform list as one RAS :class:`TransformChain`, in the same (``-t``) order.

    ``transforms``: ``[(path, invert), ...]`` (or plain paths, not inverted) in antsApplyTransforms
    order, e.g. ``[("1Warp.nii.gz", False), ("0GenericAffine.mat", False)]`` for a registration's
    fixed -> moving map, ``[("0GenericAffine.mat", True), ("1InverseWarp.nii.gz", False)]`` for its
    inverse. ``chain.map(x)`` sends a point through the first element first, as ANTs does.
    """
    specs = [(t, False) if isinstance(t, (str, os.PathLike)) else (t[0], bool(t[1])) for t in transforms]
    if not specs:
        raise ValueError("an empty transform list")
    if ndim is None:
        ndim = _file_dimension(specs[0][0])
    return TransformChain([read_transform(path, invert, ndim) for path, invert in specs])


def _file_dimension(path: PathLike) -> int:
    """Spatial dimension of a transform file (2 or 3), as ITK reads it."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(p)
    if _lower_ext(p) in _NIFTI_EXTS:
        reader = sitk.ImageFileReader()
        reader.SetFileName(p)
        reader.ReadImageInformation()
        return int(reader.GetDimension())
    return int(sitk.ReadTransform(p).GetDimension())


def write_itk_transform(path: PathLike, transform: Transform) -> None:
    """Write a RAS transform object in the ITK/ANTs file its extension names.

    ``.mat``/``.txt``/``.tfm``: an :class:`AffineTransform` (:func:`write_itk_affine`);
    ``.nii``/``.nii.gz``: a :class:`DisplacementField` in ANTs' layout
    (:func:`write_ants_displacement_field`); ``.h5``: any transform, as an ITK
    ``CompositeTransform`` (a chain's elements in ITK queue order, last first).
    """
    ext = _lower_ext(path)
    if ext in _AFFINE_EXTS:
        if not isinstance(transform, AffineTransform):
            raise ValueError(f"{os.fspath(path)!r}: only an affine can be written as {ext}, got {transform!r}")
        write_itk_affine(path, transform.matrix)
    elif ext in _NIFTI_EXTS:
        if not isinstance(transform, DisplacementField):
            raise ValueError(f"{os.fspath(path)!r}: only a displacement field can be written as {ext}, "
                             f"got {transform!r}")
        write_ants_displacement_field(path, transform.field, transform.grid_affine)
    elif ext in _H5_EXTS:
        comp = transform_to_sitk(TransformChain([transform]))
        sitk.WriteTransform(comp, os.fspath(path))
    else:
        raise ValueError(f"unsupported transform file {os.fspath(path)!r} (expected .mat, .txt, .tfm, .h5 or .nii[.gz])")
