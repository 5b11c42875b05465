"""Command line of ``inrreg-bids`` (fMRIPrep-style options; see ``docs/conventions.md``)."""
from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

from inrreg_pipeline import __version__
from inrreg_pipeline.cli import SEED_MAX, positive_int, seed_int

from .spaces import parse_space, template_space

#: BIDS App exit codes (BIDS execution spec; sysexits where the spec has none).
EXIT_OK, EXIT_FAILURE = 0, 1
EXIT_BIDS_INVALID = 16        # not a BIDS folder
EXIT_UNKNOWN_LEVEL = 17       # analysis level other than participant / group
EXIT_NO_FILES = 18            # the filters selected no files
EXIT_USAGE = 64               # EX_USAGE
EXIT_DATAERR = 65             # EX_DATAERR: unreadable / corrupted image, template and dseg on different grids
EXIT_NOINPUT = 66             # EX_NOINPUT: valid BIDS, required files missing
EXIT_SOFTWARE = 70            # EX_SOFTWARE: the workflow could not be built
EXIT_CANTCREAT = 73           # EX_CANTCREAT: cannot create output

LEVELS = ("participant", "group")
_LABEL = re.compile(r"[A-Za-z0-9]+")
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


class UsageError(Exception):
    """A command-line error: one line, exit 64 (or ``code``)."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


class AppError(UsageError):
    """A user-facing error found after the options were read (paths, inputs, presets): one line,
    exit ``code``."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block, no SystemExit(2)
        raise UsageError(message)


def parse_mem(value: str) -> float:
    """``--mem`` in GB: MB by default; ``G``/``GB``/``M``/``MB`` suffixes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([GgMm][Bb]?)?\s*", str(value))
    if not m:
        raise argparse.ArgumentTypeError(f"'{value}' is not a memory amount (e.g. 8000, 8000M, 8G)")
    number, unit = float(m.group(1)), (m.group(2) or "M").upper()[0]
    if number <= 0:
        raise argparse.ArgumentTypeError(f"'{value}' must be > 0")
    return number if unit == "G" else number / 1024.0


def label(value: str) -> str:
    """A participant/session label, ``sub-``/``ses-`` prefix removed; path characters rejected."""
    text = str(value)
    for prefix in ("sub-", "ses-"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    if not _LABEL.fullmatch(text):
        raise argparse.ArgumentTypeError(f"'{value}' is not a BIDS label (letters and digits only)")
    return text


def device(value: str) -> str:
    if not _DEVICE.fullmatch(str(value)):
        raise argparse.ArgumentTypeError(f"'{value}' is not a device (auto, cpu, cuda or cuda:N)")
    return str(value)


def derivative(value: str) -> tuple[str, Path]:
    name, sep, path = str(value).partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"'{value}' is not NAME=PATH")
    return name, Path(path)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="inrreg-bids",
                description="inrreg BIDS App: T1w images to a template (and other anatomical contrasts to the "
                            "T1w) with untrained implicit neural representations; ANTs-compatible transforms, "
                            "BIDS Derivatives, reports; optionally the ANTs baseline side by side.")
    p.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset")
    p.add_argument("output_dir", type=Path, help="output folder (BIDS Derivatives)")
    p.add_argument("analysis_level", help="participant or group")
    p.add_argument("--version", action="version", version=f"inrreg-bids {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output (repeatable)")

    g = p.add_argument_group("BIDS selection")
    g.add_argument("--participant-label", "--participant_label", nargs="+", type=label, default=None,
                   metavar="LABEL", help="participants to process (with or without 'sub-'); default all")
    g.add_argument("--session-label", "--session_label", nargs="+", type=label, default=None, metavar="LABEL")
    g.add_argument("--bids-filter-file", "--bids_filter_file", type=Path, default=None, metavar="FILE",
                   help="JSON of PyBIDS queries per kind: {\"t1w\": {...}, \"t2w\": {...}, ...}")
    g.add_argument("--skip-bids-validation", "--skip_bids_validation", action="store_true",
                   help="do not require dataset_description.json")
    g.add_argument("--bids-database-dir", type=Path, default=None, metavar="DIR",
                   help="existing PyBIDS database to reuse (read only); default: in memory")
    g.add_argument("-d", "--derivatives", nargs="+", type=derivative, default=[], metavar="NAME=PATH",
                   help="derivative datasets; 'labels=PATH' holds *_dseg.nii.gz per participant for evaluation")

    g = p.add_argument_group("Template")
    g.add_argument("--output-spaces", "--output_spaces", nargs="+", type=parse_space, default=None,
                   metavar="SPACE",
                   help="fMRIPrep-style template space from TemplateFlow, e.g. MNI152NLin2009cAsym:res-2 (also "
                        ":cohort-N; T1w and anat are accepted and always written); the files must be in "
                        "$TEMPLATEFLOW_HOME (nothing is downloaded); default: nilearn's embedded MNI152 2009a")
    g.add_argument("--template", type=Path, default=None, metavar="T1W",
                   help="template T1w image (default: nilearn's MNI152 2009a brain)")
    g.add_argument("--template-mask", type=Path, default=None, metavar="MASK")
    g.add_argument("--template-dseg", type=Path, default=None, metavar="DSEG",
                   help="template labels (same grid as the template): evaluation and report contours")
    g.add_argument("--template-name", default=None, metavar="NAME",
                   help="space name in file names (default MNI152NLin2009aSym for nilearn's, 'custom' otherwise)")
    g.add_argument("--template-resolution", type=float, default=None, metavar="MM",
                   help="voxel size of nilearn's template (default 2; 4 with --sloppy)")
    g.add_argument("--skull-stripped", action="store_true", help="inputs are brain-only (no mask estimation)")

    g = p.add_argument_group("Registration")
    g.add_argument("--method", default="auto", help="INR method (auto, siren, relu, ..., two-network)")
    g.add_argument("--preset", default=None, help="INR preset name or JSON file (default: svf, or the method's own preset: inrreg register --help)")
    g.add_argument("--multimodal-preset", default=None, help="preset of the T2w/FLAIR/... to T1w co-registration")
    g.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--compare-ants", nargs="?", const="ants-syn-cc", default=None, metavar="PRESET",
                   help="also run a classical baseline: ants-syn-cc (default), ants-syn, ants-precise, "
                        "antspyx-syn-s, antspyx-synquick-s, greedy, greedy-permissive, fireants or fireants-syn")

    g = p.add_argument_group("Resources and runs")
    g.add_argument("--nprocs", "--n-cpus", "--n_cpus", type=positive_int, default=None, dest="nprocs")
    g.add_argument("--omp-nthreads", type=positive_int, default=None)
    g.add_argument("--mem", "--mem-mb", "--mem_mb", type=parse_mem, default=None, dest="mem_gb",
                   help="memory (MB by default; G/M suffixes)")
    g.add_argument("--use-plugin", "--use_plugin", type=Path, default=None, metavar="FILE",
                   help="YAML with plugin: (MultiProc, SLURM, SLURMGraph, ...), plugin_args: and, for SLURM, "
                        "gpu_sbatch_args: (see the README's SLURM section)")
    g.add_argument("--gpu-sbatch-args", "--gpu_sbatch_args", default=None, metavar="ARGS",
                   help="SLURM/SLURMGraph plugins: sbatch options of the INR registration (GPU) nodes instead of "
                        "plugin_args.sbatch_args, e.g. --gpu-sbatch-args='--gres=gpu:1 -c 4 -p gpu' (write it "
                        "with '='); overrides the plugin file's gpu_sbatch_args; other nodes keep theirs")
    g.add_argument("--low-mem", action="store_true",
                   help="MultiProc: run one registration at a time (lower peak memory, longer run)")
    g.add_argument("--sloppy", action="store_true", help="tiny iteration counts: tests only, inaccurate")
    g.add_argument("-w", "--work-dir", type=Path, default=Path("work"))
    g.add_argument("--clean-workdir", action="store_true", help="empty the work dir before running")
    g.add_argument("--stop-on-first-crash", action="store_true")
    g.add_argument("--resource-monitor", action="store_true")
    g.add_argument("--write-graph", action="store_true")
    g.add_argument("--notrack", action="store_true", help="accepted for compatibility (inrreg never tracks)")
    g.add_argument("--reports-only", action="store_true", help="rebuild the HTML reports from existing outputs")
    g.add_argument("--boilerplate-only", "--boilerplate_only", action="store_true",
                   help="write logs/CITATION.md and stop")
    g.add_argument("--random-seed", type=seed_int, default=0, help=f"random seed in [0, {SEED_MAX}] (default: 0)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Parse, then check what argparse cannot (analysis level: exit 17)."""
    opts = build_parser().parse_args(argv)
    if opts.analysis_level not in LEVELS:
        raise UsageError(f"unknown analysis level '{opts.analysis_level}' (choose participant or group)",
                         EXIT_UNKNOWN_LEVEL)
    try:
        opts.template_space = template_space(opts.output_spaces)
    except ValueError as err:
        raise UsageError(str(err)) from None
    if opts.template_space is not None:
        clash = [flag for flag, value in (("--template", opts.template), ("--template-mask", opts.template_mask),
                                          ("--template-dseg", opts.template_dseg),
                                          ("--template-name", opts.template_name),
                                          ("--template-resolution", opts.template_resolution)) if value is not None]
        if clash:
            raise UsageError(f"--output-spaces {opts.template_space.identifier} names the template; drop "
                             f"{', '.join(clash)} (give the resolution as :res-N)")
    return opts


def parse_demo_args(argv=None) -> argparse.Namespace:
    """Options of ``inrreg-bids --demo OUT`` (argparse's own errors: exit 2, as before)."""
    p = argparse.ArgumentParser(prog="inrreg-bids --demo",
                                description="A small demo BIDS dataset made from nilearn's MNI152 template, and a "
                                            "full run on it.")
    p.add_argument("out", type=Path, help="demo folder (bids/, inrreg/, work/ are made inside)")
    p.add_argument("--resolution", type=float, default=4.0, help="voxel size of the demo images (mm)")
    p.add_argument("--preset", default="fast", help="INR preset (default: fast)")
    p.add_argument("--ants-preset", default="ants-syn-cc")
    p.add_argument("--device", default="auto")
    p.add_argument("--nprocs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--sloppy", action="store_true", help="tiny iteration counts (tests)")
    return p.parse_args(argv)
