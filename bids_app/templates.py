"""The template every T1w is registered to: nilearn's MNI152 (ICBM 2009a) brain with a GM/WM
dseg made from its tissue maps (written once under the work folder), a TemplateFlow space named by
``--output-spaces`` (:func:`templateflow_files`), or ``--template`` with its optional
``--template-mask`` / ``--template-dseg``, checked before the graph is built.

TemplateFlow is used offline: the files must already be in ``$TEMPLATEFLOW_HOME`` (templateflow's
default cache folder when unset). They are found with ``TemplateFlowClient.ls`` (a PyBIDS query of
that folder) and never with ``get``, which downloads the files it finds empty; an empty file (the
stub of a template not downloaded) is refused like a missing one.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to, resample_to_output
from nilearn import datasets

from .image_checks import check_image, check_same_grid
from .parser import EXIT_NOINPUT, EXIT_USAGE, AppError
from .spaces import OutputSpace
from .workflow import Template

LOG = logging.getLogger("inrreg-bids")
#: The template space nilearn's MNI152 copy is in
NILEARN_TEMPLATE = "MNI152NLin2009aSym"


def nilearn_template(work_dir: Path, resolution: float) -> dict:
    """nilearn's MNI152 (ICBM 2009a) brain, brain mask and a GM(1)/WM(2) dseg from its tissue maps,
    written once under ``work_dir/templates``."""
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
    brain = mask_r.get_fdata() > 0.5
    dseg = tissue_dseg(gm_r.get_fdata(), wm_r.get_fdata(), brain)
    images = {"T1w": nib.Nifti1Image(np.asarray(t1.get_fdata(), np.float32), t1.affine),
              "mask": nib.Nifti1Image(brain.astype(np.uint8), t1.affine),
              "dseg": nib.Nifti1Image(dseg, t1.affine)}
    for key, img in images.items():
        _save_once(img, paths[key])
    return paths


def tissue_dseg(gm: np.ndarray, wm: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """GM(1)/WM(2) labels from tissue probability maps (0..1, same grid): the likelier of the two where
    it exceeds 0.3 inside ``brain``, 0 elsewhere. The labels Dice is computed on for a template
    that ships no plain ``dseg`` (nilearn's; TemplateFlow's ``label-GM``/``label-WM`` ``probseg``)."""
    return np.where(brain & (np.maximum(gm, wm) > 0.3), np.where(wm > gm, 2, 1), 0).astype(np.int16)


def _save_once(img: nib.Nifti1Image, path: Path) -> None:
    """Write ``img`` to ``path`` through a temporary name in the same folder (never half-written)."""
    tmp = path.parent / f".tmp_{os.getpid()}_{path.name}"
    nib.save(img, str(tmp))
    os.replace(tmp, path)


#: resolution indices tried, in order, when ``--output-spaces`` gives none (the app's 2 mm default first)
DEFAULT_RESOLUTIONS = (2, 1)


def _templateflow_client():
    """templateflow's client on ``$TEMPLATEFLOW_HOME`` (or its default cache folder), and that folder.

    Refused (one line) when the package is missing (exit 64) or the folder is missing or empty (66).
    A ``$TEMPLATEFLOW_HOME`` that is set is checked before templateflow is imported: its first
    import fills an empty home with its skeleton of empty files. Without ``$TEMPLATEFLOW_HOME``
    templateflow's default cache folder is used as templateflow leaves it (the skeleton's empty
    files are then refused as not downloaded).
    """
    def usable(folder: Path) -> Path:
        if not folder.is_dir() or not any(folder.iterdir()):
            raise AppError(f"TEMPLATEFLOW_HOME '{folder}' is missing or empty: put the TemplateFlow templates "
                           f"there (nothing is downloaded)", EXIT_NOINPUT)
        return folder

    env_home = os.environ.get("TEMPLATEFLOW_HOME")
    home = usable(Path(env_home).expanduser().absolute()) if env_home else None
    try:
        import templateflow
        from templateflow import TemplateFlowClient
    except ImportError:
        raise AppError("--output-spaces needs the templateflow package (pip install 'inrreg[templateflow]'); "
                       "without --output-spaces nilearn's embedded MNI152NLin2009aSym is used", EXIT_USAGE) from None
    home = home or usable(Path(templateflow.conf.TF_HOME))
    return TemplateFlowClient(root=home, autoupdate=False, use_datalad=False), home


def _present(paths) -> list[Path]:
    """The files among ``paths`` that have content (TemplateFlow's stubs of files not downloaded are empty)."""
    return [Path(p) for p in paths if Path(p).is_file() and Path(p).stat().st_size > 0]


def templateflow_files(space: OutputSpace) -> tuple[OutputSpace, dict[str, Optional[Path]]]:
    """Find ``space``'s files in ``$TEMPLATEFLOW_HOME`` without downloading or writing anything.

    Returns the space with its resolution index filled in (``res-2``, then ``res-1``, when none was
    given) and ``{"T1w", "brain", "mask", "dseg", "GM", "WM"}``: the ``_T1w`` image, its
    ``desc-brain_T1w`` (None if absent), the ``desc-brain_mask``, the plain ``_dseg`` and the
    ``label-GM``/``label-WM`` ``_probseg`` maps (each None if absent), all at that resolution (and cohort). Errors, one line each: an unknown template (64); a resolution or cohort
    the folder does not have, or files present only as empty stubs (66).
    """
    client, home = _templateflow_client()
    if not (home / f"tpl-{space.template}").is_dir():
        known = sorted(p.name[4:] for p in home.glob("tpl-*") if p.is_dir())
        raise AppError(f"--output-spaces: unknown TemplateFlow template '{space.template}' (in '{home}': "
                       f"{', '.join(known) or 'none'})", EXIT_USAGE)

    def find(resolution: int, suffix: str, desc: Optional[str], label: Optional[str] = None) -> list[Path]:
        try:
            return sorted(client.ls(space.template, resolution=resolution, cohort=space.cohort, suffix=suffix,
                                    desc=desc, atlas=None, label=label, extension=[".nii.gz", ".nii"]))
        except Exception as err:  # PyBIDS: a query the layout cannot answer
            raise AppError(f"--output-spaces {space.identifier}: TemplateFlow could not query '{home}' "
                           f"({str(err).splitlines()[0] if str(err) else type(err).__name__})", EXIT_NOINPUT) from None

    tried = (space.resolution,) if space.resolution is not None else DEFAULT_RESOLUTIONS
    listed: list[Path] = []
    for res in tried:
        listed = find(res, "T1w", None)
        t1w = _present(listed)
        if t1w:
            break
    else:
        what = f"{space.template}" + (f" cohort-{space.cohort}" if space.cohort is not None else "")
        if listed:
            raise AppError(f"--output-spaces {space.identifier}: {listed[0]} is not downloaded (an empty TemplateFlow "
                           f"stub); fetch it where there is network, e.g. python -c \"from templateflow import api; "
                           f"api.get('{space.template}', resolution={tried[-1]}, suffix='T1w', desc=None)\"",
                           EXIT_NOINPUT)
        raise AppError(f"--output-spaces {space.identifier}: no T1w of {what} at res-"
                       f"{' or res-'.join(str(r) for r in tried)} in '{home}'", EXIT_NOINPUT)
    space = space.with_resolution(res)
    files: dict[str, Optional[Path]] = {"T1w": t1w[0]}
    for key, suffix, desc, label in (("brain", "T1w", "brain", None), ("mask", "mask", "brain", None),
                                     ("dseg", "dseg", None, None), ("GM", "probseg", None, "GM"),
                                     ("WM", "probseg", None, "WM")):
        found = _present(find(res, suffix, desc, label))
        files[key] = found[0] if found else None
    return space, files


def templateflow_template(space: OutputSpace, files: dict[str, Optional[Path]], work_dir: Path) -> Template:
    """The :class:`~.workflow.Template` of a TemplateFlow space found by :func:`templateflow_files`.

    The registration target is a brain image, as nilearn's default is: the ``desc-brain_T1w``, or
    else the ``T1w`` with the brain mask applied (written once under ``work_dir/templates``), or
    the whole-head ``T1w`` when the template has no mask. Its name in derivatives is the
    template's, with ``[_cohort-N]_res-N`` after ``space-`` (TemplateFlow/fMRIPrep naming).
    """
    t1w, mask = files["T1w"], files["mask"]
    brain = files["brain"]
    check_image(t1w, "template")  # unreadable TemplateFlow files: exit 65 before they are used
    if mask is not None:
        check_image(mask, "template mask")
    if brain is None and mask is not None:
        folder = work_dir / "templates" / f"tpl-{space.template}{space.image_entities}"
        brain = folder / f"tpl-{space.template}{space.image_entities}_desc-brain_T1w.nii.gz"
        if not brain.exists():
            folder.mkdir(parents=True, exist_ok=True)
            head, m = nib.load(str(t1w)), nib.load(str(mask))
            data = np.asarray(head.get_fdata(), np.float32) * (np.asarray(m.get_fdata()) > 0.5)
            tmp = folder / f".tmp_{os.getpid()}_{brain.name}"
            nib.save(nib.Nifti1Image(data, head.affine), str(tmp))
            os.replace(tmp, brain)
    dseg = files["dseg"] or _tissue_dseg_file(space, files, work_dir)
    zooms = nib.load(str(t1w)).header.get_zooms()[:3]
    size = " x ".join(f"{z:g}" for z in zooms)
    resolution = f"res-{space.resolution}: {size} mm voxels (TemplateFlow's {space.template})"
    return Template(name=space.template, t1w=brain or t1w, mask=mask, dseg=dseg, contours=dseg,
                    standard=True, image_entities=space.image_entities, xfm_entities=space.xfm_entities,
                    metadata={"Resolution": resolution},
                    description=f"TemplateFlow {space.identifier} ({size} mm, {'brain' if brain else 'head'}; "
                                f"'{Path(t1w).name}'"
                                + ("; GM=1/WM=2 labels from its label-GM/-WM probseg maps"
                                   if dseg is not None and files["dseg"] is None else "") + ")")


def _tissue_dseg_file(space: OutputSpace, files: dict[str, Optional[Path]], work_dir: Path) -> Optional[Path]:
    """A GM(1)/WM(2) dseg (:func:`tissue_dseg`) from the template's ``label-GM``/``label-WM``
    ``probseg`` maps, inside its brain mask (or where either map is non-zero without one), written once
    under ``work_dir/templates``: what Dice is computed on, as for nilearn's template. Real TemplateFlow
    templates (``MNI152NLin2009cAsym``, ``MNI152NLin6Asym``...) ship these maps and no plain ``dseg``.
    None when either map is missing."""
    if files.get("GM") is None or files.get("WM") is None:
        return None
    folder = work_dir / "templates" / f"tpl-{space.template}{space.image_entities}"
    path = folder / f"tpl-{space.template}{space.image_entities}_desc-tissue_dseg.nii.gz"
    if path.exists():
        return path
    ref = check_image(files["T1w"], "template")
    maps = []
    for key in ("GM", "WM"):
        img = check_image(files[key], f"template {key} probseg")
        check_same_grid(ref, files["T1w"], img, files[key], f"template {key} probseg")
        maps.append(np.asarray(img.get_fdata(), np.float32))
    brain = (np.asarray(check_image(files["mask"], "template mask").get_fdata()) > 0.5 if files["mask"] is not None
             else (maps[0] > 0) | (maps[1] > 0))
    folder.mkdir(parents=True, exist_ok=True)
    _save_once(nib.Nifti1Image(tissue_dseg(maps[0], maps[1], brain), ref.affine), path)
    return path


def resolve_template(opts, work_dir: Path, templateflow: Optional[tuple[OutputSpace, dict]] = None) -> Template:
    """The run's :class:`~.workflow.Template` (nilearn's at ``--template-resolution``, 4 mm with
    ``--sloppy``; the TemplateFlow space ``templateflow`` = :func:`templateflow_files`' result, for
    ``--output-spaces``; else ``--template``), its images read in full; exit 64 or 65 otherwise."""
    res = opts.template_resolution or (4.0 if opts.sloppy else 2.0)
    if templateflow is not None:
        tpl = templateflow_template(*templateflow, work_dir)
        name = tpl.name
    elif opts.template is None:
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
