"""Execution plugins of ``inrreg-bids``: ``--use-plugin FILE`` and the SLURM specifics.

The plugin file is fMRIPrep's format, plus one inrreg key::

    plugin: SLURM                       # any Nipype plugin: MultiProc, Linear, SLURM, SLURMGraph, SGE, ...
    plugin_args:
      sbatch_args: "-p cpu --mem=8G -t 01:00:00"   # every submitted node (CPU nodes)
    gpu_sbatch_args: "-p gpu --gres=gpu:1 -c 4 --mem=16G -t 01:00:00"   # INR registration nodes only

Under the batch plugins (SLURM, SLURMGraph, ...) each node is one job; Nipype does not turn a
node's ``n_procs``/``mem_gb`` into scheduler flags, so the INR registration nodes (the GPU-capable
ones) get ``gpu_sbatch_args`` (or ``--gpu-sbatch-args``) *instead of* ``plugin_args.sbatch_args``
through ``node.plugin_args = {'sbatch_args': ..., 'overwrite': True}``; every other node keeps
``plugin_args.sbatch_args``. With ``--device cpu`` no node asks for a GPU.

Every mistake in the file is one line and exit 64 (``UsageError``), never a traceback.
"""
from __future__ import annotations

import getpass
import logging
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from nipype.pipeline import plugins

from inrreg_pipeline.workflows import multiproc_plugin_args

from .parser import EXIT_USAGE, UsageError

#: Nipype plugins that submit every node as a batch job (and read ``os.environ['LOGNAME']``)
BATCH_PLUGINS = {"SLURM", "SLURMGraph", "SGE", "SGEGraph", "PBS", "PBSGraph", "LSF", "OAR", "Condor",
                 "CondorDAGMan"}
#: batch plugins that submit the whole graph and return at once (the jobs run after the app exits)
GRAPH_PLUGINS = {"SLURMGraph", "SGEGraph", "PBSGraph", "CondorDAGMan"}
#: plugins whose per-node arguments are ``sbatch_args``
SLURM_PLUGINS = {"SLURM", "SLURMGraph"}
_TOP_KEYS = ("plugin", "plugin_args", "gpu_sbatch_args")
_SCHEDULER_COMMANDS = {"SLURM": ("sbatch", "squeue"), "SLURMGraph": ("sbatch",)}


@dataclass
class PluginSettings:
    plugin: str
    plugin_args: dict = field(default_factory=dict)
    gpu_sbatch_args: str | None = None

    @property
    def batch(self) -> bool:
        return self.plugin in BATCH_PLUGINS

    @property
    def graph(self) -> bool:
        return self.plugin in GRAPH_PLUGINS


def nipype_plugins() -> dict[str, str]:
    """Lower-case name -> Nipype's spelling of every plugin ``Workflow.run(plugin=...)`` accepts."""
    return {name[:-len("Plugin")].lower(): name[:-len("Plugin")] for name in dir(plugins)
            if name.endswith("Plugin") and name != "Plugin"}


def _check_args(text, where: str) -> str:
    if not isinstance(text, str):
        raise UsageError(f"{where} must be a string of scheduler options (e.g. \"--gres=gpu:1 -c 4\"), "
                         f"not {type(text).__name__}", EXIT_USAGE)
    try:
        shlex.split(text)
    except ValueError as err:
        raise UsageError(f"{where} '{text}' cannot be split into options ({err})", EXIT_USAGE) from None
    return text


def load_plugin_file(path: Path) -> PluginSettings:
    """Read and check a ``--use-plugin`` YAML file (every error: :class:`UsageError`, exit 64)."""
    import yaml

    where = f"--use-plugin '{path}'"
    try:
        conf = yaml.safe_load(Path(path).read_text())
    except OSError as err:
        raise UsageError(f"{where}: {err.strerror or err}", EXIT_USAGE) from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        what = getattr(err, "problem", None) or (str(err).strip().splitlines() or [type(err).__name__])[0]
        where_in = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise UsageError(f"{where} is not valid YAML ({what}{where_in})", EXIT_USAGE) from None
    if not isinstance(conf, dict) or "plugin" not in conf:
        raise UsageError(f"{where} needs a 'plugin:' key (e.g. 'plugin: SLURM')", EXIT_USAGE)
    unknown = sorted(str(k) for k in conf if k not in _TOP_KEYS)
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)} (known: {', '.join(_TOP_KEYS)})",
                         EXIT_USAGE)
    known = nipype_plugins()
    name = conf["plugin"]
    if not isinstance(name, str) or name.lower() not in known:
        raise UsageError(f"{where}: unknown plugin {name!r} (Nipype has {', '.join(sorted(known.values()))})",
                         EXIT_USAGE)
    args = conf.get("plugin_args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise UsageError(f"{where}: 'plugin_args' must be a mapping of option: value", EXIT_USAGE)
    settings = PluginSettings(known[name.lower()], dict(args))
    for key in ("sbatch_args", "qsub_args", "bsub_args"):
        if key in settings.plugin_args:
            _check_args(settings.plugin_args[key], f"{where}: plugin_args.{key}")
    for key in ("n_procs", "max_jobs"):
        value = settings.plugin_args.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise UsageError(f"{where}: plugin_args.{key} must be an integer >= 1, not {value!r}", EXIT_USAGE)
    value = settings.plugin_args.get("memory_gb")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0):
        raise UsageError(f"{where}: plugin_args.memory_gb must be a number > 0, not {value!r}", EXIT_USAGE)
    if conf.get("gpu_sbatch_args") is not None:
        settings.gpu_sbatch_args = _check_args(conf["gpu_sbatch_args"], f"{where}: gpu_sbatch_args")
    return settings


def plugin_settings(opts) -> PluginSettings:
    """The plugin of a run: ``--use-plugin`` (checked), else MultiProc over ``--nprocs`` (Linear for 1).

    MultiProc always gets :func:`~inrreg_pipeline.workflows.multiproc_plugin_args` underneath what the
    file says (forkserver workers, GPU slots); ``--gpu-sbatch-args`` overrides the file's key.
    """
    if opts.use_plugin:
        settings = load_plugin_file(opts.use_plugin)
    else:
        nprocs = opts.nprocs or os.cpu_count() or 1
        settings = PluginSettings("Linear") if nprocs == 1 else PluginSettings(
            "MultiProc", multiproc_plugin_args(n_procs=nprocs, memory_gb=opts.mem_gb, raise_insufficient=False))
    if settings.plugin == "MultiProc" and opts.use_plugin:
        args = dict(settings.plugin_args)
        args.setdefault("raise_insufficient", False)
        if opts.nprocs and "n_procs" not in args:
            args["n_procs"] = opts.nprocs
        if opts.mem_gb and "memory_gb" not in args:
            args["memory_gb"] = opts.mem_gb
        settings.plugin_args = multiproc_plugin_args(**args)
    if settings.plugin == "SLURMGraph":
        # Nipype's SLURMGraph only defines this attribute when plugin_args is non-empty (AttributeError otherwise)
        settings.plugin_args.setdefault("dont_resubmit_completed_jobs", False)
    gpu_args = getattr(opts, "gpu_sbatch_args", None)
    if gpu_args is not None:
        settings.gpu_sbatch_args = _check_args(gpu_args, "--gpu-sbatch-args")
    if settings.gpu_sbatch_args is not None and settings.plugin not in SLURM_PLUGINS:
        logging.getLogger("inrreg-bids").warning(
            "GPU sbatch arguments are only used by the SLURM and SLURMGraph plugins (plugin here: %s)",
            settings.plugin)
    for command in _SCHEDULER_COMMANDS.get(settings.plugin, ()):
        if shutil.which(command) is None:
            raise UsageError(f"plugin {settings.plugin} needs '{command}' on PATH, which is not there (run on a "
                             f"node that can submit SLURM jobs, or use MultiProc)", EXIT_USAGE)
    return settings


def ensure_logname() -> str:
    """Nipype's batch plugins name jobs after ``os.environ['LOGNAME']`` (``KeyError`` when unset, as
    under ``apptainer --cleanenv``, cron or some schedulers): set it from the user database or the uid."""
    name = os.environ.get("LOGNAME")
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):  # no passwd entry for this uid (containers)
            name = ""
        os.environ["LOGNAME"] = name or f"uid{os.getuid()}"
    return os.environ["LOGNAME"]


def gpu_capable(node, device: str = "auto") -> bool:
    """A node that may run on a GPU: its interface has Nipype's GPU flag (a ``use_gpu``/``use_cuda``
    input; the INR registration nodes) and it is not pinned to the CPU (``device`` input / ``--device``).

    On a cluster the submit host often has no GPU, so the flag's *value* (set when this host sees
    CUDA) is not what counts: the job's device is decided on the compute node (``auto``)."""
    if not any(name in node.inputs.trait_names() for name in ("use_gpu", "use_cuda")):
        return False
    node_device = getattr(node.inputs, "device", None)
    spec = str(node_device if isinstance(node_device, str) else device or "auto").strip().lower()
    return spec != "cpu"


def apply_gpu_sbatch_args(workflow, settings: PluginSettings, device: str = "auto") -> list[str]:
    """Give the GPU-capable nodes of ``workflow`` (nested workflows included) their own
    ``sbatch_args``; return their full names. A no-op unless a SLURM plugin has GPU arguments."""
    if settings.plugin not in SLURM_PLUGINS or not settings.gpu_sbatch_args:
        return []
    names = []
    for name in workflow.list_node_names():
        node = workflow.get_node(name)
        if node is not None and gpu_capable(node, device):
            node.plugin_args = {**(node.plugin_args or {}), "sbatch_args": settings.gpu_sbatch_args,
                                "overwrite": True}
            names.append(name)
    return names
