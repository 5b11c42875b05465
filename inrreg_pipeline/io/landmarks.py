"""Landmark files (ITK / ANTs point CSV, BraTS-Reg CSV, plain tables) read into RAS+ mm points.

Points come back as an ``(N, d)`` float64 array of world coordinates in RAS+ millimetres (the
frame of nibabel's affines), rows in file order. Files in LPS+ (ITK, ANTs, BraTS-Reg) are
converted with :func:`inrreg_pipeline.io.frames.lps_to_ras_points`.
"""
from __future__ import annotations

import csv
import os

import numpy as np

from .frames import lps_to_ras_points

__all__ = ["read_landmarks"]

_ITK_POINT_COLUMNS = ("x", "y", "z", "t")
_BRATS_HEADER = ["Landmark", "X", "Y", "Z"]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_table(path: str | os.PathLike[str]) -> tuple[list[str] | None, list[list[str]]]:
    """``(header or None, rows)`` of a comma- or tab-separated file, comments and blank lines skipped."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        lines = [ln for ln in fh.read().splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"{path}: no landmarks found (empty file)")
    delimiter = "\t" if "\t" in lines[0] else ","
    table = [[cell.strip() for cell in row] for row in csv.reader(lines, delimiter=delimiter)]
    if all(_is_number(cell) for cell in table[0] if cell):
        return None, table
    return table[0], table[1:]


def read_landmarks(path: str | os.PathLike[str], convention: str = "auto") -> np.ndarray:
    """Read landmark points and return them as an ``(N, d)`` float array in RAS+ millimetres.

    Rows are returned in file order; pair two files by that order
    (:func:`inrreg_pipeline.metrics.target_registration_error`).

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

    Raises
    ------
    ValueError
        One line naming the file: empty file, no x / y columns, malformed or non-finite rows, an
        unknown ``convention``, or a plain table read with ``convention='auto'``.
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
        elif header[:4] == _BRATS_HEADER:
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
    return lps_to_ras_points(points) if conv == "lps" else points
