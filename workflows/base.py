"""Workflow plumbing shared by the ``init_*_wf`` factories: literate workflows, GPU scheduling.

``LiterateWorkflow`` is niworkflows' idea without the dependency: a ``nipype`` workflow carrying a
``__desc__`` (and ``__postdesc__``) of what it does, with which parameters and versions, and
:meth:`LiterateWorkflow.visit_desc` collecting the texts of nested workflows in graph order,
from which the BIDS app writes ``logs/CITATION.md``. Its :meth:`~LiterateWorkflow.run` runs
MultiProc only where its workers can start (:func:`main_reimport_problem`).
"""
from __future__ import annotations

import ast
import logging
import multiprocessing as mp
import os
import sys
from importlib import metadata

import torch
from nipype import config as nipype_config
from nipype.pipeline import engine as pe
from nipype.pipeline.engine.utils import topological_sort

from inrreg_pipeline import __version__

LOG = logging.getLogger("inrreg.workflows")

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
    "instantngp": "Muller T., Evans A., Schied C., Keller A. (2022) Instant neural graphics primitives with a "
                  "multiresolution hash encoding. ACM Trans. Graph. 41(4):102. doi:10.1145/3528223.3530127",
    "mind": "Heinrich M.P., Jenkinson M., Papiez B.W., Brady M., Schnabel J.A. (2013) Towards realtime "
            "multimodal fusion for image-guided interventions using self-similarities. MICCAI 2013, LNCS "
            "8149:187-194. doi:10.1007/978-3-642-40811-3_24",
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

    def run(self, plugin=None, plugin_args=None, updatehash=False):
        """Nipype's ``Workflow.run``, except for MultiProc from a main script its workers cannot import.

        MultiProc workers started from a fork server or spawned (``mp_context`` ``forkserver``, as
        :func:`multiproc_plugin_args` sets, or ``spawn``) first run the main script again. Run
        from standard input (``python - < script.py``) they cannot, and run from a script whose run
        is not under ``if __name__ == "__main__":`` each worker starts the whole workflow again and
        fails: Nipype then waits forever for a node that will never report (a hang with no
        message). When :func:`main_reimport_problem` finds either, the workflow runs with the
        Linear plugin instead, after a one-line warning that names the fix.

        Why fall back and not fail: that is what Nipype users expect. Nipype's own default on Linux
        (the ``fork`` start method) runs exactly these scripts, unguarded or from standard input,
        so they are written and shared that way. Linear runs the same graph to the same results,
        only one node at a time, and the warning says how to get the parallel run back. The
        ``fork`` context is not the fallback: a fork after PyTorch's OpenMP threads (or ITK's) have
        started can deadlock a worker, the hang :func:`multiproc_plugin_args` avoids with its fork
        server, and a forked child cannot use CUDA once the parent has. fMRIPrep-style entry
        points (``inrreg-bids``) are guarded and never take the fallback.
        """
        name = plugin if plugin is None or isinstance(plugin, str) else type(plugin).__name__[:-len("Plugin")]
        args = plugin_args if plugin is None or isinstance(plugin, str) else plugin.plugin_args
        if (name or nipype_config.get("execution", "plugin")) == "MultiProc":
            problem = main_reimport_problem((args or {}).get("mp_context"))
            if problem:
                LOG.warning("inrreg: %s; running the workflow with the Linear plugin instead (one node at a "
                            "time)", problem)
                pool = getattr(plugin, "pool", None)  # a plugin instance: its pool has started no worker
                if pool is not None:
                    pool.shutdown(wait=False)
                linear = {k: v for k, v in (args or {}).items() if k == "status_callback"}
                return super().run(plugin="Linear", plugin_args=linear, updatehash=updatehash)
        return super().run(plugin=plugin, plugin_args=plugin_args, updatehash=updatehash)

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


def main_reimport_problem(mp_context: str | None = None) -> str | None:
    """Why multiprocessing workers of start method ``mp_context`` (``None``: the default one),
    started by the caller, could not start; ``None`` when they can.

    Only ``forkserver`` and ``spawn`` workers import the main module again (as ``__mp_main__``:
    ``multiprocessing.spawn.prepare``); ``fork`` workers do not, nor does any worker when the main
    module has no file (``python -c``, an interactive session, Jupyter) or is a package's
    ``__main__`` (``python -m pkg``). The two failing cases: a main script read from standard
    input (its path, ``<stdin>``, is no file), and a call from the main module's top-level code
    (what the workers' re-import runs again) at a line outside an ``if __name__ == "__main__":``
    block (:func:`_under_main_guard`). A script that cannot be read or parsed is given the benefit
    of the doubt.
    """
    if mp.get_context(mp_context).get_start_method() not in ("forkserver", "spawn"):
        return None
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    module_name = getattr(spec, "name", None)
    if module_name is not None:  # python -m module: re-imported by name, except a package's __main__
        if module_name == "__main__" or module_name.endswith(".__main__"):
            return None
        path = getattr(spec, "origin", None)
    else:
        path = getattr(main, "__file__", None)
        if path is None:
            return None
        if not os.path.isfile(path):
            return (f"MultiProc workers import the main script again, and '{path}' (standard input) cannot "
                    "be: save the script to a file and put the run under 'if __name__ == \"__main__\":'")
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
        frame = frame.f_back
    if frame is None or path is None or _under_main_guard(path, frame.f_lineno):
        return None  # not called by the main module's top-level code, or under the guard
    return (f"MultiProc workers import the main script '{path}' again, which would start this workflow in "
            f"each of them: put the run (line {frame.f_lineno}) under 'if __name__ == \"__main__\":'")


def _is_main_test(test: ast.expr) -> bool:
    """Whether ``test`` is ``__name__ == "__main__"`` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return any(isinstance(a, ast.Name) and a.id == "__name__" for a in sides) and \
        any(isinstance(a, ast.Constant) and a.value == "__main__" for a in sides)


def _under_main_guard(path: str, lineno: int) -> bool:
    """Whether line ``lineno`` of the Python file ``path`` lies in the body of an
    ``if __name__ == "__main__":`` block, at any depth of ``if``, ``with``, ``try`` and loops;
    ``True`` when the file cannot be read or parsed (nothing can be said about it)."""
    try:
        with open(path, "rb") as fh:
            tree = ast.parse(fh.read(), filename=path)
    except (OSError, SyntaxError, ValueError):
        return True
    body: list[ast.stmt] = tree.body
    while True:
        stmt = next((s for s in body if s.lineno <= lineno <= (s.end_lineno or s.lineno)), None)
        if stmt is None or isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return False
        if isinstance(stmt, ast.If) and _is_main_test(stmt.test) and \
                any(s.lineno <= lineno <= (s.end_lineno or s.lineno) for s in stmt.body):
            return True
        body = [s for field in ("body", "orelse", "finalbody") for s in getattr(stmt, field, [])] + \
            [s for handler in getattr(stmt, "handlers", []) for s in handler.body]


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
