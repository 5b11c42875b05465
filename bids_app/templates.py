"""The template every T1w is registered to: nilearn's MNI152 (ICBM 2009a) brain with a GM/WM
dseg made from its tissue maps (written once under the work folder), or ``--template`` with its
optional ``--template-mask`` / ``--template-dseg``, checked before the graph is built."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to, resample_to_output
from nilearn import datasets

from .image_checks import check_image, check_same_grid
from .parser import EXIT_USAGE, AppError
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


def resolve_template(opts, work_dir: Path) -> Template:
    """The run's :class:`~.workflow.Template` (nilearn's at ``--template-resolution``, 4 mm with
    ``--sloppy``, else ``--template``), its images read in full; exit 64 or 65 otherwise."""
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
