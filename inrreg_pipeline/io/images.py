"""NIfTI images in and out, with the checks a user needs, and outputs that appear only when complete.

Every problem with what the user gave raises :class:`InputError` with one line that names the
file; the command line turns it into exit code 2.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from ..core.geometry import SpatialImage, affine_problem
from .itk import itk_geometry_to_affine
from .nifti import save_nifti


class InputError(ValueError):
    """Bad input from the user (missing file, wrong dimension, NaNs, ...): one-line message, exit 2."""


#: Largest sine of the angle between a 2-D image's plane and the axial (x-y) world plane: 2-D images
#: are registered in x-y world coordinates, so a slice in another plane would be projected onto it.
MAX_SLICE_TILT_SINE = 1e-3


def _slice_affine(affine: np.ndarray, in_plane: list[int], role: str, path: Path, shape: tuple[int, ...]
                  ) -> np.ndarray:
    """The ``3 x 3`` affine of a 2-D image (or single-slice volume) whose array axes ``in_plane``
    remain: their columns and the origin in world x, y. Refuses (:class:`InputError`, naming the
    plane) a slice that is not in the axial (x-y) world plane: sagittal and coronal slices and
    tilted ones cannot be mapped to x, y without distorting them."""
    a = np.asarray(affine, dtype=np.float64)
    columns = a[:3, in_plane]
    normal = np.cross(columns[:, 0], columns[:, 1])
    length = np.linalg.norm(normal)
    if np.isfinite(length) and length > 0:
        tilt = np.hypot(normal[0], normal[1]) / length
        if tilt > MAX_SLICE_TILT_SINE:
            axis = int(np.argmax(np.abs(normal)))
            tilt_deg = np.degrees(np.arcsin(min(tilt, 1.0)))
            plane = ("sagittal", "coronal", f"oblique ({tilt_deg:.1f} degrees from axial)")[axis]
            raise InputError(f"{role} '{path}' is a single {plane} slice (shape {shape}); 2-D images are registered "
                             "in the axial (x-y) world plane only: give a 3-D volume or an axial slice")
    return a[np.ix_([0, 1, 3], in_plane + [3])]


def expand_affine(affine: np.ndarray) -> np.ndarray:
    """A NIfTI 4x4 affine for a ``(d+1, d+1)`` one (2-D: unit z spacing at z = 0)."""
    if affine.shape == (4, 4):
        return affine
    full = np.eye(4)
    full[np.ix_([0, 1, 3], [0, 1, 3])] = affine
    return full


@contextlib.contextmanager
def quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's header log (e.g. "data code 1 not supported; not attempting fix", printed to
    stderr before any message of ours: Python's last-resort handler prints it when the logger has no
    handler, so removing handlers, as nibabel's own ``LoggingOutputSuppressor`` does, is not enough)."""
    log = nib.imageglobals.logger
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        log.setLevel(level)


#: NIfTI datatype codes nibabel cannot read, named in the message
_UNREADABLE_DATATYPES = {1: "DT_BINARY, 1 bit per voxel", 128: "DT_RGB24", 2304: "DT_RGBA32"}


def _read_nifti(path: Path, role: str) -> tuple[np.ndarray, np.ndarray]:
    """Voxels as finite float32 (scaled by ``scl_slope``/``scl_inter``) and the 4x4 affine of a
    NIfTI file; :class:`InputError` with one line naming the real problem otherwise (nibabel's own
    log lines are suppressed: the message says it all)."""
    try:
        with quiet_nibabel():
            img = nib.load(str(path))
            raw = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for non-images and truncated files
        code = re.search(r"data code (\d+) not supported", str(err))
        if code:
            name = _UNREADABLE_DATATYPES.get(int(code[1]))
            raise InputError(f"{role} '{path}' has NIfTI datatype {code[1]}{f' ({name})' if name else ''}, which "
                             "cannot be read; save it as an integer or float type (e.g. uint8)") from None
        raise InputError(f"{role} '{path}' is not a readable NIfTI image ({type(err).__name__})") from None
    if getattr(img, "affine", None) is None:
        raise InputError(f"{role} '{path}' has no spatial affine")
    if raw.dtype.fields is not None or not np.issubdtype(raw.dtype, np.number) or np.iscomplexobj(raw):
        raise InputError(f"{role} '{path}' has {raw.dtype} voxels; a scalar (integer or float) image is needed")
    with np.errstate(over="ignore", invalid="ignore"):
        data = np.asarray(raw, dtype=np.float32)
    if not np.isfinite(data).all():
        slope, inter = (float(getattr(img.dataobj, name, default)) for name, default in (("slope", 1.0),
                                                                                          ("inter", 0.0)))
        if (slope, inter) != (1.0, 0.0):
            stored = np.asanyarray(img.dataobj.get_unscaled())
            if np.isfinite(stored).all():
                largest = float(np.abs(stored.astype(np.float64)).max()) * abs(slope) + abs(inter)
                raise InputError(f"{role} '{path}' has scl_slope {slope:g} and scl_inter {inter:g}, which scale its "
                                 f"stored values up to {largest:.3g}, beyond the float32 range (3.4e38)")
        elif np.isfinite(raw).all():
            raise InputError(f"{role} '{path}' has values beyond the float32 range (3.4e38)")
        raise InputError(f"{role} '{path}' contains NaN or infinite voxels")
    return data, np.asarray(img.affine, dtype=np.float64)


#: Image formats read through SimpleITK (as ANTs reads them); everything else through nibabel.
ITK_EXTENSIONS = (".mha", ".mhd", ".nrrd", ".nhdr")


def is_itk_image(path: str | os.PathLike) -> bool:
    """Whether ``path`` names an image read through SimpleITK (:data:`ITK_EXTENSIONS`)."""
    return str(path).lower().endswith(ITK_EXTENSIONS)


def _read_itk(path: Path, role: str) -> tuple[np.ndarray, np.ndarray]:
    """Voxels (finite float32, array axes in ITK index order i, j[, k]) and the 4x4 voxel -> RAS
    affine of an image SimpleITK reads (MetaImage, NRRD): ITK's LPS origin and direction become
    RAS as in :func:`~inrreg_pipeline.io.itk.itk_geometry_to_affine` (2-D: both in-plane axes
    negated, as ITK's 2-D images are read by ANTs)."""
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK warnings would print before our one line
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        raise InputError(f"{role} '{path}' is not a readable image ({lines[-1] if lines else 'ITK cannot read it'})"
                         ) from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{role} '{path}' has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                         "a scalar image is needed")
    d = img.GetDimension()
    if d not in (2, 3, 4):
        raise InputError(f"{role} '{path}' is {d}-D; a 2-D or 3-D image is needed")
    raw = sitk.GetArrayViewFromImage(img).T  # ITK's array is (k, j, i): transposed, axes are i, j, k
    if np.iscomplexobj(raw):
        raise InputError(f"{role} '{path}' has complex voxels; a scalar (integer or float) image is needed")
    with np.errstate(over="ignore", invalid="ignore"):
        data = np.array(raw, dtype=np.float32)
    if not np.isfinite(data).all():
        raise InputError(f"{role} '{path}' contains NaN or infinite voxels" if not np.isfinite(raw).all() else
                         f"{role} '{path}' has values beyond the float32 range (3.4e38)")
    s = min(d, 3)  # a 4-D image's geometry: its first three axes (a single volume is all it can be)
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(d, d)[:s, :s]
    affine = itk_geometry_to_affine(img.GetOrigin()[:s], img.GetSpacing()[:s], direction.ravel())
    return data, expand_affine(affine)


def load_image(path: str | os.PathLike, role: str = "image", ndim: int | None = None) -> SpatialImage:
    """Load a 2-D or 3-D image as float32 in physical space: NIfTI through nibabel, and the other
    formats ITK reads (``.mha``, ``.mhd``, ``.nrrd``, ``.nhdr``: :data:`ITK_EXTENSIONS`) through
    SimpleITK, as ANTs reads them (outputs are NIfTI either way).

    A 4-D image with one volume is 3-D (``(X, Y, Z, 1)``), and a volume one voxel thick along any
    axis is a 2-D image of the other two (``(X, Y, 1)``, ``(X, 1, Z)``, ``(1, Y, Z)``), which must
    lie in the axial (x-y) world plane (see :func:`_slice_affine`). Voxels of any size are accepted
    (the affine test is relative: :func:`~inrreg_pipeline.core.space.affine_problem`).
    ``role`` names the input in messages ("fixed image", ...); ``ndim`` demands a dimension.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{role} '{path}' does not exist")
    if path.is_dir():
        raise InputError(f"{role} '{path}' is a directory, not an image")
    data, affine = _read_itk(path, role) if is_itk_image(path) else _read_nifti(path, role)
    original = tuple(data.shape)
    shape = list(original)
    while len(shape) > 3 and shape[-1] == 1:
        shape.pop()
    if len(shape) > 3:
        raise InputError(f"{role} '{path}' is {len(shape)}-D with shape {tuple(data.shape)}; "
                         "a single 2-D or 3-D image is needed")
    singletons = [axis for axis, n in enumerate(shape) if n == 1]
    if len(shape) < 2 or len(shape) - len(singletons) < 2:
        raise InputError(f"{role} '{path}' has shape {tuple(data.shape)}; a 2-D or 3-D image is needed")
    # a 3-D image one voxel thick along any axis (not only the last) is a 2-D image: squeeze that axis
    in_plane = [axis for axis in range(len(shape)) if axis not in singletons]
    data = data.reshape([shape[axis] for axis in in_plane])
    if ndim is not None and data.ndim != ndim:
        raise InputError(f"{role} '{path}' is {data.ndim}-D but a {ndim}-D image is needed")
    affine = affine if data.ndim == 3 else _slice_affine(affine, in_plane, role, path, original)
    problem = affine_problem(affine)
    if problem:
        raise InputError(f"{role} '{path}' has a singular or non-finite affine ({problem})")
    return SpatialImage(data, affine)


def load_mask(path: str | os.PathLike, reference: SpatialImage, role: str = "mask") -> np.ndarray:
    """A binary mask on ``reference``'s grid (same shape and affine within 1e-3 mm); never empty."""
    mask = load_image(path, role, ndim=reference.ndim)
    if mask.shape != reference.shape or not np.allclose(mask.affine, reference.affine, atol=1e-3):
        raise InputError(f"{role} '{path}' is not on the grid of its image (shape {mask.shape} vs {reference.shape})")
    binary = mask.data > 0
    if not binary.any():
        raise InputError(f"{role} '{path}' is empty (no voxel above 0)")
    return binary


def load_pair(fixed: str | os.PathLike, moving: str | os.PathLike, fixed_mask: str | os.PathLike | None = None,
              moving_mask: str | os.PathLike | None = None
              ) -> tuple[SpatialImage, SpatialImage, np.ndarray | None, np.ndarray | None]:
    """The inputs of a registration, checked: both images non-constant and of one dimension, masks
    on their image's grid and non-empty. Returns ``(fixed, moving, fixed_mask, moving_mask)``."""
    fixed_img = load_image(fixed, "fixed image")
    moving_img = load_image(moving, "moving image")
    for role, path, img in (("fixed image", fixed, fixed_img), ("moving image", moving, moving_img)):
        if img.data.min() == img.data.max():
            raise InputError(f"{role} '{path}' is constant (every voxel is {img.data.flat[0]:g}): nothing to register")
    if fixed_img.ndim != moving_img.ndim:
        raise InputError(f"fixed image is {fixed_img.ndim}-D but moving image is {moving_img.ndim}-D")
    f_mask = load_mask(fixed_mask, fixed_img, "fixed mask") if fixed_mask else None
    m_mask = load_mask(moving_mask, moving_img, "moving mask") if moving_mask else None
    return fixed_img, moving_img, f_mask, m_mask


def check_nifti_output(path: str | os.PathLike) -> None:
    """An output image path must name a single-file NIfTI (``.nii`` or ``.nii.gz``), not a folder."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"output '{path}' is a directory; give a file name ending in .nii.gz")
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise InputError(f"output '{path}' must end in .nii or .nii.gz")


def check_outputs_not_inputs(outputs: Iterable[str | os.PathLike],
                             inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse, before any work, an output path that is one of the inputs: the same path once
    symlinks are resolved, or the same file under another name (a hard link).

    ``inputs`` maps a role ("moving image", ...) to its path (``None``: not given).
    """
    given = [(role, Path(path)) for role, path in inputs.items() if path]
    for out in outputs:
        out = Path(out)
        target = out.resolve()
        for role, path in given:
            real = path.resolve()
            same = target == real or (target.exists() and real.exists() and os.path.samefile(target, real))
            if same:
                raise InputError(f"output '{out}' is the {role} '{path}', which would be overwritten; "
                                 "choose another output name")


def save_image(data: np.ndarray, affine: np.ndarray, path: str | os.PathLike, dtype=np.float32,
               intent: str | None = None) -> None:
    """Write a NIfTI with qform and sform both set to the (expanded) affine (:func:`save_nifti`)."""
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), expand_affine(np.asarray(affine, dtype=np.float64)))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    if intent:
        img.header.set_intent(intent)
    save_nifti(img, path)


#: ``.inrreg-[<kind>-]<pid>@<host>-<random>``: the staging folders of :class:`StagedOutputs` (and of
#: the ANTs baselines) and the temporary files of the BIDS App's atomic copies (kind ``sink``),
#: named by their process so that a later run can tell a dead run's leftovers (SIGKILL, a node that
#: went down) from a live run's.
_STAGING = re.compile(r"^\.inrreg-(?:[a-z]+-)?(?P<pid>\d+)@(?P<host>[A-Za-z0-9._]+)-")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "localhost"


def staging_prefix(kind: str = "") -> str:
    """Name prefix of a staging folder of this process (``kind``: a lowercase tag, e.g. ``ants``)."""
    return f".inrreg-{kind + '-' if kind else ''}{os.getpid()}@{_host()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_staging(directory: Path) -> list[Path]:
    """Remove the staging folders and temporary files (names of :func:`staging_prefix`) in
    ``directory`` left by processes of this host that are gone (killed with SIGKILL, or a machine
    that rebooted); those of live processes and of other hosts (a shared file system), symbolic
    links and every other name are left alone. Returns the paths removed."""
    removed = []
    host = _host()
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _STAGING.match(entry.name)
        if not match or match["host"] != host or _alive(int(match["pid"])) or entry.is_symlink():
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_file():
            try:
                entry.unlink()
            except OSError:
                continue
        else:
            continue
        removed.append(entry)
    return removed


class StagedOutputs:
    """Write outputs under a hidden temporary folder beside their destination, move them into
    place only when everything succeeded, and remove them all otherwise.

    The destination folder is created when missing (as ``mkdir -p`` would; a parent that is a file
    or cannot be written is an :class:`InputError`), and the folders created are removed again when
    the run fails, so a failure leaves nothing behind.

    >>> with StagedOutputs(prefix) as stage:            # doctest: +SKIP
    ...     save_image(data, affine, stage.path("Warped.nii.gz"))
    """

    def __init__(self, prefix: str | os.PathLike):
        prefix = str(prefix)
        self.directory = Path(os.path.dirname(prefix) or ".")
        self.stem = os.path.basename(prefix)
        self.outputs: dict[str, Path] = {}
        self._tmp: Path | None = None
        self._created: list[Path] = []

    def __enter__(self) -> "StagedOutputs":
        self._make_directory()
        remove_stale_staging(self.directory)
        try:
            self._tmp = Path(tempfile.mkdtemp(prefix=staging_prefix(), dir=self.directory))
        except OSError as err:
            self._remove_created()
            raise InputError(f"cannot write to output directory '{self.directory}' ({err.strerror})") from None
        return self

    def _make_directory(self) -> None:
        """Create the missing folders of :attr:`directory`, outermost first, remembering them."""
        missing, folder = [], self.directory
        while not folder.exists() and not folder.is_symlink() and folder != folder.parent:
            missing.append(folder)
            folder = folder.parent
        if not folder.is_dir():
            if folder == self.directory:
                raise InputError(f"output directory '{self.directory}' is not a directory")
            raise InputError(f"cannot create output directory '{self.directory}': '{folder}' is not a directory")
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                if not folder.is_dir():
                    self._remove_created()
                    raise InputError(f"cannot create output directory '{self.directory}': '{folder}' is not a "
                                     "directory") from None
                continue  # made meanwhile by another run: not ours to remove
            except OSError as err:
                self._remove_created()
                raise InputError(f"cannot create output directory '{self.directory}' ({err.strerror})") from None
            self._created.append(folder)

    def _remove_created(self) -> None:
        """Remove the folders this run created, innermost first, where they are (still) empty."""
        for folder in reversed(self._created):
            try:
                folder.rmdir()
            except OSError:
                break
        self._created = []

    def path(self, suffix: str) -> Path:
        """Temporary path of the output ``<prefix><suffix>``."""
        assert self._tmp is not None
        final = self.directory / f"{self.stem}{suffix}"
        self.outputs[suffix] = final
        return self._tmp / final.name

    def final(self, suffix: str) -> Path:
        return self.directory / f"{self.stem}{suffix}"

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._tmp is not None
        done = False
        try:
            if exc_type is None:
                for final in self.outputs.values():
                    os.replace(self._tmp / final.name, final)
                done = True
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
            if not done:
                self._remove_created()
