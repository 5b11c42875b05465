"""``inrreg evaluate``: per-label and summary rows a user can read back, and clear input errors."""
from __future__ import annotations

import csv
import os

import nibabel as nib
import numpy as np
import pytest

from inrreg_pipeline.cli import main


def _save(path, data, spacing=(2.0, 1.0, 1.5)):
    img = nib.Nifti1Image(np.asarray(data), np.diag(list(spacing) + [1.0]))
    nib.save(img, str(path))
    return str(path)


@pytest.fixture
def labels(tmp_path):
    ref = np.zeros((20, 20, 20), np.int16)
    ref[2:10, 2:10, 2:10] = 1      # 8^3 cube
    ref[12:18, 12:18, 12:18] = 2   # 6^3 cube
    test = np.zeros_like(ref)
    test[4:12, 2:10, 2:10] = 1     # shifted by 2 voxels = 4 mm along axis 0
    test[12:18, 12:18, 12:18] = 2  # identical
    table = tmp_path / "dseg.tsv"
    table.write_text("index\tname\n1\tcube\n2\tsmall-cube\n3\tabsent\n")
    return _save(tmp_path / "ref.nii.gz", ref), _save(tmp_path / "test.nii.gz", test), str(table), tmp_path


def read_rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_evaluate_writes_label_and_summary_rows(labels, capsys):
    ref, test, table, tmp = labels
    jac = _save(tmp / "jac.nii.gz", np.where(np.arange(20)[:, None, None] < 1, -0.5, 1.0) * np.ones((20, 20, 20)))
    out = tmp / "eval.tsv"
    assert main(["evaluate", "--fixed-labels", ref, "--warped-labels", test, "--labels-tsv", table,
                 "--jacobian", jac, "-o", str(out)]) == 0
    rows = read_rows(out)
    by_label = {r["label"]: r for r in rows if r["row"] == "label"}
    assert float(by_label["1"]["dice"]) == pytest.approx(6 / 8)   # overlap 6 of 8 slabs
    assert float(by_label["1"]["hd95_mm"]) == pytest.approx(4.0)   # 2 voxels x 2 mm
    assert float(by_label["2"]["dice"]) == 1.0
    assert by_label["3"]["status"] == "missing_in_both" and by_label["1"]["name"] == "cube"
    summary = {r["name"]: float(r["value"]) for r in rows if r["row"] == "summary"}
    assert summary["mean_dice"] == pytest.approx((0.75 + 1.0) / 2)
    assert summary["min_dice"] == pytest.approx(0.75)
    assert summary["percent_det_jacobian_nonpositive"] == 0.0  # the folded slab lies outside the labels
    assert "Dice mean 0.8750" in capsys.readouterr().out


def test_evaluate_refuses_labels_on_another_grid(labels, capsys):
    ref, _, _, tmp = labels
    other = _save(tmp / "other.nii.gz", np.zeros((10, 10, 10), np.int16))
    assert main(["evaluate", "--fixed-labels", ref, "--warped-labels", other, "-o", str(tmp / "e.tsv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not on the grid" in err[0]
    assert not (tmp / "e.tsv").exists()


@pytest.mark.parametrize("where", ["folder", "folder-named-tsv", "read-only-folder"])
def test_evaluate_refuses_an_output_it_cannot_write(labels, capsys, where):
    """``-o`` naming a folder, or a file in a folder it cannot write: exit 2, one line, before any work."""
    ref, test, _, tmp = labels
    if where == "read-only-folder":
        if os.geteuid() == 0:
            pytest.skip("root ignores directory permissions")
        folder = tmp / "ro"
        folder.mkdir()
        folder.chmod(0o500)
        output, word = folder / "e.tsv", "cannot write"
    else:
        output = tmp / ("results" if where == "folder" else "results.tsv")
        output.mkdir()
        word = "is a directory"
    try:
        code = main(["evaluate", "--fixed-labels", ref, "--warped-labels", test, "-o", str(output)])
    finally:
        (tmp / "ro").chmod(0o700) if (tmp / "ro").exists() else None
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and word in err[0], err
    assert not (tmp / "ro" / "e.tsv").exists()


@pytest.mark.parametrize("content, word", [
    ("", "'index' and 'name'"),                                   # empty file: all labels were evaluated
    ("index\tname\n", "no label rows"),                           # header only: likewise
    ("index,name\n1,cube\n", "'index' and 'name'"),               # CSV, not TSV
    ("index\tname\n1\n", "has no name"),                           # a row without its name
    ("index\tname\none\tcube\n", "not an integer"),
    ("index\tname\n1\tcube\n1\tagain\n", "listed twice"),
    (b"\x1f\x8b\x08\x00\xff\xfe binary", "not a text"),              # e.g. a .nii.gz given by mistake
    (None, "is a directory"),
], ids=["empty", "header-only", "csv", "no-name", "bad-index", "duplicate", "binary", "directory"])
def test_evaluate_refuses_a_label_table_that_is_not_a_dseg_tsv(labels, capsys, content, word):
    """--labels-tsv must be a BIDS dseg.tsv: anything else is refused (exit 2, one line) before any
    work, not accepted silently (an empty table evaluated every label) or failed as an internal error."""
    ref, test, _, tmp = labels
    table = tmp / "bad_dseg.tsv"
    if content is None:
        table.mkdir()
    elif isinstance(content, bytes):
        table.write_bytes(content)
    else:
        table.write_text(content)
    out = tmp / "e.tsv"
    code = main(["evaluate", "--fixed-labels", ref, "--warped-labels", test, "--labels-tsv", str(table),
                 "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and word in err[0], err
    assert not out.exists()


def test_evaluate_refuses_to_overwrite_its_label_table(labels, capsys):
    ref, test, table, _ = labels
    before = open(table).read()
    assert main(["evaluate", "--fixed-labels", ref, "--warped-labels", test, "--labels-tsv", table,
                 "-o", table]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "overwritten" in err[0], err
    assert open(table).read() == before


# ------------------------------------------------------------------------------------------
# landmarks through transform files (inrreg_pipeline.evaluate.evaluate_landmarks)
# ------------------------------------------------------------------------------------------
def _landmark_files(tmp_path):
    """ITK/ANTs point CSVs (LPS): fixed points and the moving points an affine A sends them to."""
    from inrreg_pipeline.io.itk import write_itk_affine

    rng = np.random.default_rng(0)
    fixed_ras = rng.uniform(-40, 40, size=(6, 3))
    A = np.eye(4)
    A[:3, :3] = [[0.98, -0.17, 0.0], [0.17, 0.98, 0.0], [0.0, 0.0, 1.05]]
    A[:3, 3] = [3.0, -2.0, 5.0]
    moving_ras = fixed_ras @ A[:3, :3].T + A[:3, 3]
    paths = {}
    for name, pts in (("fixed", fixed_ras), ("moving", moving_ras)):
        lps = pts * [-1.0, -1.0, 1.0]
        rows = "".join(f"{p[0]},{p[1]},{p[2]},0,{i + 1},\n" for i, p in enumerate(lps))
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text("x,y,z,t,label,comment\n" + rows)
    write_itk_affine(tmp_path / "0GenericAffine.mat", A)
    write_itk_affine(tmp_path / "inverse.mat", np.linalg.inv(A))
    return str(paths["fixed"]), str(paths["moving"]), tmp_path, np.linalg.norm(moving_ras - fixed_ras, axis=1)


def test_evaluate_landmarks_through_transform_files(tmp_path):
    from inrreg_pipeline.evaluate import evaluate_landmarks

    fixed, moving, tmp, initial = _landmark_files(tmp_path)
    for spec in (str(tmp / "0GenericAffine.mat"), f"[{tmp / 'inverse.mat'},1]"):
        before, after, summary = evaluate_landmarks(fixed, moving, [spec], str(tmp / "tre.tsv"))
        np.testing.assert_allclose(before, initial, atol=1e-9)
        assert after.max() < 1e-6 and summary["tre_n"] == 6
        assert summary["tre_initial_mean_mm"] == pytest.approx(initial.mean())
    rows = read_rows(tmp / "tre.tsv")
    assert [r["row"] for r in rows[:6]] == ["landmark"] * 6 and rows[0]["landmark"] == "1"
    assert float(rows[2]["initial_error_mm"]) == pytest.approx(initial[2])
    assert {r["name"] for r in rows if r["row"] == "summary"} >= {"tre_mean_mm", "tre_max_mm", "tre_initial_mean_mm"}
    # an identity (the wrong file) leaves the initial distances
    _, after, _ = evaluate_landmarks(fixed, moving, [f"[{tmp / 'inverse.mat'},0]"], str(tmp / "tre.tsv"))
    assert after.min() > 1.0


@pytest.mark.parametrize("case, match", [
    ("no-transform", "at least one transform"),
    ("missing-transform", "does not exist"),
    ("2d-transform", "cannot read the transforms"),
    ("bad-landmarks", "fixed landmarks"),
    ("output-is-input", "output"),
])
def test_evaluate_landmarks_refuses_bad_input(tmp_path, case, match):
    from inrreg_pipeline.evaluate import evaluate_landmarks
    from inrreg_pipeline.io.images import InputError
    from inrreg_pipeline.io.itk import write_itk_affine

    fixed, moving, tmp, _ = _landmark_files(tmp_path)
    transforms, output = [str(tmp / "0GenericAffine.mat")], str(tmp / "tre.tsv")
    if case == "no-transform":
        transforms = []
    elif case == "missing-transform":
        transforms = [str(tmp / "missing.mat")]
    elif case == "2d-transform":
        write_itk_affine(tmp / "2d.mat", np.eye(3))
        transforms = [str(tmp / "2d.mat")]
    elif case == "bad-landmarks":
        (tmp / "bad.csv").write_text("a,b\n1,2\n")
        fixed = str(tmp / "bad.csv")
    else:
        output = str(tmp / "fixed.tsv")
        os.link(fixed, output)
    with pytest.raises(InputError, match=match):
        evaluate_landmarks(fixed, moving, transforms, output)
