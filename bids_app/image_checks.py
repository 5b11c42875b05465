"""Input images read in full before the graph is built, so a truncated or corrupted file (or a
template and its labels on different grids) is a one-line error (exit 65 or 66), not a node crash."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from inrreg_pipeline.io.images import quiet_nibabel

from .parser import EXIT_DATAERR, EXIT_NOINPUT, AppError


def check_image(path: Path, role: str) -> nib.Nifti1Image:
    """Load a NIfTI fully (a truncated or corrupted file fails here, not inside the graph): exit 66
    when missing, 65 when unreadable, not 3-D or not finite; ``role`` names it in the message."""
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
    if data.ndim > 3 and int(np.prod(data.shape[3:])) > 1:
        raise AppError(f"{role} '{path}' is a {data.ndim}-D image with {int(np.prod(data.shape[3:]))} volumes "
                       f"(shape {data.shape}); give one 3-D volume", EXIT_DATAERR)
    if not np.isfinite(data).all():
        raise AppError(f"{role} '{path}' contains NaN or infinite values", EXIT_DATAERR)
    return img


def check_same_grid(ref_img, ref_path, img, path, role) -> None:
    """Exit 65 unless ``img`` has ``ref_img``'s shape and affine (within 1e-3 mm)."""
    if img.shape[:3] != ref_img.shape[:3] or not np.allclose(img.affine, ref_img.affine, atol=1e-3):
        raise AppError(f"{role} '{path}' is not on the template's grid (shape {img.shape[:3]} vs "
                       f"{ref_img.shape[:3]} of '{ref_path}', or different affine)", EXIT_DATAERR)
