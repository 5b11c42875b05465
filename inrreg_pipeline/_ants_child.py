"""The antsRegistration child process of the ANTs baselines: ``python -m inrreg_pipeline._ants_child ARGS RESULT``.

:func:`inrreg_pipeline.baselines.ants.run_ants` starts this module in a fresh interpreter so that
the ITK thread count is exact (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` is read once per process),
``peak_rss_mb`` is the registration's own (this process's ``VmHWM``), and a crash inside ANTs
cannot take the caller down.

``ARGS``: a JSON file holding the antsRegistration argument list (no program name). ``RESULT``:
the JSON file written on the way out, ``{"exit_status": int, "peak_rss_kb": float | null}``.
The process exits with antsRegistration's status; ANTs' log (``--version`` first, then the
registration's) goes to stdout.

It lives outside :mod:`inrreg_pipeline.baselines` on purpose: ``python -m`` imports every parent
package first, and that package imports the registration core (torch), which would cost seconds
and count in the child's peak memory. Its only parent, :mod:`inrreg_pipeline`, imports nothing.
Only the standard library and antspyx's compiled extension are loaded (antspyx is optional, so it
is imported inside :func:`antsregistration`).
"""
from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Callable, Sequence


def antsregistration() -> Callable[[Sequence[str]], int]:
    """antspyx's bundled ``antsRegistration`` library function.

    Loads antspyx's compiled extension alone (importing the whole ``ants`` package takes seconds);
    falls back to ``ants.internal.get_lib_fn`` when the extension is not where antspyx 0.6 puts it.
    """
    try:
        spec = importlib.util.find_spec("ants")
        for folder in spec.submodule_search_locations:
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = os.path.join(folder, "lib" + suffix)
                if os.path.exists(path):
                    lib_spec = importlib.util.spec_from_file_location("ants.lib", path)
                    lib = importlib.util.module_from_spec(lib_spec)
                    lib_spec.loader.exec_module(lib)
                    return lib.antsRegistration
    except Exception:  # any failure of the shortcut: take antspyx's own loader
        pass
    from ants.internal import get_lib_fn  # optional dependency

    return get_lib_fn("antsRegistration")


def peak_rss_kb() -> float | None:
    """This process's peak resident memory (``VmHWM``, kB), or None where /proc is missing.

    ``VmHWM`` belongs to this process's own memory map; ``ru_maxrss`` would include the parent's
    size at fork (Linux carries it over exec).
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def main(argv: Sequence[str]) -> int:
    """Run antsRegistration with the arguments in ``argv[0]``; write the result to ``argv[1]``."""
    args_path, result_path = argv
    fn = antsregistration()
    with open(args_path) as fh:
        args = json.load(fh)
    fn(["--version"])
    sys.stdout.flush()
    rc = int(fn(args) or 0)
    sys.stdout.flush()
    with open(result_path, "w") as fh:
        json.dump({"exit_status": rc, "peak_rss_kb": peak_rss_kb()}, fh)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
