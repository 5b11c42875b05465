"""Tab-separated tables (BIDS style: ``n/a`` for missing values), written atomically.

Rows are dicts (column -> value). :func:`write_rows_tsv` writes them; :func:`read_rows_tsv` reads a
table back as dicts of strings (no type conversion; ``n/a`` stays the string ``"n/a"``).
"""
from __future__ import annotations

import csv
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["write_rows_tsv", "read_rows_tsv"]


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


def read_rows_tsv(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """The rows of a tab-separated table with a header line, as dicts of strings (file order).

    Raises ``OSError``, ``UnicodeDecodeError`` or ``csv.Error`` for unreadable files.
    """
    with open(path, newline="") as fh:
        return [dict(row) for row in csv.DictReader(fh, delimiter="\t")]
