"""``inrreg evaluate``: label overlap (and transform quality) between fixed labels and warped labels,
and the target registration error of landmarks mapped through transform files.

The label TSV has one row per label (``row = label``: Dice, Jaccard, volumes, HD95, ASSD in mm, and
a ``status`` that names labels missing on one side) followed by summary rows (``row = summary``,
the statistic in ``name`` and its value in ``value``). The landmark TSV
(:func:`evaluate_landmarks`) has one row per landmark (``row = landmark``: its number, the
distance before and after registration in mm) and the same kind of summary rows.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from .io.images import InputError, check_outputs_not_inputs, load_image, load_mask
from .io.itk import parse_transform_spec, read_transform_chain
from .io.landmarks import read_landmarks
from .io.tsv import write_rows_tsv
from .metrics import (OVERLAP_COLUMNS, folding_fraction, label_overlap, log_jacobian_std, spacing_from_affine,
                      summarise_overlap, tre_summary)
from .metrics.landmarks import landmark_errors

COLUMNS = ("row", "label", "name") + tuple(c for c in OVERLAP_COLUMNS if c != "label") + ("value",)
LANDMARK_COLUMNS = ("row", "landmark", "initial_error_mm", "error_mm", "name", "value")


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


def _check_tsv_output(output: str) -> None:
    if Path(output).is_dir():
        raise InputError(f"output '{output}' is a directory; give a file name ending in .tsv")
    if not output.endswith(".tsv"):
        raise InputError(f"output '{output}' must end in .tsv")
    parent = Path(output).resolve().parent
    if not parent.is_dir():
        raise InputError(f"output directory '{Path(output).parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"cannot write to output directory '{Path(output).parent}' (permission denied)")


def evaluate_landmarks(fixed_landmarks: str, moving_landmarks: str, transforms: list[str], output: str,
                       convention: str = "auto") -> tuple[np.ndarray, np.ndarray, dict]:
    """Target registration error of corresponding landmarks through a fixed -> moving transform list.

    ``transforms``: ``-t`` arguments in antsApplyTransforms order (``P1Warp.nii.gz``,
    ``P0GenericAffine.mat``, or ``PComposite.h5``; ``[file,1]`` inverts a linear transform), read into
    one :class:`~inrreg_pipeline.core.transform.TransformChain`; the fixed landmarks are mapped by it
    and compared with the moving ones (:func:`inrreg_pipeline.metrics.landmarks.landmark_errors`).
    ``convention``: the landmark files' frame (``auto``: LPS for the ITK/ANTs and BraTS-Reg layouts,
    :func:`inrreg_pipeline.io.landmarks.read_landmarks`). Writes ``output`` (TSV) and returns
    ``(initial_errors_mm, errors_mm, summary)``; :class:`InputError` (one line) for bad input.
    """
    _check_tsv_output(output)
    if not transforms:
        raise InputError("at least one transform (-t) is needed")
    chain_specs = [parse_transform_spec(t) for t in transforms]
    check_outputs_not_inputs([output], {"fixed landmarks": fixed_landmarks, "moving landmarks": moving_landmarks,
                                        **{f"transform {i + 1}": p for i, (p, _) in enumerate(chain_specs)}})
    points = {}
    for name, path in (("fixed landmarks", fixed_landmarks), ("moving landmarks", moving_landmarks)):
        try:
            points[name] = read_landmarks(path, convention)
        except (OSError, ValueError) as err:
            raise InputError(f"{name}: {str(err).splitlines()[0]}") from None
    fixed, moving = points["fixed landmarks"], points["moving landmarks"]
    if fixed.shape != moving.shape:
        raise InputError(f"moving landmarks '{moving_landmarks}' hold {len(moving)} {moving.shape[1]}-D points, "
                         f"fixed landmarks '{fixed_landmarks}' {len(fixed)} {fixed.shape[1]}-D points")
    try:
        chain = read_transform_chain(chain_specs, fixed.shape[1])
    except FileNotFoundError as err:
        raise InputError(f"transform '{err}' does not exist") from None
    except (ValueError, RuntimeError) as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise InputError(f"cannot read the transforms {', '.join(p for p, _ in chain_specs)}: "
                         f"{lines[-1] if lines else type(err).__name__}") from None
    before, after = landmark_errors(chain, fixed, moving)
    summary = {**{f"tre_{k}": v for k, v in tre_summary(after).items()},
               "tre_initial_mean_mm": float(before.mean())}
    rows = [{"row": "landmark", "landmark": i + 1, "initial_error_mm": float(b), "error_mm": float(a)}
            for i, (b, a) in enumerate(zip(before, after))]
    rows += [{"row": "summary", "name": key, "value": value} for key, value in summary.items()]
    write_rows_tsv(rows, output, columns=LANDMARK_COLUMNS)
    return before, after, summary


def evaluate_labels(fixed_labels: str, warped_labels: str, output: str, labels_tsv: str | None = None,
                    jacobian: str | None = None, mask: str | None = None) -> tuple[list[dict], dict]:
    """Compute the rows, write ``output`` (TSV) and return ``(label_rows, summary)``."""
    _check_tsv_output(output)
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
