"""The demo BIDS dataset: participants made from nilearn's MNI152 template by known smooth
deformations, each with a T1w and a T2w-like second contrast (a non-monotonic intensity remap), and
their GM/WM labels in ``derivatives/labels`` (what ``inrreg-bids --demo`` and the tests run on)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from inrreg_pipeline.core.space import SpatialImage
from inrreg_pipeline.synthetic import deform, random_deformation

from .templates import nilearn_template


def _save(data, affine, path: Path, dtype=np.float32) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def make_demo_dataset(root: Path, resolution: float = 4.0, n_participants: int = 2, seed: int = 0,
                      t2w: bool = True, amplitude_mm: float = 4.0) -> Path:
    """Write the demo BIDS dataset under ``root`` (``root/derivatives/labels`` holds the labels).

    ``resolution``: voxel size (mm) of the template and the participants; ``amplitude_mm``: size of
    the known smooth deformations. Returns ``root``.
    """
    root = Path(root)
    with tempfile.TemporaryDirectory() as tmp:
        paths = nilearn_template(Path(tmp), resolution)
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
