"""inrreg: image registration with untrained implicit neural representations (INRs).

Layers, each importing only downward::

    inrreg_pipeline.bids_app -> inrreg_pipeline.workflows -> inrreg_pipeline.interfaces
        -> inrreg_pipeline.register / .apply / .io -> inrreg_pipeline.core

``inrreg_pipeline.core`` is PyTorch + NumPy only (no Nipype, no file formats).
"""

__version__ = "0.1.0"
