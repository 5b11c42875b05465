"""Evaluation metrics for registration results, in physical units (NumPy / SciPy only, no torch).

One module per idea:

* :mod:`.overlap`: Dice, Jaccard, volumes, HD95 and ASSD per label, and their summary;
* :mod:`.jacobian`: det J of a displacement field (the core's finite differences), folding and
  the SD of log det J, and their summary over a mask;
* :mod:`.landmarks`: target registration error from corresponding points;
* :mod:`.grid`: voxel spacing (mm per array axis) from an affine.

Conventions: distances in mm, volumes in mm^3 (mm^2 in 2-D), derivatives in mm/mm; points are
world coordinates in RAS+ mm. File formats live in :mod:`inrreg_pipeline.io` (landmark files:
:mod:`~inrreg_pipeline.io.landmarks`, LPS to RAS included; TSV tables: :mod:`~inrreg_pipeline.io.tsv`);
their readers and writers are re-exported here so ``from inrreg_pipeline.metrics import
read_landmarks, write_rows_tsv`` keeps working. The 2-D rigid success protocol (corner relative
distance) is benchmark code: ``benchmarks/rigid_protocol.py``.
"""
from __future__ import annotations

from ..io.landmarks import read_landmarks
from ..io.tsv import write_rows_tsv
from .grid import spacing_from_affine
from .jacobian import (folding_fraction, jacobian_determinant_from_displacement, jacobian_statistics,
                       log_jacobian_std, non_diffeomorphic_volume)
from .landmarks import landmark_errors, target_registration_error, tre_summary
from .overlap import (OVERLAP_COLUMNS, STATUS_MISSING_IN_BOTH, STATUS_MISSING_IN_REFERENCE, STATUS_MISSING_IN_TEST,
                      STATUS_OK, label_overlap, summarise_overlap)

__all__ = [
    "spacing_from_affine",
    "label_overlap",
    "summarise_overlap",
    "OVERLAP_COLUMNS",
    "STATUS_OK",
    "STATUS_MISSING_IN_REFERENCE",
    "STATUS_MISSING_IN_TEST",
    "STATUS_MISSING_IN_BOTH",
    "jacobian_determinant_from_displacement",
    "folding_fraction",
    "log_jacobian_std",
    "jacobian_statistics",
    "non_diffeomorphic_volume",
    "read_landmarks",
    "landmark_errors",
    "target_registration_error",
    "tre_summary",
    "write_rows_tsv",
]
