"""nitransforms (NiPreps) reads inrreg's transform files and maps points as ANTs does.

The files are the ones ``inrreg register`` writes (``register.write_outputs`` calls these same
writers): ``P0GenericAffine.mat``, ``P1Warp.nii.gz``, ``P1InverseWarp.nii.gz``, ``PComposite.h5`` and
``PInverseComposite.h5``, made from a known affine ``A`` and a smooth displacement ``u`` (up to 2 mm)
on an oblique, anisotropic grid (1.5 x 2 x 3 mm voxels, rotated about an oblique axis).

**Direction compared.** ANTs maps *points* with the transforms that resample the moving *image*
onto the fixed grid, in the same list order: ``-t P1Warp.nii.gz -t P0GenericAffine.mat`` (or
``-t PComposite.h5``) takes a point ``x`` of the fixed space to the moving-space point
``A(x + u(x))`` (antsApplyTransformsToPoints, in LPS). So what is compared here is the
fixed -> moving point map, the pull-back of docs/conventions.md section 2: nitransforms'
``TransformChain.map`` (RAS), inrreg's ``core.transform.TransformChain.map`` (RAS) and
``ants.apply_transforms_to_points`` (LPS, converted with ``diag(-1, -1, 1)``). The inverse files take
moving points to fixed points, and are compared the same way.

**Known nitransforms limitation** (25.1): between the voxel centres of a displacement field,
``DenseFieldTransform.map`` interpolates with cubic B-splines over the *positions* ``x + u(x)``
(``scipy.ndimage.map_coordinates(order=3, mode="constant", cval=nan)``, nipy/nitransforms#168);
ITK and hence ANTs interpolate ``u`` multilinearly. At the field's voxel centres the two agree to
the float32 precision of the file (about 1e-5 mm); between them they differ by the field's
curvature (here under 0.1 mm two voxels or more from the field's edge, and up to about 0.6 mm
within a voxel of it, where the spline meets the constant boundary). Image resampling on the
fixed grid evaluates the field at its voxel centres only, so nitransforms resamples as ANTs does.
"""
from __future__ import annotations

import numpy as np
import pytest

nt_manip = pytest.importorskip("nitransforms.manip")
nt_linear = pytest.importorskip("nitransforms.linear")
nt_nonlinear = pytest.importorskip("nitransforms.nonlinear")
nt_itk = pytest.importorskip("nitransforms.io.itk")
nt_resampling = pytest.importorskip("nitransforms.resampling")

import nibabel as nib  # noqa: E402

from inrreg_pipeline.core.transform import DisplacementField, registration_transform  # noqa: E402
from inrreg_pipeline.io.itk import read_transform_chain  # noqa: E402
from inrreg_pipeline.register import write_transforms  # noqa: E402

#: agreement a user would accept for point maps (mm); the files store the fields in float32
TOL_MM = 1e-3
SHAPE = (14, 12, 10)
LPS = np.diag([-1.0, -1.0, 1.0])
#: nitransforms warns when a chain without a reference grid maps points, which is what is wanted here
pytestmark = pytest.mark.filterwarnings("ignore:Reference space not set:UserWarning")


def _rotation(axis, angle: float) -> np.ndarray:
    k = np.asarray(axis, float) / np.linalg.norm(axis)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def _grid_points(shape, affine) -> np.ndarray:
    ijk = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    return ijk @ affine[:3, :3].T + affine[:3, 3]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """inrreg's five transform files of a known ``A``, ``u`` (and ``u``'s inverse ``v``) on an oblique grid."""
    folder = tmp_path_factory.mktemp("nitransforms")
    grid = np.eye(4)
    grid[:3, :3] = _rotation([1.0, -0.7, 1.7], 0.6) @ np.diag([1.5, 2.0, 3.0])
    grid[:3, 3] = [-12.0, 8.0, -5.0]
    x = _grid_points(SHAPE, grid)
    u = np.stack([2.0 * np.sin(x[..., 1] / 9.0), 1.5 * np.cos(x[..., 2] / 7.0 + 0.3),
                  1.0 * np.sin((x[..., 0] + x[..., 1]) / 11.0)], axis=-1)
    affine = np.eye(4)
    affine[:3, :3] = _rotation([0.2, 1.0, -0.4], 0.12) @ np.diag([1.05, 0.95, 1.1])
    affine[:3, 3] = [3.0, -2.0, 4.5]
    v = DisplacementField(u, grid).inverse().field
    p = folder / "p_"
    files = {k: f"{p}{s}" for k, s in (("affine", "0GenericAffine.mat"), ("warp", "1Warp.nii.gz"),
                                       ("inverse_warp", "1InverseWarp.nii.gz"), ("composite", "Composite.h5"),
                                       ("inverse_composite", "InverseComposite.h5"))}
    write_transforms(files.__getitem__, affine, u, v, grid)  # what register.write_outputs writes
    chain = registration_transform(affine, u, grid, inverse_displacement=v)
    return {"files": files, "grid": grid, "affine": affine, "u": u, "chain": chain, "folder": folder}


def _nitransforms_pair(files, inverse: bool = False):
    """The two-file list as a nitransforms chain, in antsApplyTransforms (-t) order."""
    affine = nt_linear.load(files["affine"], fmt="itk")
    if inverse:
        warp = nt_nonlinear.DenseFieldTransform(nt_itk.ITKDisplacementsField.from_filename(files["inverse_warp"]))
        return nt_manip.TransformChain([~affine, warp])
    warp = nt_nonlinear.DenseFieldTransform(nt_itk.ITKDisplacementsField.from_filename(files["warp"]))
    return nt_manip.TransformChain([warp, affine])


def _ants_points(points_ras: np.ndarray, transforms: list[str]) -> np.ndarray:
    ants = pytest.importorskip("ants")
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(points_ras @ LPS, columns=["x", "y", "z"])
    out = ants.apply_transforms_to_points(3, df, transforms, whichtoinvert=[False] * len(transforms))
    return out[["x", "y", "z"]].to_numpy() @ LPS


def _off_grid(grid, n: int, margin: float, seed: int = 0) -> np.ndarray:
    """``n`` random points at least ``margin`` voxels inside the outermost voxel centres (RAS mm)."""
    idx = np.random.default_rng(seed).uniform(margin, np.array(SHAPE) - 1 - margin, size=(n, 3))
    return idx @ grid[:3, :3].T + grid[:3, 3]


def test_the_files_are_read_as_written(outputs):
    """The composite is the chain [field, affine] in -t order, with inrreg's A and u (RAS) inside."""
    chain = nt_manip.load(outputs["files"]["composite"], fmt="itk")
    assert len(chain) == 2
    field, affine = chain.transforms
    assert isinstance(field, nt_nonlinear.DenseFieldTransform)
    np.testing.assert_allclose(affine.matrix, outputs["affine"], atol=1e-12)
    np.testing.assert_allclose(field.reference.affine, outputs["grid"], atol=1e-5)
    np.testing.assert_allclose(field._deltas, outputs["u"], atol=1e-5)  # float32 in the file
    pair = _nitransforms_pair(outputs["files"])
    np.testing.assert_allclose(pair.transforms[1].matrix, outputs["affine"], atol=1e-12)


@pytest.mark.parametrize("which", ["composite", "pair"])
def test_voxel_centres_map_as_ants_and_inrreg(outputs, which):
    """Fixed-grid voxel centres -> moving points: nitransforms == inrreg's chain == ANTs, within 1e-3 mm."""
    files = outputs["files"]
    points = _grid_points(SHAPE, outputs["grid"]).reshape(-1, 3)
    nitr = (nt_manip.load(files["composite"], fmt="itk") if which == "composite"
            else _nitransforms_pair(files)).map(points)
    ours = outputs["chain"].map(points)
    assert np.abs(nitr - ours).max() < TOL_MM
    assert np.abs(nitr - points).max() > 2.0  # a real, non-trivial map
    listed = [files["composite"]] if which == "composite" else [files["warp"], files["affine"]]
    assert np.abs(nitr - _ants_points(points, listed)).max() < TOL_MM
    # the files read back by inrreg (ITK's reader) give the same map
    specs = [(p, False) for p in listed]
    assert np.abs(read_transform_chain(specs).map(points) - ours).max() < TOL_MM


@pytest.mark.parametrize("which", ["composite", "pair"])
def test_inverse_files_map_moving_points_back(outputs, which):
    """Moving points ``A z`` (z a fixed voxel centre) -> fixed points ``z + v(z)``, as ANTs maps them."""
    files = outputs["files"]
    z = _grid_points(SHAPE, outputs["grid"]).reshape(-1, 3)
    y = z @ outputs["affine"][:3, :3].T + outputs["affine"][:3, 3]
    nitr = (nt_manip.load(files["inverse_composite"], fmt="itk") if which == "composite"
            else _nitransforms_pair(files, inverse=True)).map(y)
    assert np.abs(nitr - outputs["chain"].inverse().map(y)).max() < TOL_MM
    ants_files = [files["inverse_composite"]]  # ANTs' [mat,1] is the same affine inverse
    assert np.abs(nitr - _ants_points(y, ants_files)).max() < TOL_MM
    # inverse then forward comes back to the start (to the inverse field's accuracy, which is
    # poor at the grid's edge, where z + v(z) leaves the field: checked two voxels inside)
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), -1).reshape(-1, 3)
    deep = np.all((ijk >= 2) & (ijk <= np.array(SHAPE) - 3), axis=1)
    assert np.abs(outputs["chain"].map(nitr[deep]) - y[deep]).max() < 0.05


def test_off_grid_points_differ_by_the_interpolation_rule_only(outputs):
    """Between voxel centres nitransforms' cubic spline and ITK's multilinear rule differ by the
    field's curvature: under 0.1 mm two or more voxels inside the field's edge (documented above and
    in docs/conventions.md). The lower bound records the limitation: if it fails, nitransforms now
    interpolates as ITK does, and the documentation should say so."""
    files = outputs["files"]
    points = _off_grid(outputs["grid"], 400, margin=2.0)
    ours = outputs["chain"].map(points)
    assert np.abs(_ants_points(points, [files["composite"]]) - ours).max() < TOL_MM  # ANTs == inrreg off grid
    err = np.abs(nt_manip.load(files["composite"], fmt="itk").map(points) - ours).max()
    assert err < 0.1
    assert err > TOL_MM, "nitransforms now maps off-grid points as ITK does: update docs/conventions.md"


def test_nitransforms_resamples_as_ants(outputs):
    """The moving image resampled onto the fixed grid (linear) by nitransforms with the composite
    equals antsApplyTransforms' result with the same file, wherever the sample is inside the image."""
    ants = pytest.importorskip("ants")
    files, grid = outputs["files"], outputs["grid"]
    moving_affine = np.diag([1.2, 1.2, 1.6, 1.0])
    moving_affine[:3, 3] = [-30.0, -25.0, -28.0]
    mshape = (52, 48, 40)
    xm = _grid_points(mshape, moving_affine)
    data = (np.sin(xm[..., 0] / 6.0) + np.cos(xm[..., 1] / 5.0) * np.sin(xm[..., 2] / 7.0)).astype(np.float32)
    moving = nib.Nifti1Image(data, moving_affine)
    fixed = nib.Nifti1Image(np.zeros(SHAPE, np.float32), grid)
    for img in (moving, fixed):
        img.set_qform(img.affine, code=1)
        img.set_sform(img.affine, code=1)
    mpath, fpath = outputs["folder"] / "moving.nii.gz", outputs["folder"] / "fixed.nii.gz"
    nib.save(moving, str(mpath))
    nib.save(fixed, str(fpath))
    chain = nt_manip.load(files["composite"], fmt="itk")
    nitr = np.asarray(nt_resampling.apply(chain, str(mpath), reference=str(fpath), order=1).dataobj)
    ref = ants.apply_transforms(ants.image_read(str(fpath)), ants.image_read(str(mpath)), [files["composite"]],
                                interpolator="linear", whichtoinvert=[False]).numpy()
    mapped = outputs["chain"].map(_grid_points(SHAPE, grid))
    index = mapped @ np.linalg.inv(moving_affine)[:3, :3].T + np.linalg.inv(moving_affine)[:3, 3]
    inside = np.all((index >= 1) & (index <= np.array(mshape) - 2), axis=-1)
    assert inside.mean() > 0.9
    assert np.abs(nitr[inside] - ref[inside]).max() < 1e-3 * np.ptp(data)
