"""Nipype workflows of inrreg (installed as ``inrreg_pipeline.workflows``).

Factories ``init_*_wf(*, ..., name=...)`` return :class:`~.base.LiterateWorkflow` s with an
``inputnode`` and an ``outputnode`` (IdentityInterfaces) and a literate ``__desc__`` for citation
boilerplate (``workflow.visit_desc()``). They are built from ``inrreg_pipeline.interfaces``.

==================================  ============================================================
``init_preproc_wf``                  reorient, N4, mask, normalise, resample one image
``init_inr_registration_wf``         preprocessing of both images, INR registration, application to
                                     the moving image and label maps, transform quality, reports
``init_ants_registration_wf``        the same around the ANTs baseline (antspyx)
``init_registration_comparison_wf``  both side by side, evaluated against labels and/or landmarks,
                                     one merged TSV and a comparison figure
``init_multimodal_coreg_wf``         T2w/FLAIR (any contrast) to T1w with the multi-modal method
==================================  ============================================================

MultiProc and GPUs: see :func:`~.base.multiproc_plugin_args`.
"""
from .base import CITATIONS, LiterateWorkflow, multiproc_plugin_args, wants_gpu
from .comparison import init_registration_comparison_wf
from .multimodal import default_multimodal_preset, init_multimodal_coreg_wf
from .preprocessing import init_preproc_wf
from .registration import init_ants_registration_wf, init_inr_registration_wf

__all__ = [
    "init_preproc_wf", "init_inr_registration_wf", "init_ants_registration_wf",
    "init_registration_comparison_wf", "init_multimodal_coreg_wf", "default_multimodal_preset",
    "LiterateWorkflow", "multiproc_plugin_args", "wants_gpu", "CITATIONS",
]
