"""The allowed values of every registration setting, in one torch-free leaf module.

Everything that validates or offers a choice (the settings in :mod:`.config`, the command line,
the Nipype interface, the BIDS App) reads the lists here, and the modules that implement the
choices (:mod:`.losses`, :mod:`.networks`, :mod:`.hash_encoding`, :mod:`.two_network`) import them
from here too, so no settings module needs to import an implementation (no import circle) and
parsing a command line does not import torch. This module imports nothing.
"""
from __future__ import annotations

#: Registration methods: the deformation INR (docs/methods.md section 1), the two-network method
#: (section 2) and the diffeomorphic velocity INR (``svf``: a stationary velocity field integrated
#: by scaling and squaring).
METHODS = ("siren", "two-network", "svf")
#: The deformation-INR variants of docs/methods.md section 1 (:mod:`.variants`), also values of ``method``.
VARIANT_METHODS = ("joint-affine", "ensemble", "cascade", "cycle", "fusion")
#: Learning-rate schedules of the INR optimisation.
LR_SCHEDULES = ("constant", "cosine")
#: Similarity terms (:func:`.losses.similarity_loss`); ``mi`` is Mattes-style mutual information.
SIMILARITIES = ("ncc+lncc", "ncc", "mse", "mi")
#: Similarities the ``svf`` method can use: those above and ``lncc``, the local term alone (its whole-image
#: steps have the windows that a point set has not; SyN's CC is this term).
SVF_SIMILARITIES = SIMILARITIES + ("lncc",)
#: Similarities the affine stage can use: it compares scattered voxels, which have no local windows.
AFFINE_SIMILARITIES = ("ncc", "mse", "mi")
#: Regularisers of a displacement (:func:`.losses.regulariser_loss`).
REGULARISERS = ("jacobian", "bending", "diffusion", "none")
#: Regularisers the ``svf`` method supports (of its velocity or of exp(v)).
SVF_REGULARISERS = ("diffusion", "jacobian")
#: What gives the ``svf`` method's velocity: the SIREN of the ``network`` section, or a hash-grid MLP.
SVF_NETWORKS = ("siren", "hash-grid")
#: Hidden-layer activations of the deformation MLP (:class:`.networks.Activation`).
ACTIVATIONS = ("relu", "sine", "snake", "sine+", "chirp", "morlet")
#: Activations with a frequency ``omega`` (the ones ``variants.omega_mode`` can vary).
PERIODIC = frozenset({"sine", "snake", "sine+", "chirp", "morlet"})
#: How a periodic network's ``omega`` is controlled (docs/methods.md section 1).
OMEGA_MODES = ("fixed", "trainable", "width", "attention")
#: Hash-encoding backends of the two-network method (``auto``: tiny-cuda-nn when importable on CUDA).
BACKENDS = ("auto", "torch", "tcnn")
#: Motion models of the two-network method.
MOTIONS = ("rigid", "deformable", "affine-param")
#: Optimisers of the INR stage.
OPTIMIZERS = ("adam", "adamw")
#: ``--seed`` range, one for every method and baseline: ANTs reads ``--random-seed`` (inrreg's seed
#: + 1) as a C int and NumPy's legacy seeding takes [0, 2**32 - 1], so [0, 2**31 - 2] is what every
#: method accepts.
SEED_MAX = 2 ** 31 - 2
