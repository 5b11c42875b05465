"""The transform objects (inrreg_pipeline.core.transform) and their files (inrreg_pipeline.io.itk).

What a user relies on: the chain ``[field, affine]`` is the core's ``phi(x) = A(x + u(x))``; a chain
read from the files the core writes maps points as ANTs does (``antsApplyTransformsToPoints``
through antspyx when it is installed, ITK's own transforms always); inverses undo the map; the
answer is physical (the same on any grid that holds the same field); 2-D works like 3-D.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from inrreg_pipeline.core.transform import (AffineTransform, DisplacementField, TransformChain, map_grid,
                                            registration_transform)
from inrreg_pipeline.io import frames
from inrreg_pipeline.io.itk import (read_transform, read_transform_chain, transform_chain_to_points,
                                    transform_from_sitk, transform_to_sitk, write_itk_transform)
from inrreg_pipeline.register import write_transforms

DIMS = pytest.mark.parametrize("d", [2, 3], ids=["2d", "3d"])


def _rotation(d, angle_deg, axis=(1.0, 2.0, 0.5)):
    t = np.deg2rad(angle_deg)
    if d == 2:
        return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    a = np.asarray(axis) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _grid(d, angle=15.0, spacing=(1.2, 0.9, 1.5), origin=(-11.0, 7.5, 23.0), flip=False):
    a = np.eye(d + 1)
    signs = np.array([-1.0, 1.0, 1.0][:d]) if flip else np.ones(d)
    a[:d, :d] = _rotation(d, angle) @ np.diag(np.asarray(spacing[:d]) * signs)
    a[:d, d] = origin[:d]
    return a


def _shape(d):
    return (20, 24, 18) if d == 3 else (30, 26)


def _centres(shape, affine):
    d = len(shape)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    return idx @ affine[:d, :d].T + affine[:d, d]


def _smooth_field(shape, affine, amp, seed):
    """A smooth displacement (RAS mm) that vanishes towards the grid border."""
    rng = np.random.default_rng(seed)
    d = len(shape)
    x = _centres(shape, affine)
    u = np.zeros(shape + (d,))
    for k in range(d):
        freq = rng.normal(size=d) * 0.1
        u[..., k] = np.sin(x @ freq + rng.uniform(0, 2 * np.pi))
    window = np.ones(shape)
    for ax, n in enumerate(shape):
        i = np.arange(n, dtype=float)
        prof = np.sin(0.5 * np.pi * np.clip((np.minimum(i, n - 1 - i) - 1.5) / 6.0, 0, 1)) ** 2
        window *= prof.reshape([-1 if j == ax else 1 for j in range(d)])
    return u * (amp / np.abs(u).max()) * window[..., None]


def _affine(d, seed, angle=8.0, shift=3.0):
    rng = np.random.default_rng(seed)
    a = np.eye(d + 1)
    a[:d, :d] = _rotation(d, angle, rng.normal(size=3)) @ np.diag(rng.uniform(0.92, 1.08, size=d))
    a[:d, d] = rng.uniform(-shift, shift, size=d)
    return a


def _voxel_points(shape, affine, n, seed, margin=0.0):
    """``n`` random RAS points whose voxel indices lie in ``[-margin, shape - 1 + margin]``."""
    d = len(shape)
    rng = np.random.default_rng(seed)
    idx = rng.uniform(-margin, np.asarray(shape) - 1 + margin, size=(n, d))
    return idx @ affine[:d, :d].T + affine[:d, d]


# ------------------------------------------------------------------------------------------
# the objects
# ------------------------------------------------------------------------------------------
@DIMS
def test_chain_of_field_then_affine_is_the_cores_phi(d):
    shape, grid = _shape(d), _grid(d)
    A, u = _affine(d, seed=d), _smooth_field(shape, grid, 2.5, seed=d)
    chain = TransformChain([DisplacementField(u, grid), AffineTransform(A)])
    x = _centres(shape, grid)
    expected = (x + u) @ A[:d, :d].T + A[:d, d]  # phi(x) = A(x + u(x)) at the voxel centres
    np.testing.assert_allclose(chain.map(x.reshape(-1, d)).reshape(x.shape), expected, atol=1e-9)
    np.testing.assert_allclose(map_grid(chain, shape, grid), expected, atol=1e-9)
    # the same chain, three spellings: registration_transform, then(), a nested chain
    for other in (registration_transform(A, u, grid), DisplacementField(u, grid).then(AffineTransform(A)),
                  TransformChain([TransformChain([DisplacementField(u, grid)]), AffineTransform(A)])):
        assert len(other) == 2
        np.testing.assert_allclose(map_grid(other, shape, grid), expected, atol=1e-9)
    # the other order is a different map (the test discriminates)
    wrong = TransformChain([AffineTransform(A), DisplacementField(u, grid)])
    assert np.abs(map_grid(wrong, shape, grid) - expected).max() > 0.1


@DIMS
def test_field_between_voxel_centres_is_the_cores_sampling(d):
    """Inside the grid, the field is interpolated as the core's torch sampling does (multilinear)."""
    torch = pytest.importorskip("torch")
    from inrreg_pipeline.core.space import sample_array

    shape, grid = _shape(d), _grid(d)
    u = _smooth_field(shape, grid, 2.5, seed=3 + d)
    pts = _voxel_points(shape, grid, 500, seed=d)
    core = sample_array(u.astype(np.float32), grid, pts, torch.device("cpu"), vector=True)
    np.testing.assert_allclose(DisplacementField(u, grid).displacement(pts), core, atol=2e-5)


@DIMS
def test_field_outside_its_grid_follows_itk(d):
    """Within half a voxel of the outermost centres the edge value, beyond it zero (identity), as ITK."""
    shape, grid = _shape(d), _grid(d)
    u = np.ones(shape + (d,)) * np.arange(1.0, d + 1.0)
    field = DisplacementField(u, grid)
    idx = np.zeros((4, d))
    idx[:, 0] = [-0.4, -0.6, shape[0] - 0.6, shape[0] - 0.4]
    pts = idx @ grid[:d, :d].T + grid[:d, d]
    got = field.displacement(pts)
    np.testing.assert_allclose(got[[0, 2]], np.broadcast_to(np.arange(1.0, d + 1.0), (2, d)))
    np.testing.assert_array_equal(got[[1, 3]], 0.0)
    np.testing.assert_array_equal(field.map(pts[[1, 3]]), pts[[1, 3]])


@DIMS
def test_affine_inverse_and_composition_are_exact(d):
    A, B = AffineTransform(_affine(d, 1, angle=30)), AffineTransform(_affine(d, 2, angle=-20))
    x = np.random.default_rng(0).normal(scale=30, size=(50, d))
    np.testing.assert_allclose(A.inverse().map(A.map(x)), x, atol=1e-10)
    np.testing.assert_allclose(A.then(B).map(x), B.map(A.map(x)), atol=1e-12)
    np.testing.assert_allclose(A.then(B).inverse().map(B.map(A.map(x))), x, atol=1e-10)
    np.testing.assert_array_equal(AffineTransform.identity(d).map(x), x)
    assert A.map(x[0]).shape == (d,)  # a single point (d,) works too


@DIMS
def test_inverse_undoes_the_map_within_a_tenth_of_a_voxel(d):
    """Fixed-point inverse of a smooth field (no inverse known), alone and inside a chain."""
    shape, grid = _shape(d), _grid(d)
    u = _smooth_field(shape, grid, 1.2, seed=7 + d)
    A = _affine(d, seed=11 + d)
    field = DisplacementField(u, grid)
    tenth = 0.1 * float(np.linalg.norm(grid[:d, :d], axis=0).min())
    # interior points: the inverse is a field on the same grid, so the round trip stays inside it
    idx = np.stack(np.meshgrid(*[np.arange(4, n - 4, 1.37) for n in shape], indexing="ij"), -1).reshape(-1, d)
    x = idx @ grid[:d, :d].T + grid[:d, d]
    inverse = field.inverse()
    assert isinstance(inverse, DisplacementField) and inverse.inverse_field is not None
    err = np.linalg.norm(inverse.map(field.map(x)) - x, axis=1)
    assert err.max() < tenth, err.max()
    chain = registration_transform(A, u, grid)
    err = np.linalg.norm(chain.inverse().map(chain.map(x)) - x, axis=1)
    assert err.max() < tenth, err.max()
    # a known inverse (1InverseWarp) is used as it is, and knows the forward field back
    known = DisplacementField(u, grid, inverse_field=inverse.field)
    np.testing.assert_array_equal(known.inverse().field, inverse.field)
    np.testing.assert_array_equal(known.inverse().inverse().field, u)
    chain_inv = registration_transform(A, u, grid, inverse.field).inverse()
    assert isinstance(chain_inv[0], AffineTransform) and isinstance(chain_inv[1], DisplacementField)
    np.testing.assert_allclose(chain_inv[0].matrix, np.linalg.inv(A))


@DIMS
def test_oblique_flipped_anisotropic_grid_gives_the_same_physical_answer(d):
    """One physical displacement (affine in x, so multilinear interpolation is exact) stored on an
    axis-aligned isotropic grid and on an oblique, flipped, anisotropic one: the same points."""
    rng = np.random.default_rng(d)
    B, c = rng.normal(scale=0.05, size=(d, d)), rng.normal(size=d)
    straight = _grid(d, angle=0.0, spacing=(1.0, 1.0, 1.0), origin=(-30.0, -30.0, -30.0))
    oblique = _grid(d, angle=25.0, spacing=(0.7, 1.9, 1.3), origin=(0.0, 0.0, 0.0), flip=True)
    oblique_shape = (90, 34, 48)[:d]
    oblique[:d, d] = -oblique[:d, :d] @ ((np.asarray(oblique_shape) - 1) / 2.0)  # centred on 0, as `straight`
    assert np.linalg.det(oblique[:d, :d]) < 0
    fields = []
    for grid, shape in ((straight, (61,) * d), (oblique, oblique_shape)):
        fields.append(DisplacementField(_centres(shape, grid) @ B.T + c, grid))
    # points inside both grids: around the common centre
    pts = rng.uniform(-8, 8, size=(200, d))
    for field in fields:
        np.testing.assert_allclose(field.map(pts), pts + pts @ B.T + c, atol=1e-9)
    np.testing.assert_allclose(fields[0].map(pts), fields[1].map(pts), atol=1e-9)


def test_bad_inputs_are_refused_with_one_line():
    with pytest.raises(ValueError, match="homogeneous"):
        AffineTransform(np.eye(5))
    with pytest.raises(ValueError, match="last row"):
        AffineTransform(np.ones((4, 4)))
    with pytest.raises(ValueError, match="shape"):
        DisplacementField(np.zeros((4, 5, 2)), np.eye(4))
    with pytest.raises(ValueError, match="same grid"):
        DisplacementField(np.zeros((4, 5, 3, 3)), np.eye(4), inverse_field=np.zeros((4, 5, 2, 3)))
    with pytest.raises(ValueError, match="dimensions"):
        TransformChain([AffineTransform.identity(2), AffineTransform.identity(3)])
    with pytest.raises(ValueError, match="at least one"):
        TransformChain([])
    with pytest.raises(ValueError, match="points"):
        AffineTransform.identity(3).map(np.zeros((4, 2)))


def test_the_module_imports_without_torch():
    code = ("import sys; import inrreg_pipeline.core.transform; "
            "print(sorted(m for m in ('torch', 'nibabel', 'SimpleITK', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------------------------------------
# files: the core's writers -> read_transform_chain, as ITK and ANTs map points
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[2, 3], ids=["2d", "3d"])
def written(request, tmp_path_factory):
    """The files a registration writes (affine, warp, inverse warp, both composites) on an oblique grid."""
    d = request.param
    tmp = tmp_path_factory.mktemp(f"xfm{d}d")
    shape, grid = _shape(d), _grid(d)
    A, u = _affine(d, seed=20 + d), _smooth_field(shape, grid, 1.2, seed=30 + d)
    v = DisplacementField(u, grid).inverse().field
    paths = {k: tmp / n for k, n in (("mat", "0GenericAffine.mat"), ("warp", "1Warp.nii.gz"),
                                     ("invwarp", "1InverseWarp.nii.gz"), ("h5", "Composite.h5"),
                                     ("inv_h5", "InverseComposite.h5"))}
    keys = {"affine": "mat", "warp": "warp", "inverse_warp": "invwarp", "composite": "h5",
            "inverse_composite": "inv_h5"}
    write_transforms(lambda key: paths[keys[key]], A, u, v, grid)  # what register.write_outputs writes
    # the points: voxel centres, scattered points, and points in the half-voxel band and beyond
    pts = np.concatenate([_voxel_points(shape, grid, 300, seed=d, margin=2.0),
                          _centres(shape, grid).reshape(-1, d)[::37]])
    return dict(d=d, shape=shape, grid=grid, A=A, u=u, v=v, pts=pts, **paths)


FORWARD = {"files": lambda w: [(w["warp"], False), (w["mat"], False)], "h5": lambda w: [(w["h5"], False)]}
INVERSE = {"files": lambda w: [(w["mat"], True), (w["invwarp"], False)], "h5": lambda w: [(w["inv_h5"], False)]}


def _itk_map(files, pts):
    """Points mapped by ITK itself: the files read with SimpleITK, composed as antsApplyTransforms does."""
    d = pts.shape[1]
    comp = sitk.CompositeTransform(d)
    for path, invert in reversed(files):
        if str(path).endswith(".nii.gz"):
            tx = sitk.DisplacementFieldTransform(sitk.ReadImage(str(path), sitk.sitkVectorFloat64))
        else:
            tx = sitk.ReadTransform(str(path))
            tx = tx.GetInverse() if invert else tx
        comp.AddTransform(tx)
    lps = frames.ras_to_lps_points(pts)
    return frames.lps_to_ras_points(np.array([comp.TransformPoint(tuple(map(float, p))) for p in lps]))


@pytest.mark.parametrize("which", sorted(FORWARD))
def test_chain_read_from_the_cores_files_is_its_phi(written, which):
    d, grid, shape = written["d"], written["grid"], written["shape"]
    chain = read_transform_chain(FORWARD[which](written))
    assert [type(t) for t in chain] == [DisplacementField, AffineTransform]
    x = _centres(shape, grid)
    expected = (x + written["u"]) @ written["A"][:d, :d].T + written["A"][:d, d]
    np.testing.assert_allclose(map_grid(chain, shape, grid), expected, atol=1e-4)  # float32 in the file
    np.testing.assert_allclose(chain[0].grid_affine, grid, atol=1e-5)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("which", sorted(FORWARD))
def test_chain_maps_points_as_itk_does(written, which, direction):
    files = (FORWARD if direction == "forward" else INVERSE)[which](written)
    chain = read_transform_chain(files)
    np.testing.assert_allclose(chain.map(written["pts"]), _itk_map(files, written["pts"]), atol=1e-9)
    # and as the grid map inrreg apply resamples with (ITK's TransformToDisplacementField)
    shape, grid = written["shape"], written["grid"]
    np.testing.assert_allclose(map_grid(chain, shape, grid), transform_chain_to_points(files, shape, grid),
                               atol=1e-9)


@pytest.mark.parametrize("direction", ["forward", "inverse"])
@pytest.mark.parametrize("which", sorted(FORWARD))
def test_chain_maps_points_as_ants_does(written, which, direction):
    ants = pytest.importorskip("ants")
    pd = pytest.importorskip("pandas")
    files = (FORWARD if direction == "forward" else INVERSE)[which](written)
    d, pts = written["d"], written["pts"]
    lps = frames.ras_to_lps_points(pts)
    frame = pd.DataFrame(lps, columns=list("xyz"[:d]))
    out = ants.apply_transforms_to_points(d, frame, [str(p) for p, _ in files],
                                          whichtoinvert=[bool(i) for _, i in files])
    got = frames.lps_to_ras_points(out[list("xyz"[:d])].to_numpy(dtype=float))
    np.testing.assert_allclose(read_transform_chain(files).map(pts), got, atol=1e-4)  # ANTs: float32 points


def test_inverse_chain_of_the_files_undoes_the_forward_chain(written):
    fwd = read_transform_chain(FORWARD["files"](written))
    inv = read_transform_chain(INVERSE["files"](written))
    shape, grid, d = written["shape"], written["grid"], written["d"]
    idx = np.stack(np.meshgrid(*[np.arange(4, n - 4, 1.7) for n in shape], indexing="ij"), -1).reshape(-1, d)
    x = idx @ grid[:d, :d].T + grid[:d, d]
    tenth = 0.1 * float(np.linalg.norm(grid[:d, :d], axis=0).min())
    assert np.linalg.norm(inv.map(fwd.map(x)) - x, axis=1).max() < tenth
    # the object inverse of the affine file equals ANTs' [file,1]
    np.testing.assert_allclose(read_transform(written["mat"]).inverse().matrix,
                               read_transform(written["mat"], invert=True).matrix, atol=1e-12)


@DIMS
def test_objects_round_trip_through_files_and_sitk(tmp_path, d):
    shape, grid = _shape(d), _grid(d)
    chain = registration_transform(_affine(d, 5), _smooth_field(shape, grid, 2.0, 5), grid)
    pts = _voxel_points(shape, grid, 100, seed=1, margin=1.0)
    for name, transform in (("a.mat", chain[1]), ("a.txt", chain[1]), ("w.nii.gz", chain[0]), ("c.h5", chain),
                            ("f.h5", chain[0])):
        write_itk_transform(tmp_path / name, transform)
        back = read_transform(tmp_path / name)
        np.testing.assert_allclose(back.map(pts), transform.map(pts), atol=1e-4)
    back = transform_from_sitk(transform_to_sitk(chain))
    np.testing.assert_allclose(back.map(pts), chain.map(pts), atol=1e-12)
    with pytest.raises(ValueError, match="only an affine"):
        write_itk_transform(tmp_path / "x.mat", chain)
    with pytest.raises(ValueError, match="only a displacement field"):
        write_itk_transform(tmp_path / "x.nii.gz", chain[1])
    with pytest.raises(ValueError, match="invert"):
        read_transform(tmp_path / "w.nii.gz", invert=True)
    with pytest.raises(ValueError, match="-D"):
        read_transform_chain([tmp_path / "a.mat"], ndim=5 - d)
    with pytest.raises(FileNotFoundError):
        read_transform(tmp_path / "missing.mat")
