"""Benchmark harness: report.py (summaries and paired tests on known numbers) and smoke runs of the
suites on small synthetic data made in a temporary folder (the shared datasets are not needed)."""
from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy.stats import wilcoxon

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import dev_rule  # noqa: E402
import report  # noqa: E402

from inrreg_pipeline.io.tsv import write_rows_tsv  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"


# --- dev_rule.py --------------------------------------------------------------------------------

def _dev_rows(path: Path) -> Path:
    """Twelve pairings of sub-01..04: the candidate 0.3 mm lower in HD95 on the six with sub-04 moving
    and unchanged elsewhere; its Dice 0.001 lower and SD log J 0.01 lower everywhere. The baseline's
    rows are under its old name on two pairings (a renamed, adopted preset)."""
    subjects = ["sub-01", "sub-02", "sub-03", "sub-04"]
    rows = []
    for fixed in subjects:
        for moving in subjects:
            if moving == fixed:
                continue
            pair = f"{moving}_to_{fixed}"
            old_name = pair in ("sub-02_to_sub-01", "sub-03_to_sub-01")
            base = {"dice_mean": 0.6, "hd95_mean_mm": 7.0, "sd_log_j": 0.28, "pct_detj_nonpos": 0.0}
            cand = dict(base, dice_mean=0.599, sd_log_j=0.27, hd95_mean_mm=6.0 if moving == "sub-04" else 7.0)
            for method, values in (("svf-old" if old_name else "svf", base), ("candidate", cand)):
                rows += [{"suite": "oasis-trt-20", "split": "dev", "pair": pair, "method": method, "stage": stage,
                          **values} for stage in ("affine", "affine+inr")]
    write_rows_tsv(rows, path)
    return path


def test_dev_rule_catches_a_gain_carried_by_one_subject(tmp_path, capsys):
    """The pooled rule sees a 0.25 mm HD95 gain; with each subject's pairings left out in turn, the
    gain without sub-04 is 0 and the rule fails, as it should have for the two candidates that
    passed on dev and failed on the validation subjects (sessions 15 and 17)."""
    tsv = _dev_rows(tmp_path / "pairs_dev.tsv")
    rule = ["--candidate", "candidate", "--baseline", "svf", "svf-old", "--pairs", "12", "--min-hd95-gain", "0.15",
            "--min-lower", "3", "--max-dice-loss", "0.003", "--max-sd-increase", "0"]
    assert dev_rule.main([str(tsv), *rule]) == 0
    out = capsys.readouterr().out
    assert "12 pairings: Dice -0.0010, HD95 -0.250 mm (lower on 3)" in out and "**The rule holds.**" in out
    assert "sub-04 0.000" in out
    assert dev_rule.main([str(tsv), *rule, "--leave-one-subject-out"]) == 1
    out = capsys.readouterr().out
    assert "without sub-04's pairings the HD95 gain is 0.000 mm, needs 0.15" in out
    assert "without sub-01" not in out  # the gain holds when any other subject is left out
    # the baseline's old name fills its two pairings: without it only ten pairings, and the count fails
    assert dev_rule.main([str(tsv), *[a if a != "svf-old" else "svf" for a in rule]]) == 1
    assert "10 pairings, the rule needs 12" in capsys.readouterr().out


def test_dev_rule_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    tsv = _dev_rows(tmp_path / "pairs_dev.tsv")
    rule = ["--baseline", "svf", "--pairs", "12", "--min-hd95-gain", "0.15", "--min-lower", "8",
            "--max-dice-loss", "0.003", "--max-sd-increase", "0"]
    assert dev_rule.main([str(tmp_path / "none.tsv"), "--candidate", "candidate", *rule]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0
    assert dev_rule.main([str(tsv), "--candidate", "no-such-preset", *rule]) == 2
    assert "no affine+inr rows of 'no-such-preset'" in capsys.readouterr().err


# --- report.py ----------------------------------------------------------------------------------

def rows_from(values: dict[str, list[float]], metric: str = "score", **extra) -> list[dict]:
    return [{"suite": "s", "pair": f"p{i}", "method": m, **extra, metric: v}
            for m, vs in values.items() for i, v in enumerate(vs)]


def test_summary_mean_std_and_missing_values():
    rows = rows_from({"a": [1.0, 2.0, 3.0, math.nan], "b": [10.0, 10.0, 10.0, 10.0]})
    s = {x["method"]: x for x in report.summarise(rows, ["score"])}
    assert s["a"]["n"] == 3 and s["a"]["mean"] == pytest.approx(2.0) and s["a"]["std"] == pytest.approx(np.std([1, 2, 3]))
    assert s["b"]["n"] == 4 and s["b"]["mean"] == 10.0 and s["b"]["std"] == 0.0


def test_paired_comparison_matches_scipy_and_pairs_by_name():
    ref = [0.61, 0.72, 0.55, 0.80, 0.67, 0.70, 0.59, 0.74]
    other = [0.58, 0.70, 0.57, 0.71, 0.60, 0.69, 0.50, 0.70]
    rows = rows_from({"ref": ref, "other": other})
    rows = rows[::-1]  # row order must not matter: pairs are matched by name
    (c,) = report.paired_comparison(rows, "ref", "score")
    d = np.array(ref) - np.array(other)
    assert c["n"] == 8 and c["mean_difference"] == pytest.approx(d.mean())
    assert c["p_value"] == pytest.approx(wilcoxon(d).pvalue)
    assert c["p_value"] < 0.05 and c["note"] == ""


def test_paired_comparison_edge_cases():
    # only one common pair
    rows = rows_from({"ref": [1.0, 2.0], "other": [0.5]})
    (c,) = report.paired_comparison(rows, "ref", "score")
    assert c["n"] == 1 and math.isnan(c["p_value"]) and c["note"] == "n<2"
    # all differences zero
    rows = rows_from({"ref": [1.0, 0.0, 1.0], "other": [1.0, 0.0, 1.0]})
    (c,) = report.paired_comparison(rows, "ref", "score")
    assert c["p_value"] == 1.0 and c["note"] == "all differences zero" and c["mean_difference"] == 0.0
    # some zero differences are dropped (binary success rates)
    rows = rows_from({"ref": [1, 1, 1, 1, 1, 1, 0], "other": [0, 0, 0, 0, 0, 1, 0]})
    (c,) = report.paired_comparison(rows, "ref", "score")
    assert c["n"] == 7 and c["note"] == "2 zero differences dropped"
    assert c["p_value"] == pytest.approx(wilcoxon([1, 1, 1, 1, 1]).pvalue)
    # NaN values leave the pair out
    rows = rows_from({"ref": [1.0, 2.0, math.nan, 4.0], "other": [0.0, 1.0, 2.0, math.nan]})
    (c,) = report.paired_comparison(rows, "ref", "score")
    assert c["n"] == 2 and c["mean_difference"] == 1.0
    # a duplicated pair is an error, not a silent overwrite
    with pytest.raises(ValueError, match="twice"):
        report.paired_comparison(rows + rows, "ref", "score")


def test_write_report_tsv_markdown_and_plots(tmp_path):
    rows = (rows_from({"ref": [0.1, 0.2, 0.3], "other": [0.2, 0.2, 0.5]}, level=1)
            + rows_from({"ref": [0.4, 0.5, 0.6], "other": [0.9, 0.8, 0.7]}, level=2))
    for r in rows:
        r["device"] = "cpu"  # text column: not a metric
    write_rows_tsv(rows, tmp_path / "rows.tsv")
    read = report.read_rows(tmp_path / "rows.tsv")
    assert report.metric_columns(read, exclude=["level"]) == ["score"]
    path = report.write_report(tmp_path / "rows.tsv", tmp_path / "out", reference="ref", strata=["level"])
    text = path.read_text()
    assert "## level = 1" in text and "## level = 2" in text
    assert "| ref | 0.200 ± 0.082 (3) |" in text
    assert "| other | 0.800 ± 0.082 (3) |" in text
    assert "| score | other | 3 | -0.300 | 0.2500 |" in text  # level 2: ref - other = -0.5, -0.3, -0.1 (exact p)
    png = tmp_path / "out" / "box_score.png"
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="stratum"):
        report.write_report(tmp_path / "rows.tsv", tmp_path / "out", strata=["nope"])


# --- suites on synthetic data -------------------------------------------------------------------

def brain_slice(shape=(48, 48)) -> np.ndarray:
    """A small synthetic 'brain' slice: an ellipse with an inner ring and a dark ventricle, asymmetric."""
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    c0, c1 = shape[0] / 2, shape[1] / 2
    r = np.sqrt(((i - c0) / (0.38 * shape[0])) ** 2 + ((j - c1) / (0.3 * shape[1])) ** 2)
    img = np.where(r < 1, 0.5, 0.0) + np.where(r < 0.7, 0.4, 0.0)
    img[(np.abs(i - c0 - 4) < 3) & (np.abs(j - c1 + 2) < 6)] = 0.15  # off-centre ventricle: no symmetry
    img[(np.abs(i - c0 + 8) < 2) & (np.abs(j - c1 - 5) < 2)] = 1.0
    return img.astype(np.float32)


def save(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def test_rigid_2d_motions_and_truth():
    import rigid_2d
    from inrreg_pipeline.core.space import SpatialImage

    fixed = SpatialImage(brain_slice((40, 50)), np.array([[1.5, 0, -10], [0, 1.5, 5], [0, 0, 1]]))
    side = rigid_2d.image_side_mm(fixed)
    assert side == pytest.approx(45 * 1.5)
    for level, ((r_lo, r_hi), (t_lo, t_hi)) in rigid_2d.LEVELS.items():
        t, angle, trans = rigid_2d.draw_motion(fixed, level, 0, 3)
        assert r_lo <= abs(angle) <= r_hi and t_lo * side <= np.linalg.norm(trans) <= t_hi * side
        # the same seed gives the same motion; another slice index another one
        np.testing.assert_array_equal(t, rigid_2d.draw_motion(fixed, level, 0, 3)[0])
        assert not np.allclose(t, rigid_2d.draw_motion(fixed, level, 0, 4)[0])
        # rotation about the field-of-view centre: the centre moves by the translation only
        c = rigid_2d.fov_centre(fixed)
        np.testing.assert_allclose(t[:2, :2] @ c + t[:2, 2], c + trans, atol=1e-9)
    # the moving image is the fixed image pulled through T^-1: M(T x) = F(x) at the centre
    t, _, _ = rigid_2d.draw_motion(fixed, 2, 0, 0)
    moving = rigid_2d.make_moving(fixed, t, "single")
    assert rigid_2d.relative_distance(t, t, fixed) == 0.0
    assert rigid_2d.relative_distance(np.eye(3), t, fixed) > 0.05
    # the remap is non-monotonic: grey levels 0.5 and 0.9 swap order
    v = rigid_2d.t2_like(np.array([0.0, 0.5, 0.9, 1.0], np.float32))
    assert v[0] == 0 and not np.all(np.diff(v) >= 0)
    w = rigid_2d.sin_remap(np.linspace(0, 1, 101).astype(np.float32))
    assert w[0] == 0 and np.sum(np.diff(np.sign(np.diff(w[5:]))) != 0) >= 2  # at least two turning points
    assert moving.shape == fixed.shape


@pytest.mark.slow
def test_rigid_2d_suite_smoke(tmp_path):
    data = tmp_path / "slices"
    rng = np.random.default_rng(0)
    for k in range(2):
        save(brain_slice() + 0.02 * rng.random((48, 48), dtype=np.float32), np.eye(4), data / f"s{k}.nii.gz")
    preset = json.loads((ROOT / "inrreg_pipeline/core/presets/two-network-rigid.json").read_text())
    preset["two_network"]["iterations"] = 30
    preset["two_network"]["points"] = 256
    (tmp_path / "tiny.json").write_text(json.dumps(preset))
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/rigid_2d.py"), "--data", str(data), "--out", str(out),
                    "--slices", "1", "--levels", "1", "--two-network-preset", str(tmp_path / "tiny.json")],
                   check=True, cwd=ROOT)
    rows = report.read_rows(out / "rigid-2d.tsv")
    assert len(rows) == 1 * 1 * 2 * 3
    assert {r["method"] for r in rows} == {"two-network", "inr-affine", "ants-rigid"}
    for r in rows:
        assert not isinstance(r["error"], str), r["error"]  # an empty cell reads as NaN: no method raised
        assert np.isfinite(r["relative_distance"]) and r["success"] in (0.0, 1.0)
    # ANTs rigid recovers a level-1 motion of this simple image
    assert all(r["success"] == 1.0 for r in rows if r["method"] == "ants-rigid" and r["modality"] == "single")
    assert "| single | 1 | ants-rigid | 1 |" in (out / "levels.md").read_text()
    assert (out / "summary.md").exists() and (out / "box_success.png").exists()


def test_brats_landmark_mapping(tmp_path):
    """phi(p) = A(p + u(p)) with ANTs files: a known affine and a constant warp."""
    import brats_longitudinal as bl

    from inrreg_pipeline.io.itk import write_ants_displacement_field, write_itk_affine

    a = np.eye(4)
    a[:3, 3] = [1.0, -2.0, 3.0]
    write_itk_affine(tmp_path / "a.mat", a)
    grid = np.diag([2.0, 2.0, 2.0, 1.0])
    grid[:3, 3] = -20
    field = np.zeros((21, 21, 21, 3))
    field[..., 0] = 0.5
    write_ants_displacement_field(tmp_path / "w.nii.gz", field, grid)
    p = np.array([[0.0, 0.0, 0.0], [5.0, -3.0, 1.0]])
    np.testing.assert_allclose(bl.map_points(p, tmp_path / "a.mat", tmp_path / "w.nii.gz"),
                               p + [1.5, -2.0, 3.0], atol=1e-5)


@pytest.mark.slow
def test_brats_suite_smoke(tmp_path):
    """The suite on a synthetic two-session dataset: follow-up = baseline shifted by 4 mm, landmarks
    shifted with it; the two-network method (few iterations) must run end to end and the identity's
    TRE must equal the shift."""
    data = tmp_path / "brats"
    sub, shift = "001", np.array([4.0, 0.0, 0.0])
    vol = np.repeat(brain_slice((32, 32))[:, :, None], 20, axis=2) * np.hanning(22)[1:21][None, None, :]
    base_aff = np.diag([2.0, 2.0, 2.0, 1.0])
    base_aff[:3, 3] = [-32, -32, -20]
    follow_aff = base_aff.copy()
    follow_aff[:3, 3] += shift  # same content 4 mm further along +x (RAS)
    for ses, aff in (("baseline", base_aff), ("followup", follow_aff)):
        for c in ("T1w", "T2w"):
            save(vol if c == "T1w" else 1.0 - vol * (vol > 0), aff, data / f"sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}_{c}.nii.gz")
    lm_ras = np.array([[0.0, 0.0, 0.0], [6.0, -4.0, 2.0], [-8.0, 5.0, -4.0]])
    for ses, pts in (("baseline", lm_ras), ("followup", lm_ras + shift)):
        path = data / f"derivatives/landmarks/sub-{sub}/ses-{ses}/anat/sub-{sub}_ses-{ses}_landmarks.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("Landmark,X,Y,Z\n" + "".join(f"{k + 1},{-x},{-y},{z}\n" for k, (x, y, z) in enumerate(pts)))
    preset = json.loads((ROOT / "inrreg_pipeline/core/presets/two-network-deformable.json").read_text())
    preset["two_network"]["iterations"] = 20
    preset["two_network"]["points"] = 256
    (tmp_path / "tiny.json").write_text(json.dumps(preset))
    out = tmp_path / "out"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/brats_longitudinal.py"), "--data", str(data),
                    "--out", str(out), "--spacing", "0", "--contrasts", "T1w", "--methods", "two-network",
                    "--preset-override", f"two-network={tmp_path / 'tiny.json'}"], check=True, cwd=ROOT)
    rows = report.read_rows(out / "brats-longitudinal.tsv")
    assert [r["method"] for r in rows] == ["none", "two-network"]
    assert rows[0]["tre_mean_mm"] == pytest.approx(4.0) and rows[0]["tre_max_mm"] == pytest.approx(4.0)
    assert np.isfinite(rows[1]["tre_mean_mm"]) and rows[1]["runtime_s"] > 0
    assert len(report.read_rows(out / "landmarks.tsv")) == 6
    assert "two-network" in (out / "summary.md").read_text()


@pytest.mark.skipif(not (SHARED / "oasis-2d").is_dir(), reason="shared oasis-2d data not present")
def test_rigid_2d_real_slice_ants_level1(tmp_path):
    """On one real OASIS slice, level 1 single-modal: ANTs rigid succeeds (checks the truth convention
    on real data: a wrong direction would fail)."""
    import rigid_2d
    from inrreg_pipeline.io.images import load_image

    fixed = load_image(sorted((SHARED / "oasis-2d").glob("*.nii.gz"))[0], ndim=2)
    t, _, _ = rigid_2d.draw_motion(fixed, 2, 0, 0)
    moving = rigid_2d.make_moving(fixed, t, "single")
    args = copy.copy(type("A", (), {"seed": 0})())
    est = rigid_2d.run_ants_rigid(fixed, moving, "single", args, None)
    assert rigid_2d.relative_distance(est, t, fixed) < 0.02
    assert rigid_2d.relative_distance(np.linalg.inv(est), t, fixed) > 0.02


def _oasis_like_dataset(tmp_path):
    """Two subjects shaped like OASIS-TRT-20 (T1w + DKT31 and DKT31full dseg) and a tiny preset file."""
    data = tmp_path / "oasis-like"
    base = np.repeat(brain_slice((32, 32))[:, :, None], 16, axis=2) * np.hanning(18)[1:17][None, None, :]
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    aff[:3, 3] = [-32, -32, -16]
    for k, sub in enumerate(("01", "02")):
        vol = np.roll(base, k, axis=0)
        labels = (vol > 0.3).astype(np.int16) + (vol > 0.7).astype(np.int16)  # 1 outer ring, 2 inner core
        save(vol.astype(np.float32), aff, data / f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz")
        for label_set, lab in (("DKT31", labels), ("DKT31full", labels + (vol > 0.1) * (labels == 0) * 3)):
            save(lab.astype(np.int16), aff,
                 data / f"derivatives/manual-labels/sub-{sub}/anat/sub-{sub}_desc-{label_set}_dseg.nii.gz")
    preset = json.loads((ROOT / "inrreg_pipeline/core/presets/fast.json").read_text())
    preset["optimisation"].update(iterations=15, patches=2, patch_size=8, regulariser_points=256)
    preset["affine"].update(iterations=[10], shrink_factors=[1], rigid_iterations=10, samples=2000)
    (tmp_path / "tiny.json").write_text(json.dumps(preset))
    return data, tmp_path / "tiny.json"


def test_oasis_pairs_on_another_dataset_of_the_same_shape_and_resume(tmp_path):
    """The OASIS harness runs unchanged on any BIDS folder shaped like OASIS-TRT-20 (T1w + manual
    labels in two label sets), writes every metric per pair and stage, and ``--reuse`` re-scores
    finished registrations without registering again."""
    data, tiny = _oasis_like_dataset(tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "benchmarks/oasis_pairs.py"), "--data", str(data), "--out", str(out),
           "--fixed", "01", "--moving", "02", "--spacing", "0", "--preset", str(tiny),
           "--threads", "1"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    rows = report.read_rows(out / "pairs.tsv")
    assert [(r["pair"], r["method"], r["stage"]) for r in rows] == [
        ("sub-02_to_sub-01", "tiny", s) for s in ("affine", "affine+inr")]  # a preset file by its name
    for r in rows:
        assert 0 < r["dice_mean"] <= 1 and 0 < r["dice_mean_full"] <= 1 and r["n_labels"] == 2
        assert 0 <= r["pct_detj_nonpos"] <= 100 and r["sd_log_j"] >= 0 and np.isfinite(r["hd95_mean_mm"])
    meta = out / "tiny" / "sub-02_to_sub-01_registration.json"
    stamp = meta.stat().st_mtime_ns
    subprocess.run(cmd + ["--reuse"], check=True, cwd=ROOT)
    assert meta.stat().st_mtime_ns == stamp, "--reuse must not register again"
    again = report.read_rows(out / "pairs.tsv")
    assert [r["dice_mean"] for r in again] == [r["dice_mean"] for r in rows]
    assert (out / "summary.md").exists()
    # another seed is another row name, and the registration ran with it (the seed study of issue 14)
    seeded = tmp_path / "seeded"
    subprocess.run([str(seeded) if a == str(out) else a for a in cmd] + ["--seed", "7"], check=True, cwd=ROOT)
    assert {r["method"] for r in report.read_rows(seeded / "pairs.tsv")} == {"tiny-seed7"}
    assert json.loads((seeded / "tiny-seed7" / "sub-02_to_sub-01_registration.json").read_text())["seed"] == 7


def test_the_validation_split_shares_no_subject_with_the_tuning_split():
    """Issue 14's protocol: the subjects tuning may look at never appear in the reported pairs, and the
    validation split is the eight pairs it names."""
    import oasis_pairs

    dev = {s for pair in oasis_pairs.SPLITS["dev"] for s in pair}
    validation = {s for pair in oasis_pairs.SPLITS["validation"] for s in pair}
    assert dev == {"01", "02", "03", "04", "05"} and not dev & validation
    assert len(oasis_pairs.SPLITS["validation"]) == len(set(oasis_pairs.SPLITS["validation"])) == 8
    assert all(f != m for f, m in oasis_pairs.SPLITS["validation"])
    assert {f for f, _ in oasis_pairs.SPLITS["validation"]} == {"06", "07"}


def test_trade_off_plot_has_one_point_per_method(tmp_path):
    rows = [{"suite": "s", "pair": f"p{i}", "method": m, "stage": "affine+inr", "dice_mean": d + 0.01 * i,
             "sd_log_j": j} for i in range(3) for m, d, j in (("a", 0.5, 0.3), ("b", 0.6, 0.4))]
    path = report.trade_off_plot(rows, tmp_path, where={"stage": "affine+inr"})
    assert path.exists() and path.stat().st_size > 1000


def test_profile_pair_accounts_for_the_stages_of_a_registration(tmp_path):
    """The profiling benchmark runs the real ``inrreg register`` path and attributes its wall time to
    the stages (each measured once, none larger than the whole) and extrapolates the deformable stage."""
    data, tiny = _oasis_like_dataset(tmp_path)
    out = tmp_path / "profile"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/profile_pair.py"), "--data", str(data), "--out", str(out),
                    "--spacing", "0", "--preset", str(tiny), "--iterations", "5", "--threads", "1"],
                   check=True, cwd=ROOT)
    result = json.loads((out / "profile.json").read_text())
    parts = result["parts"]
    assert parts["affine stage"]["calls"] == 1 and parts["deformable stage"]["calls"] == 1
    assert parts["write ANTs/ITK outputs"]["calls"] == 1
    assert parts["dense: Jacobian determinant (finite differences)"]["calls"] == 1
    assert parts["write: warps (1Warp, 1InverseWarp)"]["calls"] == 2
    assert parts["write: images (Warped, InverseWarped, jacobian)"]["calls"] == 3
    assert all(0 < p["seconds"] <= result["wall_s"] for p in parts.values())
    written = sum(p["seconds"] for name, p in parts.items() if name.startswith("write: "))
    assert written <= parts["write ANTs/ITK outputs"]["seconds"] + 1e-6
    assert 0 < result["dense_share"] < result["dense_plus_writing_share"] < 1
    assert result["iterations_profiled"] == 5 and result["preset_iterations"] == 15
    assert result["full_preset_wall_s_extrapolated"] > result["wall_s"]
    assert result["fixed_shape"] == [32, 32, 16]
    assert (out / "pair_1Warp.nii.gz").exists() and "| deformable stage |" in (out / "profile.md").read_text()


def test_profile_pair_attributes_the_svf_stages_and_shortens_every_level(tmp_path):
    """For ``svf`` the deformable stage and the dense field are its own functions, its inverse is
    integrated (no fixed-point inverse runs), and ``--iterations`` shortens each level in proportion."""
    data, _ = _oasis_like_dataset(tmp_path)
    preset = {"base": "svf", "affine": {"iterations": [10], "shrink_factors": [1], "rigid_iterations": 10,
                                        "samples": 2000},
              "network": {"hidden_features": 16},
              "svf": {"iterations": [8, 12, 20], "level_control_spacing_mm": [8.0, 8.0, 8.0]}}
    (tmp_path / "tiny-svf.json").write_text(json.dumps(preset))
    out = tmp_path / "profile"
    subprocess.run([sys.executable, str(ROOT / "benchmarks/profile_pair.py"), "--data", str(data), "--out", str(out),
                    "--spacing", "0", "--preset", str(tmp_path / "tiny-svf.json"), "--iterations", "10",
                    "--threads", "1"], check=True, cwd=ROOT)
    result = json.loads((out / "profile.json").read_text())
    parts = result["parts"]
    assert parts["deformable stage"]["function"] == "fit_svf" and parts["deformable stage"]["calls"] == 1
    assert parts["dense: displacement field"]["function"] == "dense_fields"
    assert parts["dense: numerical inverse"]["calls"] == 0
    assert result["iterations_profiled"] == 10 and result["preset_iterations"] == 40


def test_benchmark_variant_presets_are_their_base_plus_one_variant():
    """``benchmarks/presets/default-*.json`` differ from ``default`` only in the variant they name,
    ``fast-<activation>.json`` from ``fast`` only in the activation, so the variants tables compare
    like with like."""
    from helpers import differing_sections

    from inrreg_pipeline.core import load_preset
    from inrreg_pipeline.core.networks import ACTIVATIONS

    folder = Path(__file__).parents[1] / "benchmarks" / "presets"
    base = load_preset("default").to_dict()
    files = sorted(folder.glob("default-*.json"))
    assert len(files) == 8
    variants = set()
    for path in files:
        settings = load_preset(str(path)).to_dict()
        differing = differing_sections(base, settings)
        assert differing and differing <= {"method", "variants"}, path.name
        variants.add((settings["method"], json.dumps(settings["variants"], sort_keys=True)))
    assert len(variants) == len(files)  # no two files run the same variant
    fast = load_preset("fast").to_dict()
    activations = set()
    for path in sorted(folder.glob("fast-*.json")):  # fast-<activation> and the research variants fast-<variant>
        settings = load_preset(str(path)).to_dict()
        if settings["method"] != fast["method"] or settings["variants"] != fast["variants"]:
            assert differing_sections(fast, settings) <= {"method", "variants"}, path.name
            continue
        assert differing_sections(fast, settings) == {"network"}, path.name
        assert {k for k in fast["network"] if fast["network"][k] != settings["network"][k]} == {"activation"}
        activations.add(settings["network"]["activation"])
    assert activations | {fast["network"]["activation"]} == set(ACTIVATIONS)  # every activation on OASIS


def test_gpu_check_cpu_smoke_writes_its_json(tmp_path):
    """``benchmarks/gpu_check.py --cpu-smoke`` (what ``make gpu-check`` runs on a device, shrunk) runs
    the CUDA-marked tests (skipped without CUDA), registers its pair and writes every figure the
    device run reports."""
    out = tmp_path / "gpu"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu_check.py"), "--cpu-smoke", "--presets", "svf",
                    "--out", str(out)], check=True, cwd=ROOT, env=env, timeout=600)
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "cpu-smoke" and report["device"] == "cpu"
    assert {"device_name", "torch_version", "versions", "wall_s", "tests", "pair", "methods"} <= set(report)
    tests = report["tests"]
    assert tests["status"] == "ok" and tests["tests"] >= 5 and tests["failures"] == tests["errors"] == 0
    import torch

    if not torch.cuda.is_available():
        assert tests["skipped"] == tests["tests"]
    assert report["pair"]["status"] == "ok" and report["pair"]["shape"] == [32, 32, 20]
    row = report["methods"]["svf"]
    assert row["status"] == "ok", row
    assert set(row["seconds"]) == {"affine", "deformable", "dense_outputs", "registration_total",
                                   "registration_wall", "writing"}
    assert all(v is not None and v >= 0 for v in row["seconds"].values())
    assert "peak_gpu_mb" in row and row["peak_rss_mb"] > 0
    assert set(row["error_mm"]) == {"before_mean", "mean", "p95", "max"} and set(row["dice"]) == {"before", "after"}
    # even six iterations move the moving image towards the fixed one
    assert row["error_mm"]["mean"] < row["error_mm"]["before_mean"]
    assert row["dice"]["after"] > row["dice"]["before"]


def test_every_research_preset_loads_and_says_what_it_tests():
    """The results pages give ``--preset benchmarks/presets/NAME.json`` commands for every variant
    they report, and many presets are a base plus one change (``"base": "svf-session15.json"``): each
    file must still resolve through its bases and pass validation, or a reader cannot rerun the row,
    and each must carry a description saying what it tests."""
    from inrreg_pipeline.core import load_preset

    files = sorted((ROOT / "benchmarks" / "presets").glob("*.json"))
    assert len(files) > 40
    for path in files:
        settings = load_preset(str(path))
        assert settings.name == path.stem, path.name
        assert len(settings.description) > 40, f"{path.name} does not say what it tests"
