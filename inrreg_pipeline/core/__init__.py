"""The registration core: PyTorch + NumPy only (no Nipype, no file formats).

Modules, one idea each: :mod:`.space` (physical space, sampling), :mod:`.encodings`,
:mod:`.networks`, :mod:`.losses`, :mod:`.affine`, :mod:`.optimisation`, :mod:`.fields`,
:mod:`.config` (presets), :mod:`.variants` (the INR variants of methods.md section 1) and
:mod:`.registration` (one pair end to end).
"""
from .config import RegistrationSettings, available_presets, load_preset
from .registration import RegistrationResult, register
from .space import SpatialImage, resolve_device

__all__ = ["RegistrationResult", "RegistrationSettings", "SpatialImage", "available_presets", "load_preset",
           "register", "resolve_device"]
