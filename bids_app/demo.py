"""``python -m inrreg_pipeline.bids_app.demo OUT``: the same as ``inrreg-bids --demo OUT``.

Writes ``OUT/bids`` (participants made by known smooth deformations of nilearn's MNI152
template, each with a T1w and a T2w-like second contrast, and GM/WM labels in
``OUT/bids/derivatives/labels``; :func:`~.demo_dataset.make_demo_dataset`), runs the participant
level with INR and ANTs (``--compare-ants``) and the group level into ``OUT/inrreg``
(:func:`.run.run_demo`), and prints the reports' paths. This module depends on :mod:`.run`, never
the reverse.
"""
from __future__ import annotations

import sys

from .demo_dataset import make_demo_dataset
from .run import run_demo

__all__ = ["main", "make_demo_dataset"]


def main(argv: list[str] | None = None) -> int:
    """The demo's exit code (``argv``: ``OUT`` and the demo's options; ``None``: ``sys.argv``)."""
    return run_demo(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
