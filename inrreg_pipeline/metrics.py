"""Evaluation metrics for registration results, in physical units (NumPy / SciPy only).

Conventions used throughout this module
---------------------------------------
* Arrays are indexed ``array[i, j, k]`` (2-D: ``array[i, j]``), as nibabel returns them.
* Distances, volumes and derivatives are physical: millimetres, mm^3 (mm^2 in 2-D), and mm/mm.
  The voxel spacing of an array axis is the Euclidean norm of the matching column of the
  image affine's linear part, ``np.linalg.norm(affine[:d, :d], axis=0)`` (see
  :func:`spacing_from_affine`); a ``spacing`` argument always lists one value per *array axis*.
  Volumes use ``prod(spacing)`` per voxel, which equals ``|det(affine[:d, :d])|`` for the
  usual orthogonal (possibly oblique, i.e. rotated) grids; sheared grids are not supported.
* Points (landmarks) are world coordinates in RAS+ millimetres (NIfTI / nibabel convention).
  ITK, ANTs and the BraTS-Reg landmark files use LPS+; RAS = (-x_LPS, -y_LPS, z_LPS).
* Label maps are integer arrays (float arrays holding integral values, such as
  ``nibabel``'s ``get_fdata()``, are accepted); 0 is background unless asked for explicitly.

Surface distances (:func:`label_overlap`)
------------------------------------------
The surface of a binary mask is the set of its voxels that have at least one face-connected
neighbour (4-connected in 2-D, 6-connected in 3-D) outside the mask, i.e.
``mask & ~binary_erosion(mask)`` with the cross-shaped structuring element and voxels outside the
array counted as background.  The directed surface distances from A to B are, for every surface
voxel of A, the Euclidean distance in mm (voxel centres, anisotropic spacing honoured) to the nearest
surface voxel of B, computed with ``scipy.ndimage.distance_transform_edt(~surface_B, sampling=spacing)``.
This is the construction used by MONAI (``get_mask_edges`` + ``get_surface_distance``).

* ``hd95_mm`` -- **max of the two directed 95th percentiles**:
  ``max(P95(d(A->B)), P95(d(B->A)))`` with ``numpy.percentile``'s default linear interpolation.
  This is what ``monai.metrics.compute_hausdorff_distance(..., percentile=95, directed=False)``
  returns (it computes each directed percentile and takes the maximum).  It is *not* the 95th
  percentile of the pooled distance set (another definition found in the literature), which is
  never larger.
* ``assd_mm`` -- average symmetric surface distance, the mean of the pooled distances
  ``(sum d(A->B) + sum d(B->A)) / (|surface A| + |surface B|)``, as MONAI's
  ``compute_average_surface_distance(symmetric=True)``.  (MedPy's ``assd`` instead averages the two
  directed means; the two agree when both surfaces have the same number of voxels.)
"""

from __future__ import annotations

import csv
import math
import os
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from .core.jacobian import jacobian_determinant_fd

__all__ = [
    "spacing_from_affine",
    "label_overlap",
    "summarise_overlap",
    "OVERLAP_COLUMNS",
    "jacobian_determinant_from_displacement",
    "folding_fraction",
    "log_jacobian_std",
    "read_landmarks",
    "target_registration_error",
    "tre_summary",
    "corner_relative_distance",
    "rigid_success_rate",
    "write_rows_tsv",
]

#: Column order of the rows returned by :func:`label_overlap`.
OVERLAP_COLUMNS: tuple[str, ...] = (
    "label",
    "status",
    "dice",
    "jaccard",
    "reference_volume_mm3",
    "test_volume_mm3",
    "hd95_mm",
    "assd_mm",
)

STATUS_OK = "ok"
STATUS_MISSING_IN_REFERENCE = "missing_in_reference"
STATUS_MISSING_IN_TEST = "missing_in_test"
STATUS_MISSING_IN_BOTH = "missing_in_both"

# Above this label value, bounding boxes are found label by label instead of with one
# ``ndimage.find_objects`` pass (which allocates a list as long as the largest label).
_MAX_LABEL_FOR_FIND_OBJECTS = 1_000_000


# --------------------------------------------------------------------------------------
# spacing helpers
# --------------------------------------------------------------------------------------
def spacing_from_affine(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing (mm) along each array axis from a ``(d+1, d+1)`` voxel-to-world affine.

    Returns the column norms of ``affine[:d, :d]``, i.e. the length in mm of one voxel step along
    each array axis; correct for oblique (rotated) grids, unlike reading the diagonal.
    """
    affine = np.asarray(affine, dtype=float)
    if affine.ndim != 2 or affine.shape[0] != affine.shape[1] or affine.shape[0] < 2:
        raise ValueError(f"affine must be a square (d+1, d+1) matrix, got shape {affine.shape}")
    d = affine.shape[0] - 1
    return np.linalg.norm(affine[:d, :d], axis=0)


def _resolve_spacing(
    ndim: int, spacing: Sequence[float] | None, affine: np.ndarray | None, *, required: bool = False
) -> np.ndarray:
    if spacing is not None and affine is not None:
        raise ValueError("give either spacing or affine, not both")
    if affine is not None:
        sp = spacing_from_affine(affine)
    elif spacing is not None:
        sp = np.asarray(spacing, dtype=float).reshape(-1)
    elif required:
        raise ValueError("voxel spacing is required: pass spacing=(...) in mm or the image affine")
    else:
        sp = np.ones(ndim)
    if sp.shape != (ndim,):
        raise ValueError(f"spacing must have one value per array axis ({ndim}), got {sp.tolist()}")
    if not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(f"spacing must be positive and finite, got {sp.tolist()}")
    return sp


# --------------------------------------------------------------------------------------
# label overlap
# --------------------------------------------------------------------------------------
def _as_label_array(arr: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        return arr
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} label map contains NaN or infinite values")
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            raise ValueError(f"{name} label map holds non-integer values; labels must be integers")
        return rounded.astype(np.int64)
    raise ValueError(f"{name} label map has unsupported dtype {arr.dtype}")


def _bounding_boxes(arr: np.ndarray, labels: Sequence[int]) -> dict[int, tuple[slice, ...] | None]:
    """Bounding box (tuple of slices) of every requested label in ``arr`` (None if absent)."""
    boxes: dict[int, tuple[slice, ...] | None] = {}
    wanted = [int(lab) for lab in labels]
    if arr.size == 0:
        return {lab: None for lab in wanted}
    positive = [lab for lab in wanted if lab > 0]
    amin, amax = int(arr.min()), int(arr.max())
    if positive and amin >= 0 and amax <= _MAX_LABEL_FOR_FIND_OBJECTS:
        # one pass over the volume for all labels; find_objects needs an integer array
        work = arr if arr.dtype.kind in "iu" else arr.astype(np.int64)
        objs = ndimage.find_objects(work, max_label=max(positive))
        for lab in positive:
            boxes[lab] = objs[lab - 1]
    for lab in wanted:
        if lab in boxes:
            continue
        if lab < amin or lab > amax:
            boxes[lab] = None
            continue
        idx = np.nonzero(arr == lab)
        if idx[0].size == 0:
            boxes[lab] = None
        else:
            boxes[lab] = tuple(slice(int(ix.min()), int(ix.max()) + 1) for ix in idx)
    return boxes


def _union_box(
    a: tuple[slice, ...] | None, b: tuple[slice, ...] | None, shape: tuple[int, ...], margin: int
) -> tuple[slice, ...]:
    boxes = [box for box in (a, b) if box is not None]
    out = []
    for axis, n in enumerate(shape):
        lo = min(box[axis].start for box in boxes)
        hi = max(box[axis].stop for box in boxes)
        out.append(slice(max(lo - margin, 0), min(hi + margin, n)))
    return tuple(out)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: in the mask with a face-connected neighbour outside (array edge = outside)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _directed_distances(surf_from: np.ndarray, surf_to: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Distance (mm) from every voxel of ``surf_from`` to the nearest voxel of ``surf_to``."""
    dist = ndimage.distance_transform_edt(~surf_to, sampling=spacing)
    return dist[surf_from]


def label_overlap(
    reference: np.ndarray,
    test: np.ndarray,
    labels: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    surface_distances: bool = True,
    *,
    affine: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Per-label overlap and surface-distance metrics between two label maps on the same grid.

    Parameters
    ----------
    reference, test
        Integer label maps of identical shape (2-D or 3-D; any dimension works), e.g. the fixed
        image's segmentation and the warped moving segmentation.
    labels
        Labels to report, in this order.  Default: the sorted union of the non-zero labels present
        in either map.  A requested label absent from a map is reported with a ``status`` (below).
    spacing
        Voxel size in mm along each array axis (default 1 mm).  Alternatively pass ``affine``
        (keyword), whose column norms give the spacing; not both.
    surface_distances
        Compute ``hd95_mm`` / ``assd_mm``.  When False the two columns are present but NaN
        (overlap only, much faster).

    Returns
    -------
    list of dict
        One row per label with keys :data:`OVERLAP_COLUMNS`:

        ``label`` (int); ``status``; ``dice`` = 2|A∩B| / (|A|+|B|); ``jaccard`` = |A∩B| / |A∪B|;
        ``reference_volume_mm3`` / ``test_volume_mm3`` (voxel count x voxel volume; mm^2 in 2-D);
        ``hd95_mm``: max of the two directed 95th-percentile surface distances (MONAI's
        ``percentile=95, directed=False`` definition, see the module docstring);
        ``assd_mm``: mean of the pooled symmetric surface distances.

        ``status`` is ``'ok'`` when the label is present in both maps, otherwise
        ``'missing_in_reference'`` / ``'missing_in_test'`` (dice = jaccard = 0, distances NaN:
        surface distances to an empty set are undefined) or ``'missing_in_both'`` (dice, jaccard
        and distances NaN, volumes 0).  Missing labels are therefore never a silent NaN: check
        ``status``.

    Notes
    -----
    Each label is processed inside the bounding box of its union in both maps, padded by one voxel
    (clipped at the array edge).  This gives exactly the same result as working on the full array:
    the surface test only looks one voxel away, and every surface voxel of either mask lies inside
    the box, so the nearest-surface distances are unchanged.
    """
    ref = _as_label_array(reference, "reference")
    tst = _as_label_array(test, "test")
    if ref.shape != tst.shape:
        raise ValueError(f"reference and test shapes differ: {ref.shape} vs {tst.shape}")
    if ref.ndim < 1:
        raise ValueError("label maps must have at least one dimension")
    sp = _resolve_spacing(ref.ndim, spacing, affine)
    voxel_volume = float(np.prod(sp))

    if labels is None:
        present = np.union1d(np.unique(ref), np.unique(tst))
        label_list = [int(lab) for lab in present if lab != 0]
    else:
        label_list = [int(lab) for lab in labels]
        if len(set(label_list)) != len(label_list):
            raise ValueError(f"labels contains duplicates: {label_list}")

    ref_boxes = _bounding_boxes(ref, label_list)
    tst_boxes = _bounding_boxes(tst, label_list)
    nan = float("nan")
    rows: list[dict[str, Any]] = []
    for lab in label_list:
        rbox, tbox = ref_boxes[lab], tst_boxes[lab]
        row: dict[str, Any] = {"label": lab}
        if rbox is None and tbox is None:
            row.update(
                status=STATUS_MISSING_IN_BOTH, dice=nan, jaccard=nan,
                reference_volume_mm3=0.0, test_volume_mm3=0.0, hd95_mm=nan, assd_mm=nan,
            )
            rows.append({key: row[key] for key in OVERLAP_COLUMNS})
            continue

        box = _union_box(rbox, tbox, ref.shape, margin=1)
        a = ref[box] == lab
        b = tst[box] == lab
        na = int(np.count_nonzero(a))
        nb = int(np.count_nonzero(b))
        inter = int(np.count_nonzero(a & b))
        union = na + nb - inter
        row["status"] = (
            STATUS_OK if (na and nb) else (STATUS_MISSING_IN_TEST if na else STATUS_MISSING_IN_REFERENCE)
        )
        row["dice"] = 2.0 * inter / (na + nb)
        row["jaccard"] = inter / union
        row["reference_volume_mm3"] = na * voxel_volume
        row["test_volume_mm3"] = nb * voxel_volume
        hd95 = assd = nan
        if surface_distances and na and nb:
            if np.array_equal(a, b):
                hd95 = assd = 0.0
            else:
                sa, sb = _surface(a), _surface(b)
                d_ab = _directed_distances(sa, sb, sp)
                d_ba = _directed_distances(sb, sa, sp)
                hd95 = float(max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)))
                assd = float((d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size))
        row["hd95_mm"] = hd95
        row["assd_mm"] = assd
        rows.append({key: row[key] for key in OVERLAP_COLUMNS})
    return rows


def summarise_overlap(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Summary of :func:`label_overlap` rows over the labels present in the reference.

    Labels present in the reference are those with status ``'ok'`` or ``'missing_in_test'``; a
    label the test map lost counts with Dice 0 in the Dice statistics.  Labels only in the test
    map (``'missing_in_reference'``) or in neither map are left out of every mean.

    Returns a dict with

    * ``n_labels``: labels present in the reference;
    * ``n_missing``: of those, labels absent from the test map (``'missing_in_test'``);
    * ``n_extra``: labels present only in the test map (``'missing_in_reference'``);
    * ``mean_dice``: unweighted mean Dice;
    * ``weighted_mean_dice``: mean Dice weighted by reference volume (mm^3);
    * ``min_dice`` and ``min_dice_label`` (the first such label on ties);
    * ``mean_hd95_mm`` / ``mean_assd_mm``: means over the labels with a finite distance (i.e.
      present in both maps; NaN if none, or if distances were not computed).

    With no label present in the reference, the statistics are NaN and ``min_dice_label`` is None.
    """
    rows = list(rows)
    present = [r for r in rows if r["status"] in (STATUS_OK, STATUS_MISSING_IN_TEST)]
    nan = float("nan")
    out: dict[str, Any] = {
        "n_labels": len(present),
        "n_missing": sum(r["status"] == STATUS_MISSING_IN_TEST for r in present),
        "n_extra": sum(r["status"] == STATUS_MISSING_IN_REFERENCE for r in rows),
        "mean_dice": nan,
        "weighted_mean_dice": nan,
        "min_dice": nan,
        "min_dice_label": None,
        "mean_hd95_mm": nan,
        "mean_assd_mm": nan,
    }
    if not present:
        return out
    dice = np.array([float(r["dice"]) for r in present])
    vol = np.array([float(r["reference_volume_mm3"]) for r in present])
    out["mean_dice"] = float(dice.mean())
    out["weighted_mean_dice"] = float(np.sum(dice * vol) / np.sum(vol))
    imin = int(np.argmin(dice))
    out["min_dice"] = float(dice[imin])
    out["min_dice_label"] = int(present[imin]["label"])
    for key, col in (("mean_hd95_mm", "hd95_mm"), ("mean_assd_mm", "assd_mm")):
        vals = np.array([float(r[col]) for r in present], dtype=float)
        vals = vals[np.isfinite(vals)]
        if vals.size:
            out[key] = float(vals.mean())
    return out


# --------------------------------------------------------------------------------------
# transform quality
# --------------------------------------------------------------------------------------
def jacobian_determinant_from_displacement(
    field: np.ndarray,
    spacing: Sequence[float] | None = None,
    *,
    affine: np.ndarray | None = None,
) -> np.ndarray:
    """det(I + du/dx) of a dense displacement field, by central differences in mm.

    Parameters
    ----------
    field
        Displacement in mm, shape ``(*shape, d)`` with ``d == len(shape)`` (2 or 3); ``field[..., c]``
        is component ``c``.  A NIfTI 5-D ANTs warp ``(X, Y, Z, 1, 3)`` must be squeezed first.
    spacing
        Voxel size in mm along each array axis.  Use for grids whose axes are aligned with the
        frame of the displacement components: component ``c`` is then taken along array axis ``c``
        and ``du_c/dx_k = (du_c/di_k) / spacing_k``.
    affine
        Instead of ``spacing``: the grid's ``(d+1, d+1)`` voxel-to-world affine (oblique allowed).
        The components must then be expressed in the same world frame as the affine (e.g. RAS mm
        for a nibabel affine; for an ITK/ANTs LPS field negate x and y of the field *and* use the
        LPS affine, or convert the field to RAS first).  Derivatives are taken with respect to world
        coordinates by the chain rule: with x = R i + t (R = ``affine[:d, :d]``),
        ``du/dx = (du/di) @ inv(R)``.

    Exactly one of ``spacing`` / ``affine`` is required.

    Returns
    -------
    numpy.ndarray
        ``det(I + grad u)`` of shape ``shape`` (float64).  ``np.gradient`` is used: second-order
        central differences inside, first-order one-sided differences at the array edges.

    Notes
    -----
    The determinant is invariant to a rotation of the frame (det(I + Q J Q^T) = det(I + J)), so any
    orthonormal frame works as long as the components and the coordinates of differentiation are
    expressed in the same one; mixing frames (LPS components differentiated along RAS axes) is
    wrong, and so is passing ``spacing`` for an oblique grid with world-frame components.
    """
    field = np.asarray(field)
    d = field.ndim - 1
    if d < 1 or field.shape[-1] != d:
        raise ValueError(
            f"field must have shape (*shape, d) with d = len(shape); got {field.shape}"
        )
    if affine is not None:
        if spacing is not None:
            raise ValueError("give either spacing or affine, not both")
        grid = np.asarray(affine, dtype=float)
    else:
        sp = _resolve_spacing(d, spacing, None, required=True)
        grid = np.diag(list(sp) + [1.0])  # axis-aligned grid: component c along array axis c
    # the one finite-difference implementation (shared with the registration core)
    return jacobian_determinant_fd(field, grid, dtype=np.float64)


def _masked_values(jacobian_det: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    det = np.asarray(jacobian_det, dtype=np.float64)
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != det.shape:
            raise ValueError(f"mask shape {mask.shape} differs from the determinant's {det.shape}")
        det = det[mask.astype(bool)]
    else:
        det = det.reshape(-1)
    if det.size == 0:
        raise ValueError("no voxels to evaluate (empty determinant array or empty mask)")
    if np.isnan(det).any():
        raise ValueError("Jacobian determinant contains NaN inside the mask")
    return det


def folding_fraction(jacobian_det: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Percentage (0-100) of voxels inside ``mask`` (default: all) with det J <= 0.

    det J = 0 (a collapsed voxel) counts as folded.  Raises ValueError for an empty mask or NaN
    determinants inside it, rather than returning NaN.
    """
    det = _masked_values(jacobian_det, mask)
    return float(100.0 * np.count_nonzero(det <= 0) / det.size)


def log_jacobian_std(
    jacobian_det: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    clip: tuple[float, float] = (1e-9, 1e9),
) -> float:
    """Standard deviation (population, ddof=0) of log(det J) over non-folded voxels in ``mask``.

    Only voxels with det J > 0 enter (the folded ones are reported by :func:`folding_fraction`);
    their determinants are clipped to ``clip`` = [1e-9, 1e9] before the log, so a nearly collapsed
    voxel contributes at most |log 1e-9| ~ 20.7 instead of an unbounded value.  The result is
    dimensionless (natural log); 0 for a volume-preserving or purely affine map.  Challenge scripts
    differ in how they treat folded voxels (some clip every voxel, folded included), so compare
    numbers only when computed the same way.  Returns NaN if no voxel in the mask has det J > 0.
    """
    det = _masked_values(jacobian_det, mask)
    det = det[det > 0]
    if det.size == 0:
        return float("nan")
    return float(np.std(np.log(np.clip(det, clip[0], clip[1]))))


# --------------------------------------------------------------------------------------
# landmarks
# --------------------------------------------------------------------------------------
_ITK_POINT_COLUMNS = ("x", "y", "z", "t")


def _read_table(path: str | os.PathLike[str]) -> tuple[list[str] | None, list[list[str]]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        lines = [ln for ln in fh.read().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"{path}: no landmarks found (empty file)")
    delimiter = "\t" if "\t" in lines[0] else ","
    table = [[cell.strip() for cell in row] for row in csv.reader(lines, delimiter=delimiter)]

    def _is_number(text: str) -> bool:
        try:
            float(text)
        except ValueError:
            return False
        return True

    if all(_is_number(cell) for cell in table[0] if cell):
        return None, table
    return table[0], table[1:]


def read_landmarks(path: str | os.PathLike[str], convention: str = "auto") -> np.ndarray:
    """Read landmark points and return them as an ``(N, d)`` float array in RAS+ millimetres.

    Rows are returned in file order; pair two files by that order (:func:`target_registration_error`).

    Supported files (comma- or tab-separated; ``#`` comment lines and blank lines are skipped):

    * ITK / ANTs point CSV (``antsApplyTransformsToPoints``): header ``x,y,z,t,label,comment``
      (a ``t`` column identifies it).  LPS mm.
    * BraTS-Reg landmark CSV: header ``Landmark,X,Y,Z``.  LPS mm (ITK physical points).
    * Plain table: header with columns ``x, y[, z]`` (any case, any order, extra columns such as an
      index or label are ignored), or no header and exactly 2 or 3 numeric columns.  The frame is
      not stated by such a file, so ``convention`` must be given.

    Parameters
    ----------
    convention
        ``'auto'``: LPS for the ITK / BraTS-Reg layouts above; a plain table raises ValueError
        asking for the convention.  ``'ras'`` or ``'lps'``: the coordinates are in that frame
        (this overrides auto-detection).  LPS is converted with RAS = (-x, -y, z) (2-D: (-x, -y)).
    """
    conv = convention.lower()
    if conv not in ("auto", "ras", "lps"):
        raise ValueError(f"convention must be 'auto', 'ras' or 'lps', got {convention!r}")
    header, body = _read_table(path)
    if not body:
        raise ValueError(f"{path}: no landmark rows")

    detected: str | None = None
    if header is None:
        ncol = len(body[0])
        if ncol not in (2, 3):
            raise ValueError(
                f"{path}: a file without a header must have 2 or 3 columns (x, y[, z]); got {ncol}"
            )
        col_idx = list(range(ncol))
    else:
        lower = [h.lower() for h in header]
        if "x" not in lower or "y" not in lower:
            raise ValueError(f"{path}: no x / y columns in header {header}")
        axes = ["x", "y", "z"] if "z" in lower else ["x", "y"]
        col_idx = [lower.index(ax) for ax in axes]
        if all(c in lower for c in _ITK_POINT_COLUMNS):
            detected = "lps"  # ITK / ANTs point set CSV
        elif header[:4] == ["Landmark", "X", "Y", "Z"]:
            detected = "lps"  # BraTS-Reg

    if conv == "auto":
        if detected is None:
            raise ValueError(
                f"{path}: cannot tell whether the coordinates are RAS or LPS; "
                "call read_landmarks(path, convention='ras') or convention='lps'"
            )
        conv = detected

    try:
        points = np.array([[float(row[i]) for i in col_idx] for row in body], dtype=float)
    except (ValueError, IndexError) as exc:
        raise ValueError(f"{path}: malformed landmark row ({exc})") from exc
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{path}: non-finite landmark coordinates")
    if conv == "lps":
        points[:, :2] *= -1.0
    return points


def target_registration_error(fixed_points_ras: np.ndarray, mapped_points_ras: np.ndarray) -> np.ndarray:
    """Per-landmark Euclidean distance in mm between corresponding points (rows), shape ``(N,)``.

    Typically ``fixed_points_ras`` are the fixed-image landmarks mapped through the estimated
    fixed->moving transform and ``mapped_points_ras`` the moving-image landmarks (or the reverse);
    both must be in the same frame (RAS mm) and in the same landmark order.
    """
    a = np.asarray(fixed_points_ras, dtype=float)
    b = np.asarray(mapped_points_ras, dtype=float)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"point arrays must both be (N, d) with equal shapes, got {a.shape} and {b.shape}")
    return np.linalg.norm(a - b, axis=1)


def tre_summary(errors: np.ndarray) -> dict[str, float]:
    """Mean, standard deviation (ddof=0), median and maximum of per-landmark errors (mm), and ``n``."""
    e = np.asarray(errors, dtype=float).reshape(-1)
    if e.size == 0:
        raise ValueError("no landmark errors to summarise")
    if not np.all(np.isfinite(e)):
        raise ValueError("landmark errors contain NaN or infinite values")
    return {
        "n": int(e.size),
        "mean_mm": float(e.mean()),
        "std_mm": float(e.std()),
        "median_mm": float(np.median(e)),
        "max_mm": float(e.max()),
    }


# --------------------------------------------------------------------------------------
# 2-D rigid success protocol
# --------------------------------------------------------------------------------------
def _check_homogeneous_2d(mat: np.ndarray, name: str) -> np.ndarray:
    mat = np.asarray(mat, dtype=float)
    if mat.shape != (3, 3):
        raise ValueError(f"{name} must be a 3x3 homogeneous matrix, got shape {mat.shape}")
    if not np.allclose(mat[2], [0.0, 0.0, 1.0]):
        raise ValueError(f"{name} last row must be [0, 0, 1], got {mat[2].tolist()}")
    return mat


def corner_relative_distance(
    estimated: np.ndarray,
    true: np.ndarray,
    image_shape: Sequence[int],
    spacing: Sequence[float] = (1.0, 1.0),
) -> float:
    """Relative corner distance of the 2-D rigid success protocol (dimensionless).

    ``estimated`` and ``true`` are 3x3 homogeneous matrices acting on column vectors
    ``[p0, p1, 1]`` (mm), both mapping fixed-image points to moving-image points, in the image's own
    mm frame: point = voxel index x spacing (origin at the centre of voxel (0, 0), axis 0 first).

    The 4 corner voxel centres ``(0, 0), (n0-1, 0), (0, n1-1), (n0-1, n1-1)`` of the fixed image
    (``image_shape = (n0, n1)``) are mapped with both transforms; the mean of the 4 Euclidean
    distances (mm) is divided by the image side length L = mean(n0 * s0, n1 * s1) mm (the mean of
    the two field-of-view extents, so a square image gives its side).  A pure translation error t
    therefore gives |t| / L.  Success is a value below 0.02 (:func:`rigid_success_rate`).
    """
    est = _check_homogeneous_2d(estimated, "estimated")
    tru = _check_homogeneous_2d(true, "true")
    shape = tuple(int(n) for n in image_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"image_shape must be (n0, n1) with positive sizes, got {image_shape}")
    sp = _resolve_spacing(2, spacing, None)
    n0, n1 = shape
    corners = np.array([[0, 0], [n0 - 1, 0], [0, n1 - 1], [n0 - 1, n1 - 1]], dtype=float) * sp
    homog = np.concatenate([corners, np.ones((4, 1))], axis=1).T  # (3, 4)
    diff = (est @ homog)[:2] - (tru @ homog)[:2]
    mean_dist = float(np.mean(np.linalg.norm(diff, axis=0)))
    side = float(np.mean([n0 * sp[0], n1 * sp[1]]))
    return mean_dist / side


def rigid_success_rate(distances: Sequence[float] | np.ndarray, threshold: float = 0.02) -> float:
    """Fraction (0-1) of relative corner distances strictly below ``threshold``; NaN counts as failure."""
    d = np.asarray(distances, dtype=float).reshape(-1)
    if d.size == 0:
        raise ValueError("no distances given")
    return float(np.count_nonzero(d < threshold) / d.size)  # NaN < t is False: a failure


# --------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------
def _format_cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return "n/a" if math.isnan(value) else repr(value)
    text = str(value)
    if any(ch in text for ch in "\t\n\r"):
        raise ValueError(f"TSV cell contains a tab or newline: {text!r}")
    return text


def write_rows_tsv(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    columns: Sequence[str] | None = None,
) -> None:
    """Write dict rows as a tab-separated table, atomically.

    Column order: ``columns`` if given (keys not listed are an error), else the keys of the first
    row in their order followed by keys first seen in later rows.  Missing keys, None and NaN are
    written as ``n/a`` (BIDS convention); floats use ``repr`` (round-trips exactly).  The file is
    written to a temporary file in the destination directory and moved into place with
    ``os.replace``, so readers never see a partial table.  Permissions follow the process umask.
    """
    rows = list(rows)
    if columns is None:
        if not rows:
            raise ValueError("no rows and no columns: nothing to write")
        cols: list[str] = []
        for row in rows:
            cols.extend(k for k in row if k not in cols)
    else:
        cols = [str(c) for c in columns]
        extra = {k for row in rows for k in row} - set(cols)
        if extra:
            raise ValueError(f"rows have keys not in columns: {sorted(extra)}")
    for col in cols:
        _format_cell(col)

    lines = ["\t".join(cols)]
    for row in rows:
        lines.append("\t".join(_format_cell(row.get(col)) for col in cols))
    payload = ("\n".join(lines) + "\n").encode("utf-8")

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
