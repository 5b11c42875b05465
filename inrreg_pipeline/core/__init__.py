"""The registration core: PyTorch + NumPy only (no Nipype, no file formats).

Modules, one idea each (each importing only the ones above it in this list):

* :mod:`.choices` -- the allowed value of every setting (imports nothing); :mod:`.config` -- the
  settings, one section per method, their validation and the JSON presets (torch-free);
* :mod:`.geometry` (images and grids, NumPy), :mod:`.jacobian` (finite-difference det J, NumPy),
  :mod:`.space` (sampling on a device), :mod:`.encodings`, :mod:`.networks`, :mod:`.hash_encoding`,
  :mod:`.losses`, :mod:`.fields` (dense fields, inverse, consistency);
* :mod:`.engine` -- the one optimisation loop; :mod:`.pair` -- the prepared pair every method starts
  from; :mod:`.method` -- the method protocol; :mod:`.result` -- the result, dense outputs, summary;
* :mod:`.affine` -- the affine stage; the methods: :mod:`.displacement` (the displacement INR, with
  :mod:`.optimisation` its patch loop and :mod:`.variants` its variants), :mod:`.svf` (the
  velocity INR), :mod:`.two_network` (the two-network method);
* :mod:`.registration` -- the dispatch table and :func:`register`, imported by no method.

The names below are imported on first use (PEP 562), so importing a NumPy-only submodule such as
:mod:`.jacobian` (as :mod:`inrreg_pipeline.metrics` does) does not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

#: public name -> submodule that defines it
_EXPORTS = {"RegistrationResult": "result", "register": "registration",
            "RegistrationSettings": "config", "available_presets": "config", "load_preset": "config",
            "SpatialImage": "space", "resolve_device": "space"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
