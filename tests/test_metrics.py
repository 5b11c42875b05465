"""Tests of inrreg_pipeline.metrics against analytic answers, brute-force references and, for the
surface distances, MONAI (a test-only dependency; those tests skip where MONAI is absent); of the
readers and writers it re-exports (inrreg_pipeline.io.landmarks, inrreg_pipeline.io.tsv); and of
the benchmarks' 2-D rigid success protocol (benchmarks/rigid_protocol.py).
"""

from __future__ import annotations

import csv
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from inrreg_pipeline import metrics as M
from inrreg_pipeline.io.landmarks import read_landmarks
from inrreg_pipeline.io.tsv import write_rows_tsv

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import rigid_protocol  # noqa: E402

#: the shared data sit beside the repository (../shared); the tests that need them skip without
BRATS = ROOT.parent / "shared" / "data" / "brats-reg-002"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _ball(shape, centre_mm, radius_mm, spacing):
    coords = np.indices(shape, dtype=float)
    r2 = sum(((coords[i] * spacing[i]) - centre_mm[i]) ** 2 for i in range(len(shape)))
    return r2 <= radius_mm**2


def _surface_brute(mask):
    """Boundary voxels by explicit face-neighbour checks (outside the array = background)."""
    padded = np.pad(mask, 1, constant_values=False)
    inner = tuple(slice(1, -1) for _ in range(mask.ndim))
    all_in = np.ones_like(mask, dtype=bool)
    for axis in range(mask.ndim):
        for step in (-1, 1):
            all_in &= np.roll(padded, step, axis=axis)[inner]
    return mask & ~all_in


def _surface_metrics_brute(a, b, spacing):
    pa = np.argwhere(_surface_brute(a)) * np.asarray(spacing)
    pb = np.argwhere(_surface_brute(b)) * np.asarray(spacing)
    d_ab, _ = cKDTree(pb).query(pa)
    d_ba, _ = cKDTree(pa).query(pb)
    hd95 = max(np.percentile(d_ab, 95), np.percentile(d_ba, 95))
    assd = (d_ab.sum() + d_ba.sum()) / (d_ab.size + d_ba.size)
    return hd95, assd


def _random_blob_pair(ndim, seed):
    """Two random label maps (labels 0..3, smooth blobs, some touching the array border) and an
    anisotropic voxel spacing (mm)."""
    rng = np.random.default_rng(seed)
    shape = (48, 40) if ndim == 2 else (30, 26, 22)
    spacing = (0.8, 1.7) if ndim == 2 else (2.0, 1.0, 1.3)

    def blobs():
        noise = ndimage.gaussian_filter(rng.normal(size=shape), 3.0)
        return np.digitize(noise, np.quantile(noise, [0.3, 0.55, 0.8]))

    return blobs(), blobs(), spacing


def _by_label(rows):
    return {r["label"]: r for r in rows}


# --------------------------------------------------------------------------------------
# label overlap
# --------------------------------------------------------------------------------------
def test_dice_of_offset_spheres_matches_analytic_lens_volume():
    spacing = (1.5, 1.0, 1.0)
    shape = (40, 64, 64)
    r, s = 14.0, 8.0  # mm
    c = np.array([30.0, 31.0, 31.5])
    a = _ball(shape, c, r, spacing)
    b = _ball(shape, c + [0.0, s, 0.0], r, spacing)
    ref = a.astype(np.int16)
    tst = b.astype(np.int16) * 1
    (row,) = M.label_overlap(ref, tst, spacing=spacing, surface_distances=False)
    sphere = 4.0 / 3.0 * math.pi * r**3
    lens = math.pi * (4 * r + s) * (2 * r - s) ** 2 / 12.0  # intersection of two equal spheres
    dice_true = 2 * lens / (2 * sphere)
    assert row["status"] == "ok"
    assert row["dice"] == pytest.approx(dice_true, rel=0.02)
    assert row["jaccard"] == pytest.approx(lens / (2 * sphere - lens), rel=0.03)
    assert row["reference_volume_mm3"] == pytest.approx(sphere, rel=0.02)
    assert math.isnan(row["hd95_mm"]) and math.isnan(row["assd_mm"])


@pytest.mark.parametrize(
    "spacing, axis, shift, expected",
    [((2.0, 1.0, 1.0), 0, 3, 6.0), ((1.0, 1.0, 1.0), 0, 3, 3.0), ((1.0, 1.0, 0.7), 2, 5, 3.5)],
)
def test_hd95_of_shifted_cube_is_shift_in_mm(spacing, axis, shift, expected):
    shape = (40, 40, 40)
    ref = np.zeros(shape, np.uint8)
    ref[10:30, 10:30, 10:30] = 1
    tst = np.roll(ref, shift, axis=axis)
    (row,) = M.label_overlap(ref, tst, spacing=spacing)
    assert row["hd95_mm"] == pytest.approx(expected, abs=1e-9)
    assert row["dice"] == pytest.approx((20 - shift) / 20)
    hd95, assd = _surface_metrics_brute(ref == 1, tst == 1, spacing)
    assert row["hd95_mm"] == pytest.approx(hd95)
    assert row["assd_mm"] == pytest.approx(assd)


def test_hd95_2d_anisotropic_and_affine_spacing():
    ref = np.zeros((30, 50), np.int32)
    ref[5:25, 10:30] = 7
    tst = np.roll(ref, 4, axis=1)
    (row,) = M.label_overlap(ref, tst, spacing=(1.0, 0.5))
    assert row["label"] == 7
    assert row["hd95_mm"] == pytest.approx(2.0)
    assert row["reference_volume_mm3"] == pytest.approx(400 * 0.5)
    # an oblique affine with the same column norms gives the same numbers
    th = 0.3
    rot = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    aff = np.eye(3)
    aff[:2, :2] = rot @ np.diag([1.0, 0.5])
    aff[:2, 2] = [-10.0, 4.0]
    (row_aff,) = M.label_overlap(ref, tst, affine=aff)
    assert row_aff == pytest.approx(row)


def test_identical_labels_give_dice_one_and_zero_distance():
    rng = np.random.default_rng(1)
    lab = rng.integers(0, 4, size=(20, 21, 22))
    rows = M.label_overlap(lab, lab.copy(), spacing=(1.2, 1.0, 0.8))
    assert [r["label"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["status"] == "ok"
        assert r["dice"] == 1.0 and r["jaccard"] == 1.0
        assert r["hd95_mm"] == 0.0 and r["assd_mm"] == 0.0
        assert r["reference_volume_mm3"] == r["test_volume_mm3"]


@pytest.mark.parametrize("ndim", [2, 3])
def test_surface_distances_match_brute_force_including_array_edges(ndim):
    """Random smooth blobs, some touching the array border: the cropped computation must equal
    a full-array brute force (explicit neighbour test + KD-tree nearest neighbours in mm)."""
    ref, tst, spacing = _random_blob_pair(ndim, seed=7 + ndim)
    rows = _by_label(M.label_overlap(ref, tst, spacing=spacing))
    assert set(rows) == {1, 2, 3}
    for lab, row in rows.items():
        a, b = ref == lab, tst == lab
        hd95, assd = _surface_metrics_brute(a, b, spacing)
        assert row["hd95_mm"] == pytest.approx(hd95, rel=1e-9)
        assert row["assd_mm"] == pytest.approx(assd, rel=1e-9)
        inter = np.count_nonzero(a & b)
        assert row["dice"] == pytest.approx(2 * inter / (a.sum() + b.sum()))
        assert row["jaccard"] == pytest.approx(inter / np.count_nonzero(a | b))


@pytest.mark.parametrize("ndim", [2, 3])
def test_hd95_and_assd_agree_with_monai(ndim):
    """An independent, well-kept implementation: MONAI's symmetric HD95 (the larger of the two
    directed 95th percentiles) and symmetric average surface distance (mean over both surfaces'
    distances), in mm with anisotropic spacing, on blobs that touch the array border."""
    monai_metrics = pytest.importorskip("monai.metrics")
    ref, tst, spacing = _random_blob_pair(ndim, seed=11 + ndim)
    rows = _by_label(M.label_overlap(ref, tst, spacing=spacing))
    for lab in (1, 2, 3):
        pred = torch.as_tensor(tst == lab, dtype=torch.float32)[None, None]
        truth = torch.as_tensor(ref == lab, dtype=torch.float32)[None, None]
        hd95 = monai_metrics.compute_hausdorff_distance(pred, truth, include_background=True, percentile=95,
                                                        spacing=spacing).item()
        assd = monai_metrics.compute_average_surface_distance(pred, truth, include_background=True, symmetric=True,
                                                              spacing=spacing).item()
        assert rows[lab]["hd95_mm"] == pytest.approx(hd95, rel=1e-5)
        assert rows[lab]["assd_mm"] == pytest.approx(assd, rel=1e-5)


def test_missing_labels_are_reported_with_status():
    ref = np.zeros((20, 20, 20), np.int32)
    tst = np.zeros_like(ref)
    ref[2:8, 2:8, 2:8] = 1
    tst[2:8, 2:8, 3:9] = 1
    ref[10:15, 10:15, 10:15] = 2  # lost by the test map
    tst[12:18, 2:6, 2:6] = 3  # only in the test map
    rows = _by_label(M.label_overlap(ref, tst, labels=[1, 2, 3, 4]))
    assert rows[1]["status"] == "ok"
    assert rows[2]["status"] == "missing_in_test"
    assert rows[3]["status"] == "missing_in_reference"
    assert rows[4]["status"] == "missing_in_both"
    for lab in (2, 3):
        assert rows[lab]["dice"] == 0.0 and rows[lab]["jaccard"] == 0.0
        assert math.isnan(rows[lab]["hd95_mm"]) and math.isnan(rows[lab]["assd_mm"])
    assert rows[2]["reference_volume_mm3"] == 125.0 and rows[2]["test_volume_mm3"] == 0.0
    assert rows[4]["reference_volume_mm3"] == 0.0
    # default labels: union of non-zero labels of both maps
    assert [r["label"] for r in M.label_overlap(ref, tst)] == [1, 2, 3]
    for rows_list in (M.label_overlap(ref, tst, labels=[1, 2, 3, 4]),):
        assert all(list(r) == list(M.OVERLAP_COLUMNS) for r in rows_list)

    summary = M.summarise_overlap(rows.values())
    assert summary["n_labels"] == 2
    assert summary["n_missing"] == 1
    assert summary["n_extra"] == 1
    assert summary["mean_dice"] == pytest.approx(rows[1]["dice"] / 2)
    assert summary["weighted_mean_dice"] == pytest.approx(rows[1]["dice"] * 216 / (216 + 125))
    assert summary["min_dice"] == 0.0 and summary["min_dice_label"] == 2
    assert summary["mean_hd95_mm"] == pytest.approx(rows[1]["hd95_mm"])
    assert summary["mean_assd_mm"] == pytest.approx(rows[1]["assd_mm"])


def test_summary_of_nothing_and_input_validation():
    s = M.summarise_overlap([])
    assert s["n_labels"] == 0 and s["min_dice_label"] is None and math.isnan(s["mean_dice"])
    ref = np.zeros((5, 5))
    with pytest.raises(ValueError):
        M.label_overlap(ref, np.zeros((5, 6)))
    with pytest.raises(ValueError):
        M.label_overlap(ref + 0.5, ref)
    with pytest.raises(ValueError):
        M.label_overlap(ref, ref, spacing=(1.0, 1.0, 1.0))
    # float maps holding integers (nibabel get_fdata) are fine
    ref[1:3, 1:3] = 2.0
    (row,) = M.label_overlap(ref, ref.copy())
    assert row["label"] == 2 and row["dice"] == 1.0


# --------------------------------------------------------------------------------------
# Jacobian, folding
# --------------------------------------------------------------------------------------
def test_jacobian_of_linear_displacement_axis_aligned():
    rng = np.random.default_rng(3)
    B = rng.normal(scale=0.2, size=(3, 3))
    spacing = np.array([2.0, 1.0, 3.0])
    idx = np.indices((9, 10, 11), dtype=float)
    x = np.moveaxis(idx, 0, -1) * spacing  # mm
    field = x @ B.T  # u(x) = B x
    det = M.jacobian_determinant_from_displacement(field, spacing)
    assert det.shape == (9, 10, 11)
    np.testing.assert_allclose(det, np.linalg.det(np.eye(3) + B), rtol=1e-10)


@pytest.mark.parametrize("d", [2, 3])
def test_jacobian_of_linear_displacement_oblique_affine(d):
    rng = np.random.default_rng(10 + d)
    B = rng.normal(scale=0.2, size=(d, d))
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # random rotation (or reflection)
    aff = np.eye(d + 1)
    aff[:d, :d] = q @ np.diag(rng.uniform(0.7, 2.5, size=d))
    aff[:d, d] = rng.normal(scale=50, size=d)
    shape = (8, 9, 10)[:d]
    idx = np.moveaxis(np.indices(shape, dtype=float), 0, -1)
    world = idx @ aff[:d, :d].T + aff[:d, d]
    field = world @ B.T  # world-frame components of u(x) = B x
    det = M.jacobian_determinant_from_displacement(field, affine=aff)
    np.testing.assert_allclose(det, np.linalg.det(np.eye(d) + B), rtol=1e-9)
    # treating the oblique grid as axis-aligned (spacing only) is a different, wrong answer
    wrong = M.jacobian_determinant_from_displacement(field, M.spacing_from_affine(aff))
    assert not np.allclose(wrong, np.linalg.det(np.eye(d) + B), rtol=1e-3)
    with pytest.raises(ValueError):
        M.jacobian_determinant_from_displacement(field)  # no spacing, no affine


def test_folding_fraction_of_known_folded_slab():
    h = 2.0  # mm along axis 0
    n0 = 40
    x = np.arange(n0) * h
    # u0 = 0 before x=20 mm, slope -2 up to x=40 mm, constant after: det = 1 + du0/dx0
    u0 = np.where(x <= 20, 0.0, np.where(x <= 40, -2.0 * (x - 20), -40.0))
    field = np.zeros((n0, 6, 5, 3))
    field[..., 0] = u0[:, None, None]
    det = M.jacobian_determinant_from_displacement(field, (h, 1.0, 1.0))
    # central differences: det = -1 inside (i = 11..19), 0 at the kinks (i = 10, 20), 1 elsewhere
    np.testing.assert_allclose(det[11:20], -1.0)
    np.testing.assert_allclose(det[[10, 20]], 0.0)
    np.testing.assert_allclose(det[:10], 1.0)
    np.testing.assert_allclose(det[21:], 1.0)
    assert M.folding_fraction(det) == pytest.approx(100.0 * 11 / n0)
    mask = np.zeros(det.shape, bool)
    mask[:10] = True
    assert M.folding_fraction(det, mask) == 0.0
    mask[10:12] = True  # 10 clean + 2 folded slices
    assert M.folding_fraction(det, mask) == pytest.approx(100.0 * 2 / 12)
    # log-Jacobian std ignores folded voxels: all remaining dets are 1 -> 0
    assert M.log_jacobian_std(det) == pytest.approx(0.0)
    with pytest.raises(ValueError):
        M.folding_fraction(det, np.zeros(det.shape, bool))


def test_log_jacobian_std_known_values():
    det = np.array([1.0, math.e, 1.0, math.e, -0.5, 0.0])
    assert M.log_jacobian_std(det) == pytest.approx(0.5)
    mask = np.array([1, 1, 0, 0, 1, 1], bool)
    assert M.log_jacobian_std(det, mask) == pytest.approx(0.5)
    assert M.log_jacobian_std(np.full(4, 3.0)) == pytest.approx(0.0)
    assert math.isnan(M.log_jacobian_std(np.array([-1.0, 0.0])))


def test_jacobian_statistics_is_the_summaries_over_the_mask():
    det = np.array([[-0.5, 0.0], [2.0, 4.0]])
    mask = np.array([[True, False], [True, True]])
    stats = M.jacobian_statistics(det, mask)
    assert stats == {"folding_percent": M.folding_fraction(det, mask), "log_jacobian_std": M.log_jacobian_std(det, mask),
                     "jacobian_min": -0.5, "jacobian_max": 4.0}
    assert stats["folding_percent"] == pytest.approx(100 / 3)
    assert M.jacobian_statistics(det)["folding_percent"] == 50.0
    with pytest.raises(ValueError, match="empty"):
        M.jacobian_statistics(det, np.zeros_like(mask))


# --------------------------------------------------------------------------------------
# landmarks
# --------------------------------------------------------------------------------------
@pytest.mark.skipif(not BRATS.exists(), reason="BraTS-Reg sample data not available")
def test_read_brats_landmarks_lps_to_ras():
    nib = pytest.importorskip("nibabel")
    lm = BRATS / "derivatives/landmarks/sub-002"
    base = read_landmarks(lm / "ses-baseline/anat/sub-002_ses-baseline_landmarks.csv")
    follow = read_landmarks(lm / "ses-followup/anat/sub-002_ses-followup_landmarks.csv")
    assert base.shape == (6, 3) and follow.shape == (6, 3)
    # first row of the file is "1,155.0,-68.0,93.0" (LPS) -> RAS (-155, 68, 93)
    np.testing.assert_allclose(base[0], [-155.0, 68.0, 93.0])
    # independent check of the frame: in RAS the landmarks fall inside the image grid
    img = nib.load(BRATS / "sub-002/ses-baseline/anat/sub-002_ses-baseline_T1w.nii.gz")
    vox = np.c_[base, np.ones(6)] @ np.linalg.inv(img.affine).T
    assert np.all(vox[:, :3] >= 0) and np.all(vox[:, :3] <= np.array(img.shape) - 1)
    # TRE without registration: landmark 1 moved 3 mm along y
    err = M.target_registration_error(base, follow)
    assert err.shape == (6,)
    assert err[0] == pytest.approx(3.0)
    summ = M.tre_summary(err)
    assert summ["n"] == 6
    assert summ["mean_mm"] == pytest.approx(err.mean())
    assert summ["max_mm"] == pytest.approx(err.max())
    assert summ["median_mm"] == pytest.approx(np.median(err))
    assert summ["std_mm"] == pytest.approx(err.std())


def test_metrics_re_exports_the_io_readers_and_writers():
    """``from inrreg_pipeline.metrics import read_landmarks, write_rows_tsv`` keeps working."""
    assert M.read_landmarks is read_landmarks and M.write_rows_tsv is write_rows_tsv
    assert set(M.__all__) <= set(dir(M))


def test_read_landmarks_formats_and_conventions(tmp_path):
    itk = tmp_path / "itk.csv"
    itk.write_text("x,y,z,t,label,comment\n1.5,-2,3,0,1,\n-4,5,6.25,0,2,\n")
    np.testing.assert_allclose(read_landmarks(itk), [[-1.5, 2, 3], [4, -5, 6.25]])
    np.testing.assert_allclose(read_landmarks(itk, "ras"), [[1.5, -2, 3], [-4, 5, 6.25]])

    plain = tmp_path / "points.tsv"
    plain.write_text("index\tx\ty\tz\n0\t1\t2\t3\n1\t-1\t-2\t-3\n")
    with pytest.raises(ValueError, match="convention"):
        read_landmarks(plain)
    np.testing.assert_allclose(read_landmarks(plain, "ras"), [[1, 2, 3], [-1, -2, -3]])
    np.testing.assert_allclose(read_landmarks(plain, "LPS"), [[-1, -2, 3], [1, 2, -3]])

    noheader = tmp_path / "p.csv"
    noheader.write_text("10,20\n30,40\n")
    np.testing.assert_allclose(read_landmarks(noheader, "lps"), [[-10, -20], [-30, -40]])
    with pytest.raises(ValueError):
        read_landmarks(noheader, "mni")

    brats_like = tmp_path / "lm.csv"
    brats_like.write_text("Landmark,X,Y,Z\n1,155.0,-68.0,93.0\n")
    np.testing.assert_allclose(read_landmarks(brats_like), [[-155.0, 68.0, 93.0]])

    with pytest.raises(ValueError):
        M.target_registration_error(np.zeros((3, 3)), np.zeros((4, 3)))
    np.testing.assert_allclose(
        M.target_registration_error([[0, 0, 0], [1, 1, 1]], [[3, 4, 0], [1, 1, 1]]), [5.0, 0.0]
    )


# --------------------------------------------------------------------------------------
# 2-D rigid success protocol
# --------------------------------------------------------------------------------------
def _rigid(theta, t):
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, t[0]], [s, c, t[1]], [0.0, 0.0, 1.0]])


def test_corner_distance_identity_translation_rotation():
    T = _rigid(0.1, (3.0, -2.0))
    assert rigid_protocol.corner_relative_distance(T, T.copy(), (128, 128), (0.5, 0.5)) == 0.0
    # pure translation error t along x, side L = 128 * 0.5 = 64 mm -> |t| / L
    shifted = T.copy()
    shifted[0, 2] += 1.6
    assert rigid_protocol.corner_relative_distance(shifted, T, (128, 128), (0.5, 0.5)) == pytest.approx(1.6 / 64)
    # non-square: L is the mean of the two sides (100 mm and 200 mm -> 150 mm)
    tr = _rigid(0.0, (0.0, 3.0))
    assert rigid_protocol.corner_relative_distance(tr, np.eye(3), (100, 200)) == pytest.approx(3.0 / 150)
    # rotation by phi about the grid centre: every corner moves 2 R sin(phi / 2)
    n, sp, phi = 64, 1.0, 0.05
    centre = np.array([(n - 1) / 2 * sp] * 2)
    to_c = np.eye(3)
    to_c[:2, 2] = -centre
    back = np.eye(3)
    back[:2, 2] = centre
    rot = back @ _rigid(phi, (0, 0)) @ to_c
    radius = np.linalg.norm(centre)
    expected = 2 * radius * math.sin(phi / 2) / (n * sp)
    assert rigid_protocol.corner_relative_distance(rot, np.eye(3), (n, n), (sp, sp)) == pytest.approx(expected)


def test_rigid_success_rate():
    assert rigid_protocol.rigid_success_rate([0.01, 0.03, float("nan"), 0.019]) == 0.5
    assert rigid_protocol.rigid_success_rate([0.05], threshold=0.1) == 1.0
    with pytest.raises(ValueError):
        rigid_protocol.rigid_success_rate([])


# --------------------------------------------------------------------------------------
# TSV output
# --------------------------------------------------------------------------------------
def test_write_rows_tsv_round_trip_and_atomic(tmp_path):
    rows = [
        {"label": 1, "dice": 0.5, "hd95_mm": float("nan"), "status": "ok"},
        {"label": np.int64(2), "dice": np.float32(0.25), "status": "missing_in_test", "extra": None},
    ]
    out = tmp_path / "overlap.tsv"
    out.write_text("stale\n")
    write_rows_tsv(rows, out)
    with open(out, newline="") as fh:
        table = list(csv.reader(fh, delimiter="\t"))
    assert table[0] == ["label", "dice", "hd95_mm", "status", "extra"]
    assert table[1] == ["1", "0.5", "n/a", "ok", "n/a"]
    assert table[2] == ["2", "0.25", "n/a", "missing_in_test", "n/a"]
    assert os.listdir(tmp_path) == ["overlap.tsv"]  # no temporary left behind

    write_rows_tsv(rows[:1], out, columns=["status", "label", "dice", "hd95_mm"])
    assert out.read_text().splitlines()[0] == "status\tlabel\tdice\thd95_mm"
    with pytest.raises(ValueError):
        write_rows_tsv(rows, out, columns=["label"])
    with pytest.raises(ValueError):
        write_rows_tsv([{"a": "x\ty"}], tmp_path / "bad.tsv")
    assert sorted(os.listdir(tmp_path)) == ["overlap.tsv"]

    # overlap rows go straight to a TSV
    ref = np.zeros((10, 10), np.int8)
    ref[2:6, 2:6] = 1
    write_rows_tsv(M.label_overlap(ref, ref, labels=[1, 2]), tmp_path / "o.tsv")
    lines = (tmp_path / "o.tsv").read_text().splitlines()
    assert lines[0].split("\t") == list(M.OVERLAP_COLUMNS)
    assert lines[2].split("\t")[:3] == ["2", "missing_in_both", "n/a"]


@pytest.mark.parametrize("d", [2, 3])
def test_landmark_errors_map_the_fixed_points_through_the_transform(d):
    """TRE through a transform object: |T(p_fixed) - p_moving|, with T the fixed -> moving chain."""
    from inrreg_pipeline.core.transform import AffineTransform, DisplacementField, TransformChain
    from inrreg_pipeline.metrics.landmarks import landmark_errors

    rng = np.random.default_rng(d)
    A = np.eye(d + 1)
    A[:d, d] = [2.0, -1.0, 0.5][:d]
    grid = np.diag([2.0] * d + [1.0])
    grid[:d, d] = -20.0
    u = np.zeros((21,) * d + (d,))
    u[..., 0] = 1.5  # a uniform 1.5 mm shift along x inside the field's grid
    chain = TransformChain([DisplacementField(u, grid), AffineTransform(A)])
    fixed = rng.uniform(-10, 10, size=(7, d))
    moving = fixed + A[:d, d] + np.eye(d)[0] * 1.5
    before, after = landmark_errors(chain, fixed, moving)
    np.testing.assert_allclose(before, np.linalg.norm(A[:d, d] + np.eye(d)[0] * 1.5))
    np.testing.assert_allclose(after, 0.0, atol=1e-12)
    with pytest.raises(ValueError, match="equal shapes"):
        landmark_errors(chain, fixed, moving[:3])
    with pytest.raises(ValueError, match="-D transform"):
        landmark_errors(AffineTransform(np.eye(6 - d)), fixed, moving)  # the other dimension
