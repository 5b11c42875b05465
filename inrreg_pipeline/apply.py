"""Resample an image or label map through ANTs/ITK transform files (``inrreg apply``).

The transform list follows ``antsApplyTransforms``: the output of ``inrreg register`` is applied as
``-t P1Warp.nii.gz -t P0GenericAffine.mat`` (or ``-t PComposite.h5``). For *points* of the
reference grid that list acts first to last: ``p = A(x + u(x))``, the warp first, then the affine
(ANTs' "last listed is applied first" describes the moving *image*). ``[file,1]`` inverts a
linear transform. The files are read as ITK reads them (:func:`inrreg_pipeline.io.itk.transform_chain_to_points`:
ITK's own ``TransformToDisplacementField`` over the reference grid, multi-threaded, the numbers
``antsApplyTransforms`` uses); the same list as a RAS object, for mapping points, is
:func:`inrreg_pipeline.io.itk.read_transform_chain` (:mod:`inrreg_pipeline.core.transform`), and the
two agree to 1e-9 mm (``tests/test_transform.py``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .core.space import resolve_device, sample_array, sample_labels
from .io.images import (InputError, StagedOutputs, check_nifti_output, check_outputs_not_inputs, load_image,
                        save_image)
from .io.itk import parse_transform_spec, transform_chain_to_points

INTERPOLATIONS = ("linear", "nearest", "label")


def parse_transform(spec: str) -> tuple[str, bool]:
    """``file`` or ANTs' ``[file,1]`` (inverse) / ``[file,0]`` -> ``(path, invert)``
    (:func:`inrreg_pipeline.io.itk.parse_transform_spec`); :class:`InputError` if the file is missing."""
    path, invert = parse_transform_spec(spec)
    if not Path(path).is_file():
        raise InputError(f"transform '{path}' does not exist")
    return path, invert


def apply_transforms(input_image: str, reference: str, transforms: list[str], output: str,
                     interpolation: str = "linear", device: str = "cpu") -> Path:
    """Resample ``input_image`` onto ``reference``'s grid through ``transforms``; writes ``output``.

    ``interpolation``: ``linear`` for intensities; ``nearest`` or ``label`` (label-aware, like
    ANTs' GenericLabel) for label maps, which keep their integer values. A missing output folder
    is created (and removed again if the run fails).
    """
    if interpolation not in INTERPOLATIONS:
        raise InputError(f"unknown interpolation '{interpolation}' (choose from {', '.join(INTERPOLATIONS)})")
    if not transforms:
        raise InputError("at least one transform (-t) is needed")
    check_nifti_output(output)
    chain = [parse_transform(t) for t in transforms]
    check_outputs_not_inputs([output], {"input image": input_image, "reference image": reference,
                                        **{f"transform {i + 1}": path for i, (path, _) in enumerate(chain)}})
    with StagedOutputs(output) as stage:  # the output folder is made (or refused) before any work
        ref = load_image(reference, "reference image")
        img = load_image(input_image, "input image")
        if img.ndim != ref.ndim:
            raise InputError(f"input image is {img.ndim}-D but reference image is {ref.ndim}-D")
        try:
            dev = resolve_device(device)
            points = transform_chain_to_points(chain, ref.shape, ref.affine)
        except ValueError as err:
            raise InputError(str(err).splitlines()[0]) from None
        except RuntimeError as err:  # SimpleITK: the useful part is the last line of ITK's message
            lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
            detail = lines[-1] if lines else type(err).__name__
            raise InputError(f"cannot read the transforms {', '.join(p for p, _ in chain)}: {detail}") from None
        if interpolation == "linear":
            out = sample_array(img.data, img.affine, points, dev)
            dtype = np.float32
        else:
            labels = np.rint(img.data).astype(np.int32)
            if interpolation == "nearest":
                out = np.rint(sample_array(labels.astype(np.float32), img.affine, points, dev, mode="nearest"))
            else:
                out = sample_labels(labels, img.affine, points, dev)
            dtype = np.int32
        save_image(out, ref.affine, stage.path(""), dtype=dtype)
    return Path(output)
