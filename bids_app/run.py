"""``inrreg-bids bids_dir output_dir {participant,group}``: the entry point (``main(argv) -> int``).

Every user error ends with one line on stderr and a BIDS-App exit code (see :mod:`.parser`);
tracebacks are for bugs only.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("NIPYPE_NO_ET", "1")  # no network check at nipype import

from .cluster import apply_gpu_sbatch_args, ensure_logname, plugin_settings  # noqa: E402
from .parser import (EXIT_BIDS_INVALID, EXIT_CANTCREAT, EXIT_DATAERR, EXIT_FAILURE, EXIT_NO_FILES,  # noqa: E402
                     EXIT_NOINPUT, EXIT_OK, EXIT_SOFTWARE, EXIT_USAGE, UsageError, parse_args)

LOG = logging.getLogger("inrreg-bids")
CODE_URL = "https://github.com/inrreg/inrreg"
NILEARN_TEMPLATE = "MNI152NLin2009aSym"
#: iteration counts of ``--sloppy`` (tests and quick looks only)
SLOPPY_PRESET = {"description": "inrreg-bids --sloppy: a handful of iterations (tests only)",
                 "affine": {"shrink_factors": [2, 1], "iterations": [20, 10], "rigid_iterations": 10,
                            "samples": 2000},
                 "network": {"hidden_layers": 2, "hidden_features": 32},
                 "optimisation": {"iterations": 20, "patch_size": 8, "patches": 2}, "inverse_iterations": 5}
SLOPPY_ANTS_SCALE = 0.05
_QUERY_SUFFIXES = ("T2w", "FLAIR", "PDw", "PD", "T2starw")
_IMAGE_EXT = [".nii", ".nii.gz"]


class AppError(UsageError):
    """A user-facing error: one line, exit ``code``."""


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--demo"]:
        from .demo import main as demo

        return demo(argv[1:])
    try:
        opts = parse_args(argv)
    except UsageError as err:
        print(f"inrreg-bids: error: {err}", file=sys.stderr)
        return err.code
    except SystemExit as err:  # --version, --help
        return int(err.code or 0) if not isinstance(err.code, str) else EXIT_USAGE
    logging.basicConfig(level=logging.WARNING - 10 * min(opts.verbose, 2), format="%(name)s: %(message)s")
    try:
        return run(opts)
    except AppError as err:
        print(f"inrreg-bids: error: {err}", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        print("inrreg-bids: interrupted", file=sys.stderr)
        return 130


# ------------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------------
def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _make_writable_dir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".inrreg-write-test-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise AppError(f"cannot create or write the {what} '{path}' ({err.strerror or err})", EXIT_CANTCREAT) \
            from None


def check_paths(opts) -> tuple[Path, Path, Path]:
    bids_dir = Path(opts.bids_dir).expanduser().resolve()
    output_dir = Path(opts.output_dir).expanduser().resolve()
    work_dir = Path(opts.work_dir).expanduser().resolve()
    if not bids_dir.is_dir():
        raise AppError(f"'{opts.bids_dir}' is not a BIDS dataset (no such folder)", EXIT_BIDS_INVALID)
    if not opts.skip_bids_validation:
        check_dataset_description(bids_dir, opts.bids_dir)
    suggestion = bids_dir / "derivatives" / "inrreg"
    if output_dir == bids_dir:
        raise AppError(f"output_dir is the input dataset; use e.g. '{suggestion}'", EXIT_CANTCREAT)
    if _inside(output_dir, bids_dir) and not _inside(output_dir, bids_dir / "derivatives"):
        raise AppError(f"output_dir '{output_dir}' is inside the input dataset; use e.g. '{suggestion}'",
                       EXIT_CANTCREAT)
    if _inside(bids_dir, output_dir):
        raise AppError(f"output_dir '{output_dir}' contains the input dataset; choose another folder",
                       EXIT_CANTCREAT)
    if _inside(work_dir, bids_dir):
        raise AppError(f"work dir '{work_dir}' is inside the input dataset, which is never written to; "
                       f"choose another -w/--work-dir", EXIT_USAGE)
    return bids_dir, output_dir, work_dir


def check_dataset_description(bids_dir: Path, given: str) -> None:
    """A BIDS dataset has a ``dataset_description.json`` holding a JSON object; ``AppError`` (16,
    not BIDS) naming what is wrong otherwise (``--skip-bids-validation`` skips this check)."""
    path = bids_dir / "dataset_description.json"
    hint = "--skip-bids-validation to go on anyway"
    if not path.is_file():
        raise AppError(f"'{given}' is not a BIDS dataset (no dataset_description.json; {hint})", EXIT_BIDS_INVALID)
    try:
        description = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise AppError(f"'{given}' is not a BIDS dataset (dataset_description.json cannot be read: "
                       f"{err.strerror or err}; {hint})", EXIT_BIDS_INVALID) from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AppError(f"'{given}' is not a BIDS dataset (dataset_description.json is not valid JSON: {detail}; "
                       f"{hint})", EXIT_BIDS_INVALID) from None
    if not isinstance(description, dict):
        raise AppError(f"'{given}' is not a BIDS dataset (dataset_description.json must hold a JSON object, not "
                       f"{type(description).__name__}; {hint})", EXIT_BIDS_INVALID)


def check_image(path: Path, role: str):
    """Load a NIfTI fully (a truncated or corrupted file fails here, not inside the graph)."""
    import nibabel as nib
    import numpy as np

    from inrreg_pipeline.io.images import quiet_nibabel

    try:
        with quiet_nibabel():
            img = nib.load(str(path))
            data = np.asanyarray(img.dataobj)
    except FileNotFoundError:
        raise AppError(f"{role} '{path}' does not exist", EXIT_NOINPUT) from None
    except Exception as err:  # nibabel raises many kinds (ImageFileError, EOFError, zlib.error, ...)
        raise AppError(f"{role} '{path}' is not a readable NIfTI image ({type(err).__name__}: "
                       f"{str(err).splitlines()[0] if str(err) else 'corrupted'})", EXIT_DATAERR) from None
    if data.ndim < 3 or min(data.shape[:3]) < 2:
        raise AppError(f"{role} '{path}' is not a 3-D image (shape {data.shape})", EXIT_DATAERR)
    if not np.isfinite(data).all():
        raise AppError(f"{role} '{path}' contains NaN or infinite values", EXIT_DATAERR)
    return img


def check_same_grid(ref_img, ref_path, img, path, role):
    import numpy as np

    if img.shape[:3] != ref_img.shape[:3] or not np.allclose(img.affine, ref_img.affine, atol=1e-3):
        raise AppError(f"{role} '{path}' is not on the template's grid (shape {img.shape[:3]} vs "
                       f"{ref_img.shape[:3]} of '{ref_path}', or different affine)", EXIT_DATAERR)


# ------------------------------------------------------------------------------------------------
# template
# ------------------------------------------------------------------------------------------------
def nilearn_template(work_dir: Path, resolution: float) -> dict:
    """nilearn's MNI152 (ICBM 2009a) brain, brain mask and a GM(1)/WM(2) dseg from its tissue maps,
    written once under ``work_dir/templates``."""
    import nibabel as nib
    import numpy as np
    from nibabel.processing import resample_from_to, resample_to_output
    from nilearn import datasets

    folder = work_dir / "templates" / f"{NILEARN_TEMPLATE}_res-{resolution:g}mm"
    paths = {k: folder / f"tpl-{NILEARN_TEMPLATE}_{k}.nii.gz" for k in ("T1w", "mask", "dseg")}
    if all(p.exists() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    t1 = datasets.load_mni152_template(resolution=2)
    mask = datasets.load_mni152_brain_mask(resolution=2)
    gm = datasets.load_mni152_gm_template(resolution=2)
    wm = datasets.load_mni152_wm_template(resolution=2)
    t1 = nib.Nifti1Image(np.asarray(t1.get_fdata(), np.float32), t1.affine)
    if abs(resolution - 2.0) > 1e-6:
        t1 = resample_to_output(t1, voxel_sizes=[resolution] * 3, order=1)
    mask_r = resample_from_to(nib.Nifti1Image(np.asarray(mask.get_fdata(), np.float32), mask.affine), t1, order=1)
    gm_r = resample_from_to(nib.Nifti1Image(np.asarray(gm.get_fdata(), np.float32), gm.affine), t1, order=1)
    wm_r = resample_from_to(nib.Nifti1Image(np.asarray(wm.get_fdata(), np.float32), wm.affine), t1, order=1)
    g, w = gm_r.get_fdata(), wm_r.get_fdata()
    brain = mask_r.get_fdata() > 0.5
    dseg = np.where(brain & (np.maximum(g, w) > 0.3), np.where(w > g, 2, 1), 0).astype(np.int16)
    images = {"T1w": nib.Nifti1Image(np.asarray(t1.get_fdata(), np.float32), t1.affine),
              "mask": nib.Nifti1Image(brain.astype(np.uint8), t1.affine),
              "dseg": nib.Nifti1Image(dseg, t1.affine)}
    for key, img in images.items():
        tmp = folder / f".tmp_{os.getpid()}_{paths[key].name}"
        nib.save(img, str(tmp))
        os.replace(tmp, paths[key])
    return paths


def resolve_template(opts, work_dir: Path):
    from .workflow import Template

    res = opts.template_resolution or (4.0 if opts.sloppy else 2.0)
    if opts.template is None:
        if opts.template_mask or opts.template_dseg:
            raise AppError("--template-mask/--template-dseg need --template", EXIT_USAGE)
        paths = nilearn_template(work_dir, res)
        name = opts.template_name or NILEARN_TEMPLATE
        tpl = Template(name=name, t1w=paths["T1w"], mask=paths["mask"], dseg=paths["dseg"], contours=paths["dseg"],
                       standard=abs(res - 2.0) < 1e-6 and name == NILEARN_TEMPLATE,
                       description=f"MNI152 ICBM 2009a nonlinear symmetric (nilearn's copy, {res:g} mm, brain; "
                                   f"GM=1/WM=2 labels from its tissue maps)")
    else:
        name = opts.template_name or "custom"
        tpl = Template(name=name, t1w=Path(opts.template).resolve(),
                       mask=Path(opts.template_mask).resolve() if opts.template_mask else None,
                       dseg=Path(opts.template_dseg).resolve() if opts.template_dseg else None,
                       description=f"user-supplied ('{Path(opts.template).name}')")
        tpl.contours = tpl.dseg
    if not re.fullmatch(r"[A-Za-z0-9]+", name):
        raise AppError(f"--template-name '{name}' must be letters and digits only", EXIT_USAGE)
    ref = check_image(tpl.t1w, "template")
    for role, path in (("template mask", tpl.mask), ("template dseg", tpl.dseg)):
        if path is not None:
            check_same_grid(ref, tpl.t1w, check_image(path, role), path, role)
    if tpl.mask is None and not opts.skull_stripped:
        LOG.warning("no --template-mask: no brain mask will be estimated for the participants")
    return tpl


# ------------------------------------------------------------------------------------------------
# BIDS queries
# ------------------------------------------------------------------------------------------------
def load_layout(bids_dir: Path, opts):
    from bids.layout import BIDSLayout, BIDSLayoutIndexer

    indexer = BIDSLayoutIndexer(validate=False, ignore=["code", "sourcedata", "stimuli", "models", "derivatives",
                                                        re.compile(r"/\.")])
    kwargs = {}
    if opts.bids_database_dir:
        kwargs["database_path"] = str(Path(opts.bids_database_dir).resolve())
    try:
        return BIDSLayout(str(bids_dir), validate=False, indexer=indexer, **kwargs)
    except Exception as err:
        raise AppError(f"cannot index '{bids_dir}' as BIDS ({type(err).__name__}: {err})", EXIT_BIDS_INVALID) \
            from None


def load_filters(path: Path | None) -> dict:
    if path is None:
        return {}
    try:
        filters = json.loads(Path(path).read_text())
    except OSError as err:
        raise AppError(f"--bids-filter-file '{path}': {err.strerror}", EXIT_USAGE) from None
    except ValueError as err:
        raise AppError(f"--bids-filter-file '{path}' is not valid JSON ({err})", EXIT_USAGE) from None
    if not isinstance(filters, dict) or not all(isinstance(v, dict) for v in filters.values()):
        raise AppError(f"--bids-filter-file '{path}' must map kinds (t1w, t2w, flair, ...) to query objects",
                       EXIT_USAGE)
    known = {"t1w", "cet1w", *(s.lower() for s in _QUERY_SUFFIXES)}
    unknown = sorted(set(filters) - known)
    if unknown:
        raise AppError(f"--bids-filter-file: unknown kind(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})",
                       EXIT_USAGE)
    for kind, query in filters.items():
        for key, value in query.items():
            if value is None:
                from bids.layout import Query

                query[key] = Query.NONE
            elif value == "*":
                from bids.layout import Query

                query[key] = Query.ANY
    return filters


def find_labels(labels_root: Path, subject: str, session: str | None, entities: str = "",
                first: bool = True) -> Path | None:
    """The ``*_dseg`` of one T1w in the labels derivative: the one named with the T1w's ``entities``
    (``_run-2``, ...), else, for the session's first T1w only (``first``), the subject's first."""
    base = labels_root / f"sub-{subject}"
    candidates = []
    if session:
        candidates += sorted((base / f"ses-{session}" / "anat").glob(f"sub-{subject}_ses-{session}*_dseg.nii*"))
    candidates += sorted((base / "anat").glob(f"sub-{subject}*_dseg.nii*"))
    candidates = [c for c in candidates if "_space-" not in c.name]
    named = [c for c in candidates if entities and f"{entities}_" in c.name]
    return named[0] if named else candidates[0] if candidates and first else None


def collect_participants(layout, opts, filters: dict, labels_root: Path | None):
    from bids.layout import Query

    from .workflow import Contrast, Participant, name_entities

    subjects = sorted(layout.get_subjects())
    if opts.participant_label:
        missing = [s for s in opts.participant_label if s not in subjects]
        if missing:
            raise AppError(f"participant(s) not found in the dataset: {', '.join('sub-' + s for s in missing)}",
                           EXIT_NOINPUT)
        subjects = [s for s in subjects if s in opts.participant_label]
    if not subjects:
        raise AppError("no participants (sub-*) in the dataset", EXIT_NOINPUT)
    out, no_t1w, n_selected = [], [], 0
    for sub in subjects:
        sessions = sorted(layout.get_sessions(subject=sub)) or [None]
        if opts.session_label:
            sessions = [s for s in sessions if s in opts.session_label]
            if not sessions:
                continue
        for ses in sessions:
            base = {"subject": sub, "datatype": "anat", "extension": _IMAGE_EXT}
            if ses is not None:
                base["session"] = ses
            t1 = layout.get(**{**base, "suffix": "T1w", "ceagent": Query.NONE, **filters.get("t1w", {})})
            t1 = sorted(t1, key=lambda f: f.path)
            n_selected += len(t1)
            if not t1:
                no_t1w.append(f"sub-{sub}" + (f"_ses-{ses}" if ses else ""))
                continue
            others = []
            for suffix in _QUERY_SUFFIXES:
                for f in layout.get(**{**base, "suffix": suffix, **filters.get(suffix.lower(), {})}):
                    others.append(Contrast(Path(f.path), suffix, f.get_entities()))
            for f in layout.get(**{**base, "suffix": "T1w", "ceagent": Query.ANY, **filters.get("cet1w", {})}):
                others.append(Contrast(Path(f.path), "T1w", f.get_entities()))
            others = sorted(others, key=lambda c: str(c.path))
            if len(t1) > 1:
                LOG.info("sub-%s%s: %d T1w images, each registered; other contrasts co-registered to %s", sub,
                         f" ses-{ses}" if ses else "", len(t1), Path(t1[0].path).name)
            for i, image in enumerate(t1):
                entities = image.get_entities()
                dseg = (find_labels(labels_root, sub, ses, name_entities(entities), first=i == 0)
                        if labels_root else None)
                if labels_root and dseg is None:
                    LOG.warning("sub-%s: no *_dseg.nii.gz for %s in the labels derivative: no label evaluation",
                                sub, Path(image.path).name)
                out.append(Participant(sub, ses, Path(image.path), others if i == 0 else [], dseg, entities))
    if filters and n_selected == 0:
        raise AppError(f"--bids-filter-file '{opts.bids_filter_file}' selected no T1w images", EXIT_NO_FILES)
    if opts.session_label and not out and not no_t1w:
        raise AppError(f"session(s) {', '.join(opts.session_label)} not found for the selected participants",
                       EXIT_NOINPUT)
    if no_t1w:
        raise AppError(f"no T1w image for {', '.join(no_t1w)}", EXIT_NOINPUT)
    return out


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------
def container_info() -> dict:
    """``GeneratedBy.Container``: the image's ``INRREG_CONTAINER_TYPE``/``INRREG_CONTAINER_TAG`` (set by the
    Dockerfile's build arguments); a Docker image run by Apptainer/Singularity keeps its tag and says so."""
    ctype, ctag = os.environ.get("INRREG_CONTAINER_TYPE"), os.environ.get("INRREG_CONTAINER_TAG")
    if ctype or ctag:
        if os.environ.get("APPTAINER_CONTAINER"):
            ctype = "apptainer"
        elif os.environ.get("SINGULARITY_CONTAINER"):
            ctype = "singularity"
    return {k: v for k, v in (("Type", ctype), ("Tag", ctag)) if v}


def write_dataset_description(output_dir: Path, bids_dir: Path) -> None:
    from inrreg_pipeline import __version__

    from .interfaces import atomic_write_text

    gen = {"Name": "inrreg", "Version": __version__, "CodeURL": CODE_URL}
    container = container_info()
    if container:
        gen["Container"] = container
    source = {"URL": bids_dir.as_uri()}
    try:
        raw = json.loads((bids_dir / "dataset_description.json").read_text())
        for key in ("DOI", "Name"):
            if raw.get(key):
                source[key] = raw[key]
    except (OSError, ValueError):
        pass
    desc = {"Name": "inrreg outputs", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
            "GeneratedBy": [gen], "SourceDatasets": [source], "DatasetLinks": {"raw": bids_dir.as_uri()},
            "HowToAcknowledge": "Cite inrreg and the works listed in logs/CITATION.md"}
    atomic_write_text(output_dir / "dataset_description.json", json.dumps(desc, indent=2) + "\n")
    atomic_write_text(output_dir / ".bidsignore", "*.html\nlogs/\nfigures/\n*_xfm.*\n")


def copy_template(output_dir: Path, tpl) -> None:
    """Non-standard spaces: the template goes to ``tpl-<name>/`` and sidecars point at it."""
    from .interfaces import atomic_copy

    if tpl.standard:
        return
    dst = output_dir / f"tpl-{tpl.name}"
    atomic_copy(tpl.t1w, dst / f"tpl-{tpl.name}_T1w.nii.gz" if str(tpl.t1w).endswith(".gz")
                else dst / f"tpl-{tpl.name}_T1w.nii")
    name = "tpl-{0}_T1w.nii.gz".format(tpl.name) if str(tpl.t1w).endswith(".gz") else f"tpl-{tpl.name}_T1w.nii"
    tpl.reference_uri = f"bids::tpl-{tpl.name}/{name}"


def resolve_presets(opts, work_dir: Path):
    from inrreg_pipeline.interfaces import ANTS_PRESETS
    from inrreg_pipeline.interfaces.registration import resolve_inr_preset
    from inrreg_pipeline.workflows import default_multimodal_preset

    preset, mm_preset = opts.preset, opts.multimodal_preset
    if opts.sloppy:
        (work_dir / "presets").mkdir(parents=True, exist_ok=True)
        if preset is None and opts.method != "two-network":
            path = work_dir / "presets" / "sloppy.json"
            path.write_text(json.dumps(SLOPPY_PRESET, indent=2))
            preset = str(path)
        if mm_preset is None:
            quick = json.loads(json.dumps(SLOPPY_PRESET))
            quick["affine"]["similarity"] = "mi"
            quick["loss"] = {"similarity": "mi", "regulariser": "jacobian", "alpha": 0.1}
            path = work_dir / "presets" / "sloppy_multimodal.json"
            path.write_text(json.dumps(quick, indent=2))
            mm_preset = str(path)
    mm_preset = mm_preset or default_multimodal_preset()
    for name, (method, value) in {"--preset": (opts.method, preset),
                                  "--multimodal-preset": ("auto", mm_preset)}.items():
        try:
            resolve_inr_preset(method, value)
        except (ValueError, OSError) as err:
            raise AppError(f"{name}/--method: {err}", EXIT_USAGE) from None
    if opts.compare_ants and opts.compare_ants not in ANTS_PRESETS:
        raise AppError(f"--compare-ants: unknown baseline preset '{opts.compare_ants}' "
                       f"(choose from {', '.join(ANTS_PRESETS)})", EXIT_USAGE)
    return preset, mm_preset


# ------------------------------------------------------------------------------------------------
# levels
# ------------------------------------------------------------------------------------------------
def registration_mem_gb(opts, plugin) -> float:
    """Memory (GB) each registration node (INR, ANTs, co-registration) asks the plugin for.

    4 GB (or ``--mem`` when smaller). With ``--low-mem`` under MultiProc, a registration asks for the
    whole memory budget: MultiProc then starts nothing beside it, so at most one registration is in
    memory at a time (Linear runs one node at a time anyway; batch plugins give every node its own job).
    """
    mem_gb = min(4.0, opts.mem_gb) if opts.mem_gb else 4.0
    if opts.low_mem and plugin.plugin == "MultiProc":
        from nipype.utils.profiler import get_system_total_memory_gb

        # plugin_settings has put --mem there; else MultiProc's own default budget
        mem_gb = float(plugin.plugin_args.get("memory_gb") or 0.9 * get_system_total_memory_gb())
    return mem_gb


def run(opts) -> int:
    bids_dir, output_dir, work_dir = check_paths(opts)
    if opts.analysis_level == "group":
        return run_group(output_dir)
    return run_participant(opts, bids_dir, output_dir, work_dir)


def run_group(output_dir: Path) -> int:
    from .reports import write_group

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
    from inrreg_pipeline.workflows import CITATIONS, LiterateWorkflow

    from .reports import write_citation, write_participant_report
    from .workflow import Settings, init_participant_wf

    try:  # a bad --use-plugin file fails before any work
        plugin = plugin_settings(opts)
    except UsageError as err:
        raise AppError(str(err), err.code) from None
    labels_root = None
    for name, path in opts.derivatives:
        if not Path(path).is_dir():
            raise AppError(f"derivative '{name}' not found: '{path}'", EXIT_NOINPUT)
        if name == "labels":
            labels_root = Path(path).resolve()
        else:
            LOG.warning("derivative '%s' is not used by inrreg (only 'labels')", name)
    filters = load_filters(opts.bids_filter_file)
    _make_writable_dir(work_dir, "work dir")
    if opts.clean_workdir:
        import shutil

        shutil.rmtree(work_dir / "inrreg_wf", ignore_errors=True)
    layout = load_layout(bids_dir, opts)
    participants = collect_participants(layout, opts, filters, labels_root)
    for p in participants:
        for path, role in [(p.t1w, "T1w")] + [(c.path, c.suffix) for c in p.others] + \
                [(p.dseg, "labels dseg")] * (p.dseg is not None):
            check_image(path, f"sub-{p.subject} {role}")
    _make_writable_dir(output_dir, "output folder")
    tpl = resolve_template(opts, work_dir)
    preset, mm_preset = resolve_presets(opts, work_dir)
    if plugin.batch:
        # one job per node: threads per node as asked (match it to the jobs' -c), not this host's cores
        ensure_logname()
        omp = opts.omp_nthreads or 1
    else:
        nprocs = int(plugin.plugin_args.get("n_procs", opts.nprocs or os.cpu_count() or 1))
        omp = min(opts.omp_nthreads or min(nprocs, 8), nprocs)
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
        if _inside(path, bids_dir):
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
        status = _execute(top, opts, plugin, work_dir)
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


def _execute(top, opts, plugin, work_dir: Path) -> int:
    from nipype import config, logging as nlogging

    crash_dir = work_dir / "crash"
    # MultiProc polls its workers; batch plugins run squeue per pending job at each poll: Nipype's 2 s there
    poll = 2.0 if plugin.batch else 0.5
    # without -v, node errors are summarised in one line (details in the crash files), not logged twice
    level = "INFO" if opts.verbose > 1 else "WARNING" if opts.verbose else "CRITICAL"
    config.update_config({"logging": {"workflow_level": level, "interface_level": level, "utils_level": level,
                                      "log_to_file": False},
                          "execution": {"check_version": False, "crashdump_dir": str(crash_dir),
                                        "crashfile_format": "txt", "remove_unnecessary_outputs": False,
                                        "stop_on_first_crash": bool(opts.stop_on_first_crash),
                                        "poll_sleep_duration": poll,
                                        "resource_monitor": bool(opts.resource_monitor)}})
    nlogging.update_logging(config)
    logging.getLogger("nipype").propagate = False
    top.config["execution"].update({"crashdump_dir": str(crash_dir), "crashfile_format": "txt",
                                    "remove_unnecessary_outputs": False, "poll_sleep_duration": poll,
                                    "stop_on_first_crash": bool(opts.stop_on_first_crash)})
    if opts.write_graph:
        top.write_graph(graph2use="colored", format="svg", simple_form=True)
    before = set(crash_dir.glob("crash-*")) if crash_dir.exists() else set()
    # Ctrl-C (SIGINT to the process group): Nipype turns the KeyboardInterrupt inside a running node
    # into a node crash and goes on with the other nodes, so remember the signal, stop at the next
    # node start (the status callback runs outside Nipype's per-node exception handling) and report
    # an interruption (130), not a failure. Finished nodes stay cached in the work dir for a rerun.
    interrupted = _INTERRUPTED
    interrupted.clear()
    plugin_args = dict(plugin.plugin_args)
    if not plugin.graph:  # graph plugins submit everything at once and take no callback
        plugin_args["status_callback"] = StopWhenInterrupted(plugin.plugin_args.get("status_callback"))
    try:
        previous_handler = signal.signal(signal.SIGINT, _on_sigint)
    except ValueError:  # not the main thread
        previous_handler = None
    try:
        top.run(plugin=plugin.plugin, plugin_args=plugin_args)
    except Exception as err:  # nipype: RuntimeError "Workflow did not execute cleanly"; plugin errors
        if interrupted:
            raise KeyboardInterrupt from None
        crashes = sorted(set(crash_dir.glob("crash-*")) - before) if crash_dir.exists() else []
        detail = _crash_summary(crashes[0]) if crashes else str(err).splitlines()[0]
        print(f"inrreg-bids: error: processing failed ({len(crashes)} crashed node(s); {detail}); crash files in "
              f"'{crash_dir}'", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    if interrupted:  # a node swallowed the interrupt and the run still ended without an error
        raise KeyboardInterrupt
    return EXIT_OK


#: SIGINTs received during :func:`_execute` (module level: the status callback must pickle, since
#: Nipype pickles the plugin settings into the graphs it runs for MapNodes)
_INTERRUPTED: list[int] = []


def _on_sigint(signum, frame) -> None:
    _INTERRUPTED.append(signum)
    raise KeyboardInterrupt


class StopWhenInterrupted:
    """Nipype status callback: raises ``KeyboardInterrupt`` at the next node event once a SIGINT came
    (outside Nipype's per-node exception handling, so the run stops), then calls ``previous``."""

    def __init__(self, previous=None):
        self.previous = previous

    def __call__(self, node, status) -> None:
        if _INTERRUPTED:
            raise KeyboardInterrupt
        if self.previous is not None:
            self.previous(node, status)


def _crash_summary(path: Path) -> str:
    """Node name and last error line of a text crash file."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return path.name
    node = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("Node:")), path.name)
    err = next((ln for ln in reversed(lines) if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln)), lines[-1])
    return f"{node}: {err}"


if __name__ == "__main__":
    sys.exit(main())
