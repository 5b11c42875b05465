"""Checks of the three folders of a run: the BIDS dataset (read only), the output and the work folder.

The input dataset is never written to; the output folder is neither the dataset, inside it (apart
from ``derivatives/``) nor around it; the work folder is outside it. Every failure is an
:class:`~.parser.AppError` with the BIDS-App exit code of :mod:`.parser`.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from inrreg_pipeline.io.images import remove_stale_staging

from .parser import EXIT_BIDS_INVALID, EXIT_CANTCREAT, EXIT_USAGE, AppError


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is ``root`` or below it (both resolved)."""
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def make_writable_dir(path: Path, what: str) -> None:
    """Create ``path`` (with parents) and write a probe file in it; exit 73 naming ``what`` otherwise."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".inrreg-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise AppError(f"cannot create or write the {what} '{path}' ({err.strerror or err})", EXIT_CANTCREAT) \
            from None


def check_paths(opts) -> tuple[Path, Path, Path]:
    """``(bids_dir, output_dir, work_dir)`` resolved and checked (module docstring); exit 16, 64 or 73."""
    bids_dir = Path(opts.bids_dir).expanduser().resolve()
    output_dir = Path(opts.output_dir).expanduser().resolve()
    work_dir = Path(opts.work_dir).expanduser().resolve()
    if not bids_dir.is_dir():
        raise AppError(f"'{opts.bids_dir}' is not a BIDS dataset (no such folder)", EXIT_BIDS_INVALID)
    if not opts.skip_bids_validation:
        check_dataset_description(bids_dir, opts.bids_dir)
    suggestion = bids_dir / "derivatives" / "inrreg"
    if output_dir == bids_dir:
        raise AppError(f"output_dir is the input dataset; use e.g. '{suggestion}'", EXIT_CANTCREAT)
    if inside(output_dir, bids_dir) and not inside(output_dir, bids_dir / "derivatives"):
        raise AppError(f"output_dir '{output_dir}' is inside the input dataset; use e.g. '{suggestion}'",
                       EXIT_CANTCREAT)
    if inside(bids_dir, output_dir):
        raise AppError(f"output_dir '{output_dir}' contains the input dataset; choose another folder",
                       EXIT_CANTCREAT)
    if inside(work_dir, bids_dir):
        raise AppError(f"work dir '{work_dir}' is inside the input dataset, which is never written to; "
                       f"choose another -w/--work-dir", EXIT_USAGE)
    return bids_dir, output_dir, work_dir


def check_dataset_description(bids_dir: Path, given: str) -> None:
    """A BIDS dataset has a ``dataset_description.json`` holding a JSON object; ``AppError`` (16,
    not BIDS) naming what is wrong otherwise (``--skip-bids-validation`` skips this check)."""
    path = bids_dir / "dataset_description.json"
    hint = "--skip-bids-validation to go on anyway"
    if not path.is_file():
        raise AppError(f"'{given}' is not a BIDS dataset (no dataset_description.json; {hint})", EXIT_BIDS_INVALID)
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise AppError(f"'{given}' is not a BIDS dataset (dataset_description.json cannot be read: "
                       f"{err.strerror or err}; {hint})", EXIT_BIDS_INVALID) from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AppError(f"'{given}' is not a BIDS dataset (dataset_description.json is not valid JSON: {detail}; "
                       f"{hint})", EXIT_BIDS_INVALID) from None
    if not isinstance(description, dict):
        raise AppError(f"'{given}' is not a BIDS dataset (dataset_description.json must hold a JSON object, not "
                       f"{type(description).__name__}; {hint})", EXIT_BIDS_INVALID)


def remove_if_left_empty(path: Path) -> None:
    """Remove ``path`` and its sub-folders when they hold no file (what an early failure leaves of a
    folder this run created); anything with a file in it stays."""
    if not path.is_dir() or any(p.is_file() or p.is_symlink() for p in path.rglob("*")):
        return
    for folder in sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        folder.rmdir()
    path.rmdir()


def remove_stale_leftovers(output_dir: Path, skip: Path | None = None) -> list[Path]:
    """Remove, everywhere in the derivatives folder ``output_dir``, the staging folders and
    temporary derivative files of processes that are gone (a run killed with SIGKILL, or a worker
    stopped in the middle of a copy), by :func:`~inrreg_pipeline.io.images.remove_stale_staging`:
    only this project's ``.inrreg-<kind>-<pid>@<host>-`` names of dead processes of this host,
    never another file. ``skip`` (the work dir, when it lies inside) is not searched, nor are
    hidden folders or symbolic links. Returns the paths removed."""
    removed: list[Path] = []
    for folder, subfolders, _ in os.walk(output_dir):
        here = Path(folder)
        removed += remove_stale_staging(here)
        subfolders[:] = [name for name in subfolders if not name.startswith(".")
                         and (skip is None or here / name != skip) and not (here / name).is_symlink()]
    return removed
