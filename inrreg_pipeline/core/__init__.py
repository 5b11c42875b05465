"""The registration core: PyTorch + NumPy only (no Nipype, no file formats).

Modules, one idea each: :mod:`.space` (physical space, sampling), :mod:`.encodings`,
:mod:`.networks`, :mod:`.losses`, :mod:`.affine`, :mod:`.optimisation`, :mod:`.fields`,
:mod:`.jacobian` (finite-difference Jacobian determinant, NumPy only), :mod:`.config` (presets),
:mod:`.variants` (the INR variants of methods.md section 1) and :mod:`.registration` (one pair
end to end).

The names below are imported on first use (PEP 562), so importing a NumPy-only submodule such as
:mod:`.jacobian` (as :mod:`inrreg_pipeline.metrics` does) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule that defines it
_EXPORTS = {"RegistrationResult": "registration", "register": "registration",
            "RegistrationSettings": "config", "available_presets": "config", "load_preset": "config",
            "SpatialImage": "space", "resolve_device": "space"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
