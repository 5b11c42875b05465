"""Nipype interfaces of inrreg (``SimpleInterface`` s; outputs in the node directory).

Registration outputs mirror ``nipype.interfaces.ants.Registration``, so :class:`INRRegistration`
and :class:`ANTsRegistration` replace an ``ants.Registration`` node without changing the graph
downstream; :class:`ApplyTransforms` takes the inputs of ``ants.ApplyTransforms``.

Layering: this package imports ``inrreg_pipeline.presets``, ``.register``, ``.baselines``, ``.apply``,
``.metrics``, ``.io`` and ``.core`` at module level (torch included); only the optional dependencies
(antspyx, matplotlib, ``nilearn.plotting``) are imported where they are used. Workflows import it.
"""
from .evaluation import LabelOverlap, LandmarkError, MergeTables, TransformQuality
from .preprocessing import (ApplyMask, ForegroundMask, N4BiasFieldCorrection, NormalizeIntensity, Reorient,
                            Resample)
from .registration import ANTS_PRESETS, INR_METHODS, ANTsRegistration, INRRegistration
from .reports import ComparisonFigure, JacobianReport, RegistrationFlicker
from .resampling import ApplyTransforms

__all__ = [
    "INRRegistration", "ANTsRegistration", "INR_METHODS", "ANTS_PRESETS",
    "ApplyTransforms",
    "Reorient", "N4BiasFieldCorrection", "ApplyMask", "ForegroundMask", "NormalizeIntensity", "Resample",
    "LabelOverlap", "TransformQuality", "LandmarkError", "MergeTables",
    "RegistrationFlicker", "JacobianReport", "ComparisonFigure",
]
