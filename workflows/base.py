"""Workflow plumbing shared by the ``init_*_wf`` factories: literate workflows, GPU scheduling.

``LiterateWorkflow`` is niworkflows' idea without the dependency: a ``nipype`` workflow carrying a
``__desc__`` (and ``__postdesc__``) of what it does, with which parameters and versions, and
:meth:`LiterateWorkflow.visit_desc` collecting the texts of nested workflows in graph order,
from which the BIDS app writes ``logs/CITATION.md``.
"""
from __future__ import annotations

from importlib import metadata

import torch
from nipype.pipeline import engine as pe
from nipype.pipeline.engine.utils import topological_sort

from inrreg_pipeline import __version__

#: BibTeX keys cited by the ``__desc__`` texts (``[@key]``, Pandoc style, as fMRIPrep's boilerplate).
CITATIONS = {
    "nipype1": "Gorgolewski K. et al. (2011) Nipype: a flexible, lightweight and extensible neuroimaging "
               "data processing framework in Python. Front. Neuroinform. 5:13. doi:10.3389/fninf.2011.00013",
    "n4": "Tustison N.J. et al. (2010) N4ITK: improved N3 bias correction. IEEE Trans. Med. Imaging "
          "29(6):1310-1320. doi:10.1109/TMI.2010.2046908",
    "ants": "Avants B.B. et al. (2008) Symmetric diffeomorphic image registration with cross-correlation. "
            "Med. Image Anal. 12(1):26-41. doi:10.1016/j.media.2007.06.004",
    "siren": "Sitzmann V. et al. (2020) Implicit neural representations with periodic activation functions. "
             "NeurIPS 33:7462-7473",
    "idir": "Wolterink J.M., Zwienenberg J.C., Brune C. (2022) Implicit neural representations for deformable "
            "image registration. MIDL, PMLR 172:1349-1359",
    "arsigny": "Arsigny V. et al. (2006) A log-Euclidean framework for statistics on diffeomorphisms. "
               "MICCAI 2006, LNCS 4190:924-931. doi:10.1007/11866565_113",
    "greedy": "Yushkevich P.A. et al. (2016) Fast automatic segmentation of hippocampal subfields and medial "
              "temporal lobe subregions in 3 Tesla and 7 Tesla T2-weighted MRI. Alzheimer's & Dementia "
              "12(7):P126-P127 (greedy registration). doi:10.1016/j.jalz.2016.06.205",
    "nilearn": "Abraham A. et al. (2014) Machine learning for neuroimaging with scikit-learn. Front. "
               "Neuroinform. 8:14. doi:10.3389/fninf.2014.00014",
}


class LiterateWorkflow(pe.Workflow):
    """A workflow with a literate description (``__desc__`` / ``__postdesc__``; ``__postdesc__`` may
    also be a list of texts, each deduplicated on its own by :meth:`visit_desc`)."""

    def __init__(self, name, base_dir=None):
        super().__init__(name, base_dir)
        self.__desc__ = None
        self.__postdesc__ = None

    def visit_desc(self) -> str:
        """This workflow's ``__desc__``, the texts of nested workflows in topological order, then its
        ``__postdesc__``; a text met twice (the same step in two branches) is kept once."""
        parts: list[str] = []
        for text in self._desc_parts():
            if text not in parts:
                parts.append(text)
        return "".join(parts)

    def _desc_parts(self) -> list[str]:
        parts = [self.__desc__] if self.__desc__ else []
        for node in topological_sort(self._graph)[0]:
            if isinstance(node, LiterateWorkflow):
                parts.extend(node._desc_parts())
        post = self.__postdesc__
        if post:
            parts.extend([post] if isinstance(post, str) else list(post))
        return parts


def version(dist: str) -> str:
    """Installed version of a distribution, or ``'n/a'``."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "n/a"


def inrreg_version() -> str:
    """The version of inrreg the workflows are built with (for the boilerplate)."""
    return __version__


def cuda_visible() -> bool:
    """True when PyTorch sees a CUDA device."""
    return bool(torch.cuda.is_available())


def wants_gpu(device: str, use_gpu: bool | None) -> bool:
    """Whether registration nodes are flagged ``use_gpu`` (``None``: when the device will be CUDA)."""
    if use_gpu is not None:
        return bool(use_gpu)
    spec = (device or "auto").strip().lower()
    if spec.startswith("cuda"):
        return True
    return spec == "auto" and cuda_visible()


def multiproc_plugin_args(n_procs: int | None = None, memory_gb: float | None = None,
                          n_gpu_procs: int | None = None, **extra) -> dict:
    """``plugin_args`` for MultiProc that never fails on GPU-flagged nodes.

    Nipype (1.10+) counts a node as a GPU node when its interface has ``use_gpu`` (or ``use_cuda``)
    set, and gives MultiProc ``n_gpu_procs`` slots, by default the number of GPUs ``nvidia-smi``
    lists: 0 on a machine without a GPU, where ``_prerun_check`` then raises "Insufficient GPU
    resources available for job". A GPU node takes ``node.n_procs`` GPU slots, so the workflows
    give GPU-flagged registration nodes ``n_procs = 1``. Here ``n_gpu_procs`` defaults to the number
    of CUDA devices PyTorch sees, and at least 1: without a GPU the flagged nodes then run one at a
    time and fall back to the CPU inside the interface. Workers start from a ``forkserver``.
    """
    args = dict(extra)
    # Workers from a fork server, not forked from this process: a fork after PyTorch/OpenMP (or
    # ITK) thread pools have started can deadlock the child (seen as MultiProc hanging forever).
    args.setdefault("mp_context", "forkserver")
    if n_procs is not None:
        args["n_procs"] = int(n_procs)
    if memory_gb is not None:
        args["memory_gb"] = float(memory_gb)
    if n_gpu_procs is None:
        n_gpu_procs = torch.cuda.device_count() if torch.cuda.is_available() else 0
    args["n_gpu_procs"] = max(1, int(n_gpu_procs))
    return args


def pick_warp(transforms):
    """The displacement field of an ants.Registration-style ``forward_transforms`` /
    ``reverse_transforms`` list (the non-linear element); used as a connection function."""
    for path in transforms:
        if str(path).endswith((".nii", ".nii.gz")):
            return path
    raise ValueError(f"no displacement field among {transforms}")


def list_of(value):
    """``[value]`` (connection function: one file into a list-valued input)."""
    return [value]


def join_words(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = [str(i) for i in items if i]
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
