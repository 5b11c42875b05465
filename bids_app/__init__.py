"""The ``inrreg-bids`` BIDS App (installed as ``inrreg_pipeline.bids_app``).

Built on ``inrreg_pipeline.workflows``; empty until the BIDS App issue lands. Nothing here is
importable API yet.
"""
