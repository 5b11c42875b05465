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
