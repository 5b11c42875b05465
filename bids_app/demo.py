"""A small demo BIDS dataset made from nilearn's MNI152 template, and a full run on it.

``python -m inrreg_pipeline.bids_app.demo OUT`` (or ``inrreg-bids --demo OUT``) writes
``OUT/bids`` (participants made by known smooth deformations of the template, each with a T1w and a
T2w-like second contrast from a non-monotonic intensity remap, and GM/WM labels in
``OUT/bids/derivatives/labels``), runs the participant level with INR and ANTs (``--compare-ants``)
and the group level into ``OUT/inrreg``, and prints the reports' paths.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


def _save(data, affine, path: Path, dtype=np.float32) -> None:
    import nibabel as nib

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def make_demo_dataset(root: Path, resolution: float = 4.0, n_participants: int = 2, seed: int = 0,
                      t2w: bool = True, amplitude_mm: float = 4.0) -> Path:
    """Write the demo BIDS dataset under ``root`` (``root/derivatives/labels`` holds the labels)."""
    from inrreg_pipeline.core.space import SpatialImage
    from inrreg_pipeline.synthetic import deform, random_deformation

    from .run import nilearn_template

    root = Path(root)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        paths = nilearn_template(Path(tmp), resolution)
        import nibabel as nib

        t1 = nib.load(str(paths["T1w"]))
        dseg = nib.load(str(paths["dseg"]))
        fixed = SpatialImage(np.asarray(t1.get_fdata(), np.float32), t1.affine)
        labels = SpatialImage(np.asarray(dseg.get_fdata(), np.float32), dseg.affine)
    (root / "derivatives" / "labels").mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "inrreg demo: deformed MNI152 (nilearn)", "BIDSVersion": "1.9.0", "DatasetType": "raw",
         "License": "CC0", "Authors": ["inrreg"]}, indent=2))
    (root / "derivatives" / "labels" / "dataset_description.json").write_text(json.dumps(
        {"Name": "inrreg demo labels (GM/WM, deformed with each participant)", "BIDSVersion": "1.9.0",
         "DatasetType": "derivative", "GeneratedBy": [{"Name": "inrreg-demo"}]}, indent=2))
    (root / "derivatives" / "labels" / "dseg.tsv").write_text("index\tname\n1\tGM\n2\tWM\n")
    rows = ["participant_id"]
    for i in range(n_participants):
        sub = f"{i + 1:02d}"
        rows.append(f"sub-{sub}")
        psi = random_deformation(fixed, amplitude_mm=amplitude_mm, rotation_deg=5.0, translation_mm=4.0,
                                 seed=seed + 101 * (i + 1))
        moving = deform(fixed, psi).data
        rng = np.random.default_rng(seed + i)
        scale = float(np.percentile(moving[moving > 0], 99)) if (moving > 0).any() else 1.0
        anat = root / f"sub-{sub}" / "anat"
        _save(moving + rng.normal(0, 0.01 * scale, moving.shape) * (moving > 0), fixed.affine,
              anat / f"sub-{sub}_T1w.nii.gz")
        if t2w:
            x = np.clip(moving / scale, 0, None)
            t2 = np.where(x > 0.05, np.exp(-((x - 0.4) / 0.25) ** 2) + 0.3 * (x > 0.05), 0.0) * 1000.0
            _save(t2, fixed.affine, anat / f"sub-{sub}_T2w.nii.gz")
        lab = deform(labels, psi, order=0).data
        _save(np.rint(lab), fixed.affine,
              root / "derivatives" / "labels" / f"sub-{sub}" / "anat" / f"sub-{sub}_dseg.nii.gz", dtype=np.int16)
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="inrreg-bids --demo", description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="demo folder (bids/, inrreg/, work/ are made inside)")
    p.add_argument("--resolution", type=float, default=4.0, help="voxel size of the demo images (mm)")
    p.add_argument("--preset", default="fast", help="INR preset (default: fast)")
    p.add_argument("--ants-preset", default="ants-syn-cc")
    p.add_argument("--device", default="auto")
    p.add_argument("--nprocs", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--sloppy", action="store_true", help="tiny iteration counts (tests)")
    opts = p.parse_args(argv)
    from .run import main as app

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
    code = app(args)
    if code:
        return code
    code = app([str(bids), str(out / "inrreg"), "group", *common])
    if code == 0:
        print(f"open {out / 'inrreg' / 'sub-01.html'} and {out / 'inrreg' / 'group_registration.html'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
