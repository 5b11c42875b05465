"""The ``inrreg-bids`` BIDS App (installed as ``inrreg_pipeline.bids_app``).

``inrreg-bids bids_dir output_dir {participant,group} [options]`` (:func:`.run.main`):

* participant level: each participant's (and session's) T1w registered to a template (nilearn's
  MNI152 2009a brain by default, a TemplateFlow space with ``--output-spaces``, or ``--template``) with inrreg, and with ANTs too when
  ``--compare-ants``; other anatomical contrasts (T2w, FLAIR, PD/PDw, T2starw, ce-T1w) co-registered
  to the T1w; evaluation (folding, SD log det J, inverse consistency, runtime; Dice/HD95 with
  ``-d labels=PATH`` and ``--template-dseg``); BIDS Derivatives, ``sub-X.html``, ``logs/CITATION.md``;
* group level: ``group_registration.tsv`` and ``group_registration.html``;
* ``inrreg-bids --demo OUT``: a demo dataset from nilearn's template, both levels (:mod:`.demo`).

Modules: :mod:`.parser` (options, exit codes, errors), :mod:`.run` (the entry point and the two
levels), :mod:`.paths` (folder checks), :mod:`.image_checks` (inputs read in full),
:mod:`.templates` (nilearn's MNI152, a TemplateFlow space or ``--template``), :mod:`.spaces`
(``--output-spaces`` identifiers), :mod:`.queries` (BIDS queries, filters,
labels), :mod:`.preset_options` (``--preset``, ``--sloppy``, ``--compare-ants``),
:mod:`.resources` (threads and memory per node), :mod:`.cluster` (plugins, SLURM),
:mod:`.derivative_dataset` (``dataset_description.json``, template copy), :mod:`.execution`
(Nipype configuration, Ctrl-C), :mod:`.crashes` (crash-file summary), :mod:`.workflow`
(``init_participant_wf``), :mod:`.interfaces` (``DerivativeSink``, atomic copies), :mod:`.reports`
(HTML, citation, group level), :mod:`.demo_dataset` (the demo data) and :mod:`.demo`
(``python -m``, depends on :mod:`.run`).
"""
import os

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no network check at nipype import (before any submodule imports it)
