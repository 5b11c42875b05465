"""Nipype workflows of inrreg (installed as ``inrreg_pipeline.workflows``).

This layer builds ``init_*_wf`` factories on top of ``inrreg_pipeline.interfaces``; it is empty
until the Nipype layer lands (issue "Nipype layer"). Nothing here is importable API yet.
"""
