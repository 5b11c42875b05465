"""The output dataset's own files: ``dataset_description.json`` (``GeneratedBy`` with the
container, ``SourceDatasets``), ``.bidsignore``, and a copy of a non-standard template
(``tpl-<name>/``) that the sidecars point at."""
from __future__ import annotations

import json
import os
from pathlib import Path

from inrreg_pipeline import __version__

from .interfaces import atomic_copy, atomic_write_text


#: ``GeneratedBy.CodeURL``
CODE_URL = "https://github.com/inrreg/inrreg"


def container_info() -> dict:
    """``GeneratedBy.Container``: the image's ``INRREG_CONTAINER_TYPE``/``INRREG_CONTAINER_TAG`` (set by the
    Dockerfile's build arguments); a Docker image run by Apptainer/Singularity keeps its tag and says so."""
    ctype, ctag = os.environ.get("INRREG_CONTAINER_TYPE"), os.environ.get("INRREG_CONTAINER_TAG")
    if ctype or ctag:
        if os.environ.get("APPTAINER_CONTAINER"):
            ctype = "apptainer"
        elif os.environ.get("SINGULARITY_CONTAINER"):
            ctype = "singularity"
    return {k: v for k, v in (("Type", ctype), ("Tag", ctag)) if v}


def write_dataset_description(output_dir: Path, bids_dir: Path) -> None:
    """``dataset_description.json`` (a BIDS derivative of ``bids_dir``) and ``.bidsignore`` in ``output_dir``."""
    gen = {"Name": "inrreg", "Version": __version__, "CodeURL": CODE_URL}
    container = container_info()
    if container:
        gen["Container"] = container
    source = {"URL": bids_dir.as_uri()}
    try:
        raw = json.loads((bids_dir / "dataset_description.json").read_text())
        for key in ("DOI", "Name"):
            if raw.get(key):
                source[key] = raw[key]
    except (OSError, ValueError):
        pass
    desc = {"Name": "inrreg outputs", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
            "GeneratedBy": [gen], "SourceDatasets": [source], "DatasetLinks": {"raw": bids_dir.as_uri()},
            "HowToAcknowledge": "Cite inrreg and the works listed in logs/CITATION.md"}
    atomic_write_text(output_dir / "dataset_description.json", json.dumps(desc, indent=2) + "\n")
    atomic_write_text(output_dir / ".bidsignore", "*.html\nlogs/\nfigures/\n*_xfm.*\n")


def copy_template(output_dir: Path, tpl) -> None:
    """Non-standard spaces: the template goes to ``tpl-<name>/`` and sidecars point at it."""
    if tpl.standard:
        return
    dst = output_dir / f"tpl-{tpl.name}"
    atomic_copy(tpl.t1w, dst / f"tpl-{tpl.name}_T1w.nii.gz" if str(tpl.t1w).endswith(".gz")
                else dst / f"tpl-{tpl.name}_T1w.nii")
    name = "tpl-{0}_T1w.nii.gz".format(tpl.name) if str(tpl.t1w).endswith(".gz") else f"tpl-{tpl.name}_T1w.nii"
    tpl.reference_uri = f"bids::tpl-{tpl.name}/{name}"
