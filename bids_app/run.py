"""``inrreg-bids bids_dir output_dir {participant,group}``: the entry point (``main(argv) -> int``)
and the two analysis levels, from the checked options to the finished run.

Every user error ends with one line on stderr and a BIDS-App exit code (see :mod:`.parser`);
tracebacks are for bugs only. What each step does lives in its own module: :mod:`.paths` (folder
checks), :mod:`.image_checks`, :mod:`.templates`, :mod:`.queries` (BIDS), :mod:`.preset_options`,
:mod:`.resources` (threads, memory), :mod:`.derivative_dataset` (``dataset_description.json``),
:mod:`.execution` (Nipype configuration, Ctrl-C) and :mod:`.crashes`; ``--demo`` makes its dataset
with :mod:`.demo_dataset`.
"""
from __future__ import annotations

import logging
import shutil
import signal
import sys
from pathlib import Path

from inrreg_pipeline.core.space import resolve_device
from inrreg_pipeline.workflows import CITATIONS, LiterateWorkflow

from .cluster import apply_gpu_sbatch_args, ensure_logname, plugin_settings
from .demo_dataset import make_demo_dataset
from .derivative_dataset import copy_template, write_dataset_description
from .execution import EXIT_INTERRUPTED, EXIT_TERMINATED, execute
from .image_checks import check_image
from .parser import (EXIT_CANTCREAT, EXIT_NOINPUT, EXIT_OK, EXIT_SOFTWARE, EXIT_USAGE, AppError,
                     UsageError, parse_args, parse_demo_args)
from .paths import check_paths, inside, make_writable_dir, remove_if_left_empty, remove_stale_leftovers
from .preset_options import SLOPPY_ANTS_SCALE, resolve_presets
from .queries import collect_participants, load_filters, load_layout
from .reports import write_citation, write_group, write_participant_report
from .resources import node_threads, registration_mem_gb
from .templates import resolve_template, templateflow_files
from .workers import Terminated
from .workflow import Settings, init_participant_wf

LOG = logging.getLogger("inrreg-bids")


def main(argv=None) -> int:
    """``inrreg-bids`` (``argv``: the arguments after the program name; ``None``: ``sys.argv``).

    Returns the exit code; a user error is one line on stderr (codes in :mod:`.parser`), Ctrl-C 130
    and SIGTERM 143 (what schedulers send at a time limit), each with one line: the run stops,
    MultiProc's workers with it, finished nodes stay cached in the work dir and the same command
    resumes.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--demo"]:
        return run_demo(argv[1:])
    try:
        opts = parse_args(argv)
    except UsageError as err:
        print(f"inrreg-bids: error: {err}", file=sys.stderr)
        return err.code
    except SystemExit as err:  # --version, --help
        return int(err.code or 0) if not isinstance(err.code, str) else EXIT_USAGE
    logging.basicConfig(level=logging.WARNING - 10 * min(opts.verbose, 2), format="%(name)s: %(message)s")
    try:  # SIGTERM before or after the graph runs (execute() handles it while the graph runs)
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return run(opts)
    except AppError as err:
        print(f"inrreg-bids: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("inrreg-bids: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("inrreg-bids: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _on_sigterm(signum, frame) -> None:
    """SIGTERM outside the graph run: stop as for Ctrl-C (``finally`` blocks run), exit 143."""
    raise Terminated


def run_demo(argv: list[str]) -> int:
    """``inrreg-bids --demo OUT``: make the demo dataset (:mod:`.demo_dataset`) unless ``OUT/bids``
    exists, then run the participant level (INR and ``--compare-ants``) and the group level into
    ``OUT/inrreg`` through :func:`main`, and print where the reports are."""
    opts = parse_demo_args(argv)
    out = opts.out.resolve()
    bids = out / "bids"
    if not (bids / "dataset_description.json").exists():
        make_demo_dataset(bids, resolution=opts.resolution)
        print(f"demo dataset: {bids}")
    common = ["-w", str(out / "work"), "--nprocs", str(opts.nprocs)]
    args = [str(bids), str(out / "inrreg"), "participant", "--compare-ants", opts.ants_preset,
            "--template-resolution", f"{opts.resolution:g}", "-d", f"labels={bids / 'derivatives' / 'labels'}",
            "--device", opts.device, "--skull-stripped", *common]
    args += ["--sloppy"] if opts.sloppy else ["--preset", opts.preset]
    code = main(args)
    if code:
        return code
    code = main([str(bids), str(out / "inrreg"), "group", *common])
    if code == 0:
        print(f"open {out / 'inrreg' / 'sub-01.html'} and {out / 'inrreg' / 'group_registration.html'}")
    return code


def run(opts) -> int:
    """Both levels after the options were read: check the folders, then run the level asked for."""
    bids_dir, output_dir, work_dir = check_paths(opts)
    if opts.analysis_level == "group":
        return run_group(output_dir)
    created = [p for p in (output_dir, work_dir) if not p.exists()]
    try:
        return run_participant(opts, bids_dir, output_dir, work_dir)
    except AppError:  # refused before any work: no empty output or work folder left behind
        for folder in created:
            remove_if_left_empty(folder)
        raise


def run_group(output_dir: Path) -> int:
    """The group level: one table and one HTML report over the participants' evaluation tables."""
    if not output_dir.is_dir() or not any(output_dir.glob("sub-*/**/*_desc-evaluation_metrics.tsv")):
        raise AppError(f"no participant results in '{output_dir}' (run the participant level first)", EXIT_NOINPUT)
    try:
        tsv, html, n = write_group(output_dir)
    except OSError as err:
        raise AppError(f"cannot write the group outputs in '{output_dir}' ({err.strerror or err})", EXIT_CANTCREAT) \
            from None
    print(f"group report ({n} T1w image(s)): {html}")
    print(f"group table: {tsv}")
    return EXIT_OK


def run_participant(opts, bids_dir: Path, output_dir: Path, work_dir: Path) -> int:
    """The participant level: check every input, build one graph for all selected T1w images, run
    it (unless ``--boilerplate-only`` / ``--reports-only``) and write the reports."""
    try:  # a bad --use-plugin file fails before any work
        plugin = plugin_settings(opts)
    except UsageError as err:
        raise AppError(str(err), err.code) from None
    if not plugin.batch:  # a batch plugin's GPU nodes run elsewhere: only a local run needs CUDA here
        try:
            resolve_device(opts.device)
        except ValueError as err:
            raise AppError(f"--device: {err}", EXIT_USAGE) from None
    # a TemplateFlow space is looked up (read only) before any folder is made
    templateflow = templateflow_files(opts.template_space) if opts.template_space is not None else None
    labels_root = None
    for name, path in opts.derivatives:
        if not Path(path).is_dir():
            raise AppError(f"derivative '{name}' not found: '{path}'", EXIT_NOINPUT)
        if name == "labels":
            labels_root = Path(path).resolve()
        else:
            LOG.warning("derivative '%s' is not used by inrreg (only 'labels')", name)
    filters = load_filters(opts.bids_filter_file)
    make_writable_dir(work_dir, "work dir")
    if opts.clean_workdir:
        shutil.rmtree(work_dir / "inrreg_wf", ignore_errors=True)
    layout = load_layout(bids_dir, opts)
    participants = collect_participants(layout, opts, filters, labels_root)
    for p in participants:
        for path, role in [(p.t1w, "T1w")] + [(c.path, c.suffix) for c in p.others] + \
                [(p.dseg, "labels dseg")] * (p.dseg is not None):
            check_image(path, f"sub-{p.subject} {role}")
    make_writable_dir(output_dir, "output folder")
    remove_stale_leftovers(output_dir, skip=work_dir)  # of a run killed with SIGKILL
    tpl = resolve_template(opts, work_dir, templateflow)
    preset, mm_preset = resolve_presets(opts, work_dir)
    if plugin.batch:
        ensure_logname()
    omp = node_threads(opts, plugin)
    mem_node = registration_mem_gb(opts, plugin)
    settings = Settings(method=opts.method, preset=preset, multimodal_preset=mm_preset, device=opts.device,
                        compare_ants=opts.compare_ants, ants_scale=SLOPPY_ANTS_SCALE if opts.sloppy else 1.0,
                        seed=opts.random_seed, omp_nthreads=omp, mem_gb=mem_node,
                        skull_stripped=opts.skull_stripped, sloppy=opts.sloppy)
    try:
        write_dataset_description(output_dir, bids_dir)
        copy_template(output_dir, tpl)
    except OSError as err:
        raise AppError(f"cannot write in '{output_dir}' ({err.strerror or err})", EXIT_CANTCREAT) from None

    def source_uri(path: Path) -> str:
        path = Path(path).resolve()
        if inside(path, bids_dir):
            return f"bids:raw:{path.relative_to(bids_dir).as_posix()}"
        return path.as_uri()

    try:
        top = LiterateWorkflow(name="inrreg_wf", base_dir=str(work_dir))
        sub_wfs = {}
        for p in participants:
            wf = init_participant_wf(participant=p, template=tpl, output_dir=output_dir, settings=settings,
                                     source_uri=source_uri)
            top.add_nodes([wf])
            sub_wfs.setdefault(p.subject, []).append(wf)
    except (ValueError, TypeError, OSError) as err:
        print(f"inrreg-bids: error: the workflow could not be built: {str(err).splitlines()[0]}", file=sys.stderr)
        return EXIT_SOFTWARE
    gpu_nodes = apply_gpu_sbatch_args(top, plugin, opts.device)
    if gpu_nodes:
        LOG.info("%d GPU node(s) submitted with sbatch %s", len(gpu_nodes), plugin.gpu_sbatch_args)
    methods_text = top.visit_desc()
    write_citation(output_dir, methods_text, CITATIONS)
    if opts.boilerplate_only:
        print(f"citation boilerplate: {output_dir / 'logs' / 'CITATION.md'}")
        return EXIT_OK
    if not opts.reports_only:
        try:
            status = execute(top, opts, plugin, work_dir)
        except (KeyboardInterrupt, Terminated):  # a copy cut short in a worker killed by the signal
            remove_stale_leftovers(output_dir, skip=work_dir)
            raise
        if status != EXIT_OK:
            return status
        if plugin.graph:
            # the graph plugins submit every node with its dependencies and return: nothing has run yet
            print(f"submitted the workflow to the {plugin.plugin} scheduler (batch scripts in "
                  f"'{work_dir / 'inrreg_wf' / 'batch'}'); when the jobs have finished, run the same command "
                  f"with --reports-only to write the HTML reports")
            return EXIT_OK
    for subject, wfs in sub_wfs.items():
        text = "".join(dict.fromkeys(w.visit_desc() for w in wfs))
        report = write_participant_report(output_dir, subject, text, CITATIONS)
        print(f"report: {report}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
