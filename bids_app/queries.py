"""BIDS queries: index the dataset (pybids), read ``--bids-filter-file``, and list the T1w images
of the selected participants and sessions with their other anatomical contrasts and, from the
``labels`` derivative, their ``*_dseg`` label maps."""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from bids.layout import BIDSLayout, BIDSLayoutIndexer, Query

from .parser import EXIT_BIDS_INVALID, EXIT_NO_FILES, EXIT_NOINPUT, EXIT_USAGE, AppError
from .workflow import Contrast, Participant, name_entities

LOG = logging.getLogger("inrreg-bids")
#: Suffixes of the other anatomical contrasts co-registered to the T1w (ce-T1w is queried apart)
_QUERY_SUFFIXES = ("T2w", "FLAIR", "PDw", "PD", "T2starw")
_IMAGE_EXT = [".nii", ".nii.gz"]


def load_layout(bids_dir: Path, opts):
    """The pybids layout of ``bids_dir`` (derivatives, code, sourcedata and dot folders not indexed;
    ``--bids-database-dir`` reused); exit 16 when it cannot be indexed."""
    indexer = BIDSLayoutIndexer(validate=False, ignore=["code", "sourcedata", "stimuli", "models", "derivatives",
                                                        re.compile(r"/\.")])
    kwargs = {}
    if opts.bids_database_dir:
        kwargs["database_path"] = str(Path(opts.bids_database_dir).resolve())
    try:
        return BIDSLayout(str(bids_dir), validate=False, indexer=indexer, **kwargs)
    except Exception as err:
        raise AppError(f"cannot index '{bids_dir}' as BIDS ({type(err).__name__}: {err})", EXIT_BIDS_INVALID) \
            from None


def load_filters(path: Path | None) -> dict:
    """``--bids-filter-file``: kinds (``t1w``, ``t2w``, ...) -> pybids queries, ``null`` and ``"*"``
    turned into ``Query.NONE`` / ``Query.ANY``; exit 64 for a bad file."""
    if path is None:
        return {}
    try:
        filters = json.loads(Path(path).read_text())
    except OSError as err:
        raise AppError(f"--bids-filter-file '{path}': {err.strerror}", EXIT_USAGE) from None
    except ValueError as err:
        raise AppError(f"--bids-filter-file '{path}' is not valid JSON ({err})", EXIT_USAGE) from None
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise AppError(f"--bids-filter-file '{path}' must map kinds (t1w, t2w, flair, ...) to query objects",
                       EXIT_USAGE)
    known = {"t1w", "cet1w", *(s.lower() for s in _QUERY_SUFFIXES)}
    unknown = sorted(set(filters) - known)
    if unknown:
        raise AppError(f"--bids-filter-file: unknown kind(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})",
                       EXIT_USAGE)
    for kind, query in filters.items():
        for key, value in query.items():
            if value is None:
                query[key] = Query.NONE
            elif value == "*":
                query[key] = Query.ANY
    return filters


def find_labels(labels_root: Path, subject: str, session: str | None, entities: str = "",
                first: bool = True) -> Path | None:
    """The ``*_dseg`` of one T1w in the labels derivative: the one named with the T1w's ``entities``
    (``_run-2``, ...), else, for the session's first T1w only (``first``), the subject's first."""
    base = labels_root / f"sub-{subject}"
    candidates = []
    if session:
        candidates += sorted((base / f"ses-{session}" / "anat").glob(f"sub-{subject}_ses-{session}*_dseg.nii*"))
    candidates += sorted((base / "anat").glob(f"sub-{subject}*_dseg.nii*"))
    candidates = [c for c in candidates if "_space-" not in c.name]
    named = [c for c in candidates if entities and f"{entities}_" in c.name]
    return named[0] if named else candidates[0] if candidates and first else None


def collect_participants(layout, opts, filters: dict, labels_root: Path | None) -> list[Participant]:
    """One :class:`~.workflow.Participant` per selected T1w image (other contrasts with the session's
    first T1w), with its ``*_dseg`` from ``labels_root`` when given; exit 66 / 18 when the selection
    is empty."""
    subjects = sorted(layout.get_subjects())
    if opts.participant_label:
        missing = [s for s in opts.participant_label if s not in subjects]
        if missing:
            raise AppError(f"participant(s) not found in the dataset: {', '.join('sub-' + s for s in missing)}",
                           EXIT_NOINPUT)
        subjects = [s for s in subjects if s in opts.participant_label]
    if not subjects:
        raise AppError("no participants (sub-*) in the dataset", EXIT_NOINPUT)
    out, no_t1w, n_selected = [], [], 0
    for sub in subjects:
        sessions = sorted(layout.get_sessions(subject=sub)) or [None]
        if opts.session_label:
            sessions = [s for s in sessions if s in opts.session_label]
            if not sessions:
                continue
        for ses in sessions:
            base = {"subject": sub, "datatype": "anat", "extension": _IMAGE_EXT}
            if ses is not None:
                base["session"] = ses
            t1 = layout.get(**{**base, "suffix": "T1w", "ceagent": Query.NONE, **filters.get("t1w", {})})
            t1 = sorted(t1, key=lambda f: f.path)
            n_selected += len(t1)
            if not t1:
                no_t1w.append(f"sub-{sub}" + (f"_ses-{ses}" if ses else ""))
                continue
            others = []
            for suffix in _QUERY_SUFFIXES:
                for f in layout.get(**{**base, "suffix": suffix, **filters.get(suffix.lower(), {})}):
                    others.append(Contrast(Path(f.path), suffix, f.get_entities()))
            for f in layout.get(**{**base, "suffix": "T1w", "ceagent": Query.ANY, **filters.get("cet1w", {})}):
                others.append(Contrast(Path(f.path), "T1w", f.get_entities()))
            others = sorted(others, key=lambda c: str(c.path))
            if len(t1) > 1:
                LOG.info("sub-%s%s: %d T1w images, each registered; other contrasts co-registered to %s", sub,
                         f" ses-{ses}" if ses else "", len(t1), Path(t1[0].path).name)
            for i, image in enumerate(t1):
                entities = image.get_entities()
                dseg = (find_labels(labels_root, sub, ses, name_entities(entities), first=i == 0)
                        if labels_root else None)
                if labels_root and dseg is None:
                    LOG.warning("sub-%s: no *_dseg.nii.gz for %s in the labels derivative: no label evaluation",
                                sub, Path(image.path).name)
                out.append(Participant(sub, ses, Path(image.path), others if i == 0 else [], dseg, entities))
    if filters and n_selected == 0:
        raise AppError(f"--bids-filter-file '{opts.bids_filter_file}' selected no T1w images", EXIT_NO_FILES)
    if opts.session_label and not out and not no_t1w:
        raise AppError(f"session(s) {', '.join(opts.session_label)} not found for the selected participants",
                       EXIT_NOINPUT)
    if no_t1w:
        raise AppError(f"no T1w image for {', '.join(no_t1w)}", EXIT_NOINPUT)
    return out
