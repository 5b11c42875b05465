"""``inrreg evaluate``: label overlap (and transform quality) between fixed labels and warped labels.

The TSV has one row per label (``row = label``: Dice, Jaccard, volumes, HD95, ASSD in mm, and a
``status`` that names labels missing on one side) followed by summary rows (``row = summary``,
the statistic in ``name`` and its value in ``value``).
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .io.images import InputError, check_outputs_not_inputs, load_image, load_mask
from .io.tsv import write_rows_tsv
from .metrics import (OVERLAP_COLUMNS, folding_fraction, label_overlap, log_jacobian_std, spacing_from_affine,
                      summarise_overlap)

COLUMNS = ("row", "label", "name") + tuple(c for c in OVERLAP_COLUMNS if c != "label") + ("value",)


def read_label_table(path: str) -> dict[int, str]:
    """A BIDS ``*_dseg.tsv`` (tab-separated, columns ``index`` and ``name``, one row per label) as
    {label: name}; :class:`InputError` for anything else (a folder, a binary file, no label rows, a
    row without a name or with an index that is not an integer, an index listed twice)."""
    where = f"label table '{path}'"
    columns = "needs tab-separated 'index' and 'name' columns"
    if Path(path).is_dir():
        raise InputError(f"{where} is a directory, not a TSV file")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh, delimiter="\t")
            rows = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise InputError(f"{where} does not exist") from None
    except UnicodeDecodeError:
        raise InputError(f"{where} is not a text (TSV) file") from None
    except (OSError, csv.Error) as err:
        raise InputError(f"{where} cannot be read ({getattr(err, 'strerror', None) or err})") from None
    if "index" not in header or "name" not in header:
        raise InputError(f"{where} {columns} (header: {chr(9).join(header)[:60]!r})")
    if not rows:
        raise InputError(f"{where} has no label rows")
    names: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        index, name = row.get("index"), row.get("name")
        try:
            label = int(index)
        except (TypeError, ValueError):
            raise InputError(f"{where} line {line}: index {index!r} is not an integer") from None
        if name is None or not name.strip():
            raise InputError(f"{where} line {line}: label {label} has no name ({columns})")
        if label in names:
            raise InputError(f"{where} line {line}: label {label} is listed twice")
        names[label] = name
    return names


def evaluate_labels(fixed_labels: str, warped_labels: str, output: str, labels_tsv: str | None = None,
                    jacobian: str | None = None, mask: str | None = None) -> tuple[list[dict], dict]:
    """Compute the rows, write ``output`` (TSV) and return ``(label_rows, summary)``."""
    if Path(output).is_dir():
        raise InputError(f"output '{output}' is a directory; give a file name ending in .tsv")
    if not output.endswith(".tsv"):
        raise InputError(f"output '{output}' must end in .tsv")
    parent = Path(output).resolve().parent
    if not parent.is_dir():
        raise InputError(f"output directory '{Path(output).parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to output directory '{Path(output).parent}' (permission denied)")
    check_outputs_not_inputs([output], {"label table": labels_tsv, "fixed labels": fixed_labels,
                                        "warped labels": warped_labels, "jacobian": jacobian, "mask": mask})
    names = read_label_table(labels_tsv) if labels_tsv else {}  # before any work
    ref = load_image(fixed_labels, "fixed labels")
    test = load_image(warped_labels, "warped labels", ndim=ref.ndim)
    if ref.shape != test.shape or not np.allclose(ref.affine, test.affine, atol=1e-3):
        raise InputError(f"warped labels '{warped_labels}' are not on the grid of the fixed labels '{fixed_labels}' "
                         "(resample them with inrreg apply -r FIXED)")
    ref_lab, test_lab = np.rint(ref.data).astype(np.int64), np.rint(test.data).astype(np.int64)
    selected = sorted(names) if names else None
    rows = label_overlap(ref_lab, test_lab, labels=selected, spacing=spacing_from_affine(ref.affine))
    summary = summarise_overlap(rows)
    if jacobian:
        jac = load_image(jacobian, "jacobian", ndim=ref.ndim)
        if jac.shape != ref.shape:
            raise InputError(f"jacobian '{jacobian}' is not on the grid of the fixed labels")
        region = load_mask(mask, ref, "mask") if mask else ref_lab > 0
        summary["percent_det_jacobian_nonpositive"] = folding_fraction(jac.data, region)
        summary["sd_log_jacobian"] = log_jacobian_std(jac.data, region)
    out_rows = [{"row": "label", "name": names.get(int(r["label"]), ""), **r} for r in rows]
    out_rows += [{"row": "summary", "name": key, "value": value} for key, value in summary.items()
                 if isinstance(value, (int, float)) and not isinstance(value, bool)]
    write_rows_tsv(out_rows, output, columns=COLUMNS)
    return rows, summary
