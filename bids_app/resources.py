"""What each node asks the Nipype plugin for: CPU threads and memory of the registration nodes."""
from __future__ import annotations

import os

from nipype.utils.profiler import get_system_total_memory_gb


def node_threads(opts, plugin) -> int:
    """CPU threads of each registration / N4 node (``omp_nthreads``).

    Batch plugins (one job per node): ``--omp-nthreads`` or 1 (match it to the jobs' ``-c``), not
    this host's cores. Local plugins: ``--omp-nthreads`` (default ``min(nprocs, 8)``), at most the
    plugin's ``n_procs`` (``--nprocs``, else this host's cores).
    """
    if plugin.batch:
        return opts.omp_nthreads or 1
    nprocs = int(plugin.plugin_args.get("n_procs", opts.nprocs or os.cpu_count() or 1))
    return min(opts.omp_nthreads or min(nprocs, 8), nprocs)


def registration_mem_gb(opts, plugin) -> float:
    """Memory (GB) each registration node (INR, ANTs, co-registration) asks the plugin for.

    4 GB (or ``--mem`` when smaller). With ``--low-mem`` under MultiProc, a registration asks for the
    whole memory budget: MultiProc then starts nothing beside it, so at most one registration is in
    memory at a time (Linear runs one node at a time anyway; batch plugins give every node its own job).
    """
    mem_gb = min(4.0, opts.mem_gb) if opts.mem_gb else 4.0
    if opts.low_mem and plugin.plugin == "MultiProc":
        # plugin_settings has put --mem there; else MultiProc's own default budget
        mem_gb = float(plugin.plugin_args.get("memory_gb") or 0.9 * get_system_total_memory_gb())
    return mem_gb
