"""ITK / ANTs transform I/O (inrreg_pipeline.io.itk), checked against antspyx itself.

The ANTs-agreement tests use oblique, anisotropic grids with non-zero origins and compare
``ants.apply_transforms`` with a prediction computed here with NumPy/SciPy only:
``p = A (x + u(x))`` at the fixed voxel centres, moving image sampled with
``scipy.ndimage.map_coordinates(order=1)`` at ``inv(moving_affine) @ p``.
"""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from inrreg_pipeline.cli import main
from inrreg_pipeline.io import frames
from inrreg_pipeline.io.images import load_image
from inrreg_pipeline.io.nifti import save_nifti
from inrreg_pipeline.io.itk import (
    affine_to_itk_geometry,
    itk_geometry_to_affine,
    ras_to_lps_matrix,
    read_ants_displacement_field,
    read_chain_transform,
    read_itk_affine,
    transform_chain_to_points,
    transform_points_through_chain,
    write_ants_displacement_field,
    write_itk_affine,
    write_itk_composite_h5,
    write_itk_inverse_composite_h5,
)

ants = pytest.importorskip("ants")

MIN_CORR = 0.999


# ------------------------------------------------------------------------------------------
# synthetic data
# ------------------------------------------------------------------------------------------
def _rot3(axis, angle_deg):
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    t = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


def _rot2(angle_deg):
    t = np.deg2rad(angle_deg)
    return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])


def _grid_affine(rot, spacing, origin):
    d = len(spacing)
    a = np.eye(d + 1)
    a[:d, :d] = rot @ np.diag(spacing)
    a[:d, d] = origin
    return a


def _centre(shape, affine):
    d = len(shape)
    return affine[:d, :d] @ ((np.asarray(shape) - 1) / 2.0) + affine[:d, d]


def _grid_points(shape, affine):
    d = len(shape)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), -1)
    return idx @ affine[:d, :d].T + affine[:d, d]


def _apply_affine(a, pts):
    d = pts.shape[-1]
    return pts @ a[:d, :d].T + a[:d, d]


def _save_image(path, data, affine):
    """Save a 2-D/3-D image with qform = sform = affine (code 1); return the affine as stored."""
    d = data.ndim
    aff4 = np.eye(4)
    aff4[:d, :d] = affine[:d, :d]
    aff4[:d, 3] = affine[:d, d]
    img = nib.Nifti1Image(data.astype(np.float32), aff4)
    img.set_qform(aff4, code=1)
    img.set_sform(aff4, code=1)
    nib.save(img, str(path))
    stored = nib.load(str(path)).affine
    out = np.eye(d + 1)
    out[:d, :d] = stored[:d, :d]
    out[:d, d] = stored[:d, 3]
    return out


def _blobs(points, centres, widths, weights):
    out = np.zeros(points.shape[:-1])
    for c, w, a in zip(centres, widths, weights):
        out += a * np.exp(-np.sum((points - c) ** 2, -1) / (2 * w * w))
    return out


def _window(shape, margin=2.5):
    """Smooth bump: 0 within `margin` voxels of the border, 1 in the middle."""
    w = np.ones(shape)
    for ax, n in enumerate(shape):
        i = np.arange(n, dtype=float)
        dist = np.minimum(i, n - 1 - i) - margin
        prof = np.clip(dist / 3.0, 0, 1)
        prof = np.sin(0.5 * np.pi * prof) ** 2
        w *= prof.reshape([-1 if k == ax else 1 for k in range(len(shape))])
    return w


def _smooth_field(shape, affine, amp, seed):
    """Smooth displacement (RAS mm, shape (*shape, d)), zero near the grid border."""
    rng = np.random.default_rng(seed)
    d = len(shape)
    pts = _grid_points(shape, affine)
    field = np.zeros(shape + (d,))
    for k in range(d):
        for _ in range(2):
            freq = rng.normal(size=d) * 0.12
            field[..., k] += rng.uniform(0.5, 1.0) * np.sin(pts @ freq + rng.uniform(0, 2 * np.pi))
    field *= (amp / np.abs(field).max()) * _window(shape)[..., None]
    return field


def _random_affine(d, centre, seed, angle=8.0, trans=3.0):
    """Rotation + anisotropic scaling + translation of a few mm about `centre` (RAS)."""
    rng = np.random.default_rng(seed)
    rot = _rot3(rng.normal(size=3), angle) if d == 3 else _rot2(angle)
    lin = rot @ np.diag(rng.uniform(0.92, 1.08, size=d))
    a = np.eye(d + 1)
    a[:d, :d] = lin
    a[:d, d] = centre - lin @ centre + rng.uniform(-trans, trans, size=d)
    return a


def _sample(data, affine, pts):
    """Linear interpolation of `data` (grid `affine`) at RAS points; (values, inside mask)."""
    d = data.ndim
    vox = _apply_affine(np.linalg.inv(affine), pts)
    inside = np.all((vox >= 0) & (vox <= np.asarray(data.shape) - 1), axis=-1)
    coords = np.moveaxis(vox, -1, 0)
    vals = ndimage.map_coordinates(data, coords.reshape(d, -1), order=1, mode="nearest")
    return vals.reshape(pts.shape[:-1]), inside


def _sample_field(field, affine, pts):
    """Displacement at arbitrary RAS points as ITK's DisplacementFieldTransform evaluates it:
    linear interpolation (edge-clamped) for continuous indices in [-0.5, n - 0.5), zero elsewhere."""
    d = field.shape[-1]
    vox = _apply_affine(np.linalg.inv(affine), pts)
    inside = np.all((vox >= -0.5) & (vox < np.asarray(field.shape[:d]) - 0.5), axis=-1)
    coords = np.moveaxis(vox, -1, 0).reshape(d, -1)
    comps = [ndimage.map_coordinates(field[..., k], coords, order=1, mode="nearest") for k in range(d)]
    return np.stack(comps, -1).reshape(pts.shape) * inside[..., None]


def _corr(a, b, mask):
    return float(np.corrcoef(a[mask].ravel(), b[mask].ravel())[0, 1])


class Scenario:
    pass


def _make_scenario(d, tmp):
    s = Scenario()
    s.d = d
    if d == 3:
        s.fixed_shape = (20, 24, 18)
        s.fixed_affine = _grid_affine(_rot3([1, 2, 0.5], 15), [1.2, 0.9, 1.5], [-11.0, 7.5, 23.0])
        s.moving_shape = (26, 28, 26)
        moving_rot = _rot3([-0.3, 0.4, 1.0], -20)
        moving_spacing = [1.1, 1.0, 1.25]
    else:
        s.fixed_shape = (30, 26)
        s.fixed_affine = _grid_affine(_rot2(15), [1.2, 0.9], [-13.0, 6.0])
        s.moving_shape = (40, 34)
        moving_rot = _rot2(-25)
        moving_spacing = [1.1, 1.0]
    c = _centre(s.fixed_shape, s.fixed_affine)
    # moving grid centred near the fixed FOV centre, larger, differently oblique
    ma = _grid_affine(moving_rot, moving_spacing, np.zeros(d))
    ma[:d, d] = c + 1.5 - _centre(s.moving_shape, ma)
    rng = np.random.default_rng(10 + d)
    n_blobs = 7
    half = np.asarray(s.fixed_shape) * 0.35 * 1.1
    centres = c + rng.uniform(-1, 1, size=(n_blobs, d)) * half
    widths = rng.uniform(2.5, 4.5, size=n_blobs)
    weights = rng.uniform(0.5, 1.5, size=n_blobs)

    s.fixed_path = tmp / "fixed.nii.gz"
    s.moving_path = tmp / "moving.nii.gz"
    moving_data = _blobs(_grid_points(s.moving_shape, ma), centres, widths, weights)
    fixed_data = _blobs(_grid_points(s.fixed_shape, s.fixed_affine), centres[::-1] * 0.98, widths, weights)
    s.moving_affine = _save_image(s.moving_path, moving_data, ma)
    s.fixed_affine = _save_image(s.fixed_path, fixed_data, s.fixed_affine)
    s.moving_data = nib.load(str(s.moving_path)).get_fdata().astype(np.float64)
    s.fixed_data = nib.load(str(s.fixed_path)).get_fdata().astype(np.float64)

    s.A = _random_affine(d, c, seed=20 + d)
    s.u = _smooth_field(s.fixed_shape, s.fixed_affine, amp=2.5, seed=30 + d)
    s.v = _smooth_field(s.fixed_shape, s.fixed_affine, amp=2.0, seed=40 + d)

    s.mat = tmp / "0GenericAffine.mat"
    s.warp = tmp / "1Warp.nii.gz"
    s.invwarp = tmp / "1InverseWarp.nii.gz"
    s.h5 = tmp / "Composite.h5"
    s.inv_h5 = tmp / "InverseComposite.h5"
    write_itk_affine(s.mat, s.A)
    write_ants_displacement_field(s.warp, s.u, s.fixed_affine)
    write_ants_displacement_field(s.invwarp, s.v, s.fixed_affine)
    write_itk_composite_h5(s.h5, s.A, s.u, s.fixed_affine)
    write_itk_inverse_composite_h5(s.inv_h5, s.A, s.v, s.fixed_affine)

    # forward prediction: fixed voxel x -> A (x + u(x)) in moving space
    x = _grid_points(s.fixed_shape, s.fixed_affine)
    s.fwd_points = _apply_affine(s.A, x + s.u)
    s.fwd_expected, s.fwd_inside = _sample(s.moving_data, s.moving_affine, s.fwd_points)
    # the other composition order, W(A(x)) = A(x) + u(A(x)), to prove the test discriminates
    ax = _apply_affine(s.A, x)
    wrong_pts = ax + _sample_field(s.u, s.fixed_affine, ax)
    s.fwd_wrong, wrong_inside = _sample(s.moving_data, s.moving_affine, wrong_pts)
    s.fwd_wrong_mask = s.fwd_inside & wrong_inside

    # inverse prediction: moving voxel y -> z = A^-1 y -> z + v(z) in fixed space
    y = _grid_points(s.moving_shape, s.moving_affine)
    z = _apply_affine(np.linalg.inv(s.A), y)
    s.inv_points = z + _sample_field(s.v, s.fixed_affine, z)
    s.inv_expected, s.inv_inside = _sample(s.fixed_data, s.fixed_affine, s.inv_points)
    # wrong order: V first, then A^-1
    wrong_pts = _apply_affine(np.linalg.inv(s.A), y + _sample_field(s.v, s.fixed_affine, y))
    s.inv_wrong, wrong_inside = _sample(s.fixed_data, s.fixed_affine, wrong_pts)
    s.inv_wrong_mask = s.inv_inside & wrong_inside
    return s


@pytest.fixture(scope="module", params=[3, 2], ids=["3d", "2d"])
def scen(request, tmp_path_factory):
    return _make_scenario(request.param, tmp_path_factory.mktemp(f"itk{request.param}d"))


def _ants_apply(fixed_path, moving_path, transformlist, whichtoinvert=None):
    if whichtoinvert is None:  # explicit: antspyx guesses (True, False) for [*.mat, other]
        whichtoinvert = [False] * len(transformlist)
    out = ants.apply_transforms(
        fixed=ants.image_read(str(fixed_path)),
        moving=ants.image_read(str(moving_path)),
        transformlist=[str(t) for t in transformlist],
        interpolator="linear",
        whichtoinvert=whichtoinvert,
    )
    return out.numpy().astype(np.float64)


def _assert_agree(got, expected, mask, wrong=None, wrong_mask=None, min_inside=0.25):
    assert mask.mean() > min_inside, "test geometry: too few voxels map inside the input FOV"
    corr = _corr(got, expected, mask)
    assert corr > MIN_CORR, corr
    err = np.abs(got - expected)[mask].max()
    assert err < 1e-3 * np.abs(expected[mask]).max(), err
    if wrong is not None:
        # the opposite composition order must be clearly distinguishable
        err_wrong = np.sqrt(np.mean((got - wrong)[wrong_mask] ** 2))
        err_right = np.sqrt(np.mean((got - expected)[wrong_mask] ** 2))
        assert err_wrong > 50 * err_right, (err_wrong, err_right)


# ------------------------------------------------------------------------------------------
# round trips
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("d", [2, 3])
def test_ras_lps_helpers(d):
    assert ras_to_lps_matrix is frames.ras_to_lps_matrix  # one home for the change of frame
    pts = np.arange(2.0 * d).reshape(2, d) + 1.0
    lps = frames.ras_to_lps_points(pts)
    np.testing.assert_array_equal(lps[:, :2], -pts[:, :2])
    np.testing.assert_array_equal(lps[:, 2:], pts[:, 2:])
    np.testing.assert_array_equal(frames.lps_to_ras_points(lps), pts)  # an involution
    np.testing.assert_array_equal(frames.frame_signs(d), np.diag(ras_to_lps_matrix(d))[:d])
    D = ras_to_lps_matrix(d)
    assert D.shape == (d + 1, d + 1)
    assert np.allclose(np.diag(D), [-1, -1] + [1] * (d - 1))
    aff = _grid_affine(_rot3([1, 1, 0], 30) if d == 3 else _rot2(30), [1.2, 0.9, 1.5][:d], [3, -4, 5][:d])
    origin, spacing, direction = affine_to_itk_geometry(aff)
    assert np.allclose(spacing, [1.2, 0.9, 1.5][:d])
    assert np.allclose(origin, (D[:d, :d] @ aff[:d, d]))
    assert np.allclose(itk_geometry_to_affine(origin, spacing, direction), aff)
    shear = aff.copy()
    shear[0, 1] += 0.3
    with pytest.raises(ValueError, match="shear"):
        affine_to_itk_geometry(shear)


@pytest.mark.parametrize("d", [2, 3])
@pytest.mark.parametrize("ext", [".mat", ".txt"])
def test_affine_round_trip(tmp_path, d, ext):
    a = _random_affine(d, np.array([10.0, -20.0, 5.0][:d]), seed=d, angle=25, trans=8)
    a[:d, :d] += np.random.default_rng(1).normal(scale=0.05, size=(d, d))  # general affine (shear)
    path = tmp_path / f"aff{ext}"
    write_itk_affine(path, a)
    back = read_itk_affine(path)
    assert back.shape == (d + 1, d + 1)
    assert np.allclose(back, a, atol=1e-12, rtol=0)
    # inside the file: LPS, AffineTransform_double_d_d
    tx = sitk.ReadTransform(str(path))
    assert tx.GetName() == "AffineTransform" and tx.GetDimension() == d
    D = ras_to_lps_matrix(d)[:d, :d]
    p = np.array([3.0, -7.0, 11.0][:d])
    assert np.allclose(tx.TransformPoint(tuple(D @ p)), D @ _apply_affine(a, p[None])[0])
    if ext == ".txt":
        assert f"AffineTransform_double_{d}_{d}" in path.read_text()


@pytest.mark.parametrize("d", [2, 3])
def test_read_centred_and_rigid_transforms(tmp_path, d):
    """Centred ITK transforms (as ANTs writes them) and Euler/Similarity are read generically."""
    rng = np.random.default_rng(5)
    if d == 3:
        txs = [sitk.Euler3DTransform((1.0, -2.0, 3.0), 0.1, -0.2, 0.3, (2.0, 1.0, -1.0)),
               sitk.Similarity3DTransform(1.1, (0.2, 0.3, 0.9), 0.4, (1, 2, 3), (4, 5, 6)),
               sitk.VersorRigid3DTransform((0.1, 0.2, 0.3), 0.5, (1, 2, 3), (-2, 0, 1))]
    else:
        txs = [sitk.Euler2DTransform((1.0, -2.0), 0.3, (2.0, 1.0)),
               sitk.Similarity2DTransform(0.9, 0.4, (1.0, 2.0), (4.0, -5.0))]
    aff = sitk.AffineTransform(d)
    aff.SetMatrix(tuple((np.eye(d) + rng.normal(scale=0.1, size=(d, d))).ravel()))
    aff.SetTranslation(tuple(rng.normal(size=d)))
    aff.SetCenter(tuple(rng.normal(scale=10, size=d)))  # T(x) = M (x - c) + c + t
    txs.append(aff)
    D = ras_to_lps_matrix(d)[:d, :d]
    pts = rng.normal(scale=20, size=(5, d))
    for i, tx in enumerate(txs):
        for ext in (".mat", ".txt"):
            path = tmp_path / f"t{i}{ext}"
            sitk.WriteTransform(tx, str(path))
            a = read_itk_affine(path)
            for p in pts:
                expect = D @ np.asarray(tx.TransformPoint(tuple(D @ p)))
                assert np.allclose(_apply_affine(a, p[None])[0], expect, atol=1e-9)


@pytest.mark.parametrize("d", [2, 3])
def test_field_round_trip_and_header(tmp_path, d):
    shape = (20, 24, 18) if d == 3 else (30, 26)
    aff = _grid_affine(_rot3([1, 2, 0.5], 15) if d == 3 else _rot2(15), [1.2, 0.9, 1.5][:d], [-11, 7.5, 23][:d])
    u = _smooth_field(shape, aff, amp=3.0, seed=d)
    path = tmp_path / "1Warp.nii.gz"
    write_ants_displacement_field(path, u, aff)

    img = nib.load(str(path))
    hdr = img.header
    assert img.shape == (shape + (1,) * (3 - d) + (1, d))
    assert img.get_data_dtype() == np.float32
    assert int(hdr["intent_code"]) == 1007 and hdr.get_intent()[0] == "vector"
    assert int(hdr["qform_code"]) == 1 and int(hdr["sform_code"]) == 1
    aff4 = np.eye(4)
    aff4[:d, :d] = aff[:d, :d]
    aff4[:d, 3] = aff[:d, d]
    assert np.allclose(img.get_qform(), aff4, atol=1e-4)
    assert np.allclose(img.get_sform(), aff4, atol=1e-4)
    # vectors stored in LPS
    D = ras_to_lps_matrix(d)[:d, :d]
    raw = np.asarray(img.dataobj).reshape(shape + (d,))
    assert np.allclose(raw, u @ D.T, atol=1e-5)

    back, back_aff = read_ants_displacement_field(path)
    assert back.shape == u.shape and back_aff.shape == (d + 1, d + 1)
    assert np.allclose(back, u, atol=1e-5)
    assert np.allclose(back_aff, aff, atol=1e-5)

    # ITK sees a d-D image with d components and our LPS geometry
    im = sitk.ReadImage(str(path))
    assert im.GetDimension() == d and im.GetNumberOfComponentsPerPixel() == d
    origin, spacing, direction = affine_to_itk_geometry(aff)
    assert np.allclose(im.GetOrigin(), origin, atol=1e-4)
    assert np.allclose(im.GetSpacing(), spacing, atol=1e-5)
    assert np.allclose(im.GetDirection(), direction, atol=1e-5)


def test_field_reader_follows_itk_when_sform_and_qform_disagree(tmp_path):
    shape = (6, 7, 5)
    sform = np.diag([1.2, 0.9, 1.5, 1.0])
    sform[:3, 3] = [1.0, 2.0, 3.0]
    qform = sform.copy()
    qform[:3, 3] = [10.0, 20.0, 30.0]
    img = nib.Nifti1Image(np.zeros(shape + (1, 3), np.float32), sform)
    img.header.set_intent("vector")
    img.set_sform(sform, code=2)  # "aligned": ITK 5.4 then prefers a scanner (code 1) qform
    img.set_qform(qform, code=1)
    path = tmp_path / "w.nii.gz"
    nib.save(img, str(path))
    with pytest.warns(UserWarning, match="disagree"):
        _, grid = read_ants_displacement_field(path)
    itk = sitk.ReadImage(str(path))
    assert np.allclose(itk.GetOrigin(), [-10.0, -20.0, 30.0])
    assert np.allclose(grid, qform)


# ------------------------------------------------------------------------------------------
# agreement with ANTs (antsApplyTransforms via antspyx)
# ------------------------------------------------------------------------------------------
#: (ANTs reference, input, transforms, whichtoinvert, expectation prefix on the scenario) of each
#: written chain: the forward files and composite, the inverse files and composite
ANTS_CHAINS = {
    "forward-files": lambda s: (s.fixed_path, s.moving_path, [s.warp, s.mat], None, "fwd"),
    "forward-h5": lambda s: (s.fixed_path, s.moving_path, [s.h5], None, "fwd"),
    "inverse-files": lambda s: (s.moving_path, s.fixed_path, [s.mat, s.invwarp], [True, False], "inv"),
    "inverse-h5": lambda s: (s.moving_path, s.fixed_path, [s.inv_h5], None, "inv"),
}


@pytest.mark.parametrize("chain", sorted(ANTS_CHAINS))
def test_ants_applies_the_written_chain(scen, chain):
    """antsApplyTransforms with the written files gives our NumPy prediction, not the wrong-order one."""
    reference, moving, transforms, invert, key = ANTS_CHAINS[chain](scen)
    kwargs = {} if invert is None else {"whichtoinvert": invert}
    got = _ants_apply(reference, moving, transforms, **kwargs)
    _assert_agree(got, getattr(scen, f"{key}_expected"), getattr(scen, f"{key}_inside"),
                  getattr(scen, f"{key}_wrong"), getattr(scen, f"{key}_wrong_mask"))


def test_ants_list_order_is_point_order(scen):
    """[mat, warp] (no inversion) is p = W(A(x)): ANTs applies its list to points first-to-last."""
    got = _ants_apply(scen.fixed_path, scen.moving_path, [scen.mat, scen.warp], whichtoinvert=[False, False])
    _assert_agree(got, scen.fwd_wrong, scen.fwd_wrong_mask, scen.fwd_expected, scen.fwd_wrong_mask)
    pts = transform_chain_to_points([(scen.mat, False), (scen.warp, False)], scen.fixed_shape, scen.fixed_affine)
    vals, inside = _sample(scen.moving_data, scen.moving_affine, pts)
    _assert_agree(got, vals, inside)


def test_antspyx_guesses_inversion_for_mat_first(scen):
    """Pitfall: antspyx apply_transforms with whichtoinvert=None and [*.mat, not-.mat] inverts the .mat."""
    default = ants.apply_transforms(
        ants.image_read(str(scen.moving_path)), ants.image_read(str(scen.fixed_path)),
        [str(scen.mat), str(scen.invwarp)], interpolator="linear",
    ).numpy()
    explicit = _ants_apply(scen.moving_path, scen.fixed_path, [scen.mat, scen.invwarp], whichtoinvert=[True, False])
    assert np.array_equal(default, explicit.astype(default.dtype))


@pytest.mark.parametrize("which", ["files", "h5"])
def test_transform_chain_to_points_forward(scen, which):
    chain = [(scen.warp, False), (scen.mat, False)] if which == "files" else [(scen.h5, False)]
    pts = transform_chain_to_points(chain, scen.fixed_shape, scen.fixed_affine)
    assert pts.shape == scen.fixed_shape + (scen.d,)
    assert np.abs(pts - scen.fwd_points).max() < 1e-3
    # and sampling the moving image there reproduces ANTs
    vals, inside = _sample(scen.moving_data, scen.moving_affine, pts)
    got = _ants_apply(scen.fixed_path, scen.moving_path, [t for t, _ in chain])
    _assert_agree(got, vals, inside)


@pytest.mark.parametrize("which", ["files", "h5"])
def test_transform_chain_to_points_inverse(scen, which):
    chain = [(scen.mat, True), (scen.invwarp, False)] if which == "files" else [(scen.inv_h5, False)]
    pts = transform_chain_to_points(chain, scen.moving_shape, scen.moving_affine)
    assert pts.shape == scen.moving_shape + (scen.d,)
    assert np.abs(pts - scen.inv_points).max() < 1e-3


@pytest.mark.parametrize("which", ["files", "h5", "inverse"])
def test_points_through_chain_are_the_grid_map(scen, which):
    """Scattered RAS points mapped through a chain land where the grid map puts the voxel centres."""
    if which == "inverse":
        chain, shape, affine = [(scen.mat, True), (scen.invwarp, False)], scen.moving_shape, scen.moving_affine
    else:
        chain = [(scen.warp, False), (scen.mat, False)] if which == "files" else [(scen.h5, False)]
        shape, affine = scen.fixed_shape, scen.fixed_affine
    grid = transform_chain_to_points(chain, shape, affine)
    x = _grid_points(shape, affine).reshape(-1, scen.d)[::7]
    mapped = transform_points_through_chain(x, chain)
    np.testing.assert_allclose(mapped, grid.reshape(-1, scen.d)[::7], atol=1e-6)
    with pytest.raises(ValueError, match="points"):
        transform_points_through_chain(x[:, :1], chain)


def test_read_chain_transform_is_the_lps_map(scen):
    """One element of a chain, as ITK reads it: the affine's LPS form, its inverse, and the errors."""
    x_ras = _grid_points(scen.fixed_shape, scen.fixed_affine).reshape(-1, scen.d)[:5]
    tx = read_chain_transform(scen.mat, False, scen.d)
    lps = np.array([tx.TransformPoint(tuple(map(float, p))) for p in frames.ras_to_lps_points(x_ras)])
    np.testing.assert_allclose(frames.lps_to_ras_points(lps), _apply_affine(scen.A, x_ras), atol=1e-6)
    inv = read_chain_transform(scen.mat, True, scen.d)
    back = np.array([inv.TransformPoint(tuple(map(float, p))) for p in lps])
    np.testing.assert_allclose(frames.lps_to_ras_points(back), x_ras, atol=1e-6)
    with pytest.raises(ValueError, match="invert"):
        read_chain_transform(scen.warp, True, scen.d)
    with pytest.raises(ValueError, match="-D"):
        read_chain_transform(scen.mat, False, 5 - scen.d)
    with pytest.raises(FileNotFoundError):
        read_chain_transform(scen.mat.with_name("missing.mat"), False, scen.d)


def test_invert_field_raises(scen):
    with pytest.raises(ValueError, match="invert"):
        transform_chain_to_points([(scen.warp, True)], scen.fixed_shape, scen.fixed_affine)
    with pytest.raises(ValueError, match="invert"):
        transform_chain_to_points([(scen.h5, True)], scen.fixed_shape, scen.fixed_affine)


def test_shear_reference_raises(scen):
    sheared = scen.fixed_affine.copy()
    sheared[0, 1] += 0.4
    with pytest.raises(ValueError, match="shear"):
        transform_chain_to_points([(scen.mat, False)], scen.fixed_shape, sheared)
    with pytest.raises(ValueError, match="shear"):
        write_ants_displacement_field(scen.warp.with_name("x.nii.gz"), scen.u, sheared)


def test_affine_only_chain_and_inverse(scen):
    pts = transform_chain_to_points([(scen.mat, False)], scen.fixed_shape, scen.fixed_affine)
    x = _grid_points(scen.fixed_shape, scen.fixed_affine)
    assert np.allclose(pts, _apply_affine(scen.A, x), atol=1e-6)
    pts = transform_chain_to_points([(scen.mat, True)], scen.fixed_shape, scen.fixed_affine)
    assert np.allclose(pts, _apply_affine(np.linalg.inv(scen.A), x), atol=1e-6)


# ------------------------------------------------------------------------------------------
# files written by antsRegistration itself
# ------------------------------------------------------------------------------------------
def test_read_files_written_by_ants(scen, tmp_path):
    fixed = ants.image_read(str(scen.fixed_path))
    moving = ants.image_read(str(scen.moving_path))
    reg = ants.registration(fixed, moving, "SyN", outprefix=str(tmp_path / "reg_"),
                            reg_iterations=(20, 10), random_seed=1)
    fwd = reg["fwdtransforms"]
    assert fwd[0].endswith("1Warp.nii.gz") and fwd[1].endswith("0GenericAffine.mat")
    A = read_itk_affine(fwd[1])
    u, grid = read_ants_displacement_field(fwd[0])
    assert u.shape == scen.fixed_shape + (scen.d,)
    assert np.allclose(grid, scen.fixed_affine, atol=1e-4)
    assert np.abs(u).max() > 0.05 and not np.allclose(A, np.eye(scen.d + 1), atol=1e-3)
    # ANTs' own warp is p = A (x + u(x)) at the fixed voxel centres
    x = _grid_points(scen.fixed_shape, scen.fixed_affine)
    pred_pts = _apply_affine(A, x + u)
    pts = transform_chain_to_points([(f, False) for f in fwd], scen.fixed_shape, scen.fixed_affine)
    assert np.abs(pts - pred_pts).max() < 1e-3
    vals, inside = _sample(scen.moving_data, scen.moving_affine, pred_pts)
    got = ants.apply_transforms(fixed, moving, fwd, interpolator="linear").numpy().astype(np.float64)
    # the transform is whatever ANTs found, and its multi-threaded sampling is not reproducible on a
    # loaded machine (19 % of the 2-D grid mapped inside the moving image in one such run): require
    # enough voxels to compare, not the 25 % of the geometries built here
    _assert_agree(got, vals, inside, min_inside=0.1)
    # inverse list: [[affine, invert], InverseWarp]
    inv = reg["invtransforms"]
    assert inv[0].endswith("0GenericAffine.mat") and inv[1].endswith("1InverseWarp.nii.gz")
    v, _ = read_ants_displacement_field(inv[1])
    y = _grid_points(scen.moving_shape, scen.moving_affine)
    z = _apply_affine(np.linalg.inv(A), y)
    pred_inv = z + _sample_field(v, scen.fixed_affine, z)
    pts = transform_chain_to_points([(inv[0], True), (inv[1], False)], scen.moving_shape, scen.moving_affine)
    assert np.abs(pts - pred_inv).max() < 1e-3


# ------------------------------------------------------------------------------------------
# images in ITK formats (.mha, .mhd, .nrrd) as inputs, as ANTs reads them
# ------------------------------------------------------------------------------------------
def _itk_image(data, affine):
    """``data`` (array axes i, j[, k]) on the grid ``affine`` (voxel -> RAS) as a SimpleITK image,
    its LPS geometry written with SimpleITK's own setters (not through the code under test)."""
    d = data.ndim
    flip = np.diag([-1.0, -1.0, 1.0][:d])
    lin = flip @ affine[:d, :d]
    spacing = np.linalg.norm(lin, axis=0)
    img = sitk.GetImageFromArray(np.ascontiguousarray(data.T))  # SimpleITK's array is (k, j, i)
    img.SetSpacing([float(v) for v in spacing])
    img.SetOrigin([float(v) for v in flip @ affine[:d, d]])
    img.SetDirection([float(v) for v in (lin / spacing).ravel()])
    return img


@pytest.mark.parametrize("ext", [".mha", ".mhd", ".nrrd"])
@pytest.mark.parametrize("d", [3, 2])
def test_itk_format_image_loads_like_its_nifti_twin(tmp_path, ext, d):
    """An oblique, anisotropic volume written as ``ext`` (through SimpleITK) and as ``.nii.gz`` (through
    nibabel) with the same geometry loads to the same voxels and the same RAS affine."""
    rng = np.random.default_rng(3)
    shape = (9, 7, 5)[:d]
    data = rng.normal(size=shape).astype(np.float32)
    rot = _rot3([1, 2, 3], 25) if d == 3 else _rot2(25)
    affine = _grid_affine(rot, (1.2, 0.9, 2.5)[:d], (10.0, -20.0, 30.0)[:d])
    itk_path = tmp_path / f"img{ext}"
    sitk.WriteImage(_itk_image(data, affine), str(itk_path))
    stored = _save_image(tmp_path / "img.nii.gz", data, affine)
    from_itk, from_nifti = load_image(itk_path), load_image(tmp_path / "img.nii.gz")
    assert from_itk.shape == from_nifti.shape == shape
    np.testing.assert_array_equal(from_itk.data, from_nifti.data)
    np.testing.assert_allclose(from_itk.affine, from_nifti.affine, atol=1e-5)
    np.testing.assert_allclose(from_nifti.affine, stored, atol=1e-5)


def test_itk_format_inputs_register_and_apply_to_nifti_outputs(tmp_path, capsys):
    """``inrreg apply`` reads an .mha input and .nrrd reference and writes NIfTI; a bad .mha is one line."""
    shape = (12, 10, 8)
    i, j, k = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    data = np.exp(-((i - 6) ** 2 + (j - 5) ** 2 + (k - 4) ** 2) / 8.0).astype(np.float32)
    affine = _grid_affine(_rot3([0, 0, 1], 10), (2.0, 2.0, 2.5), (-5.0, 3.0, 1.0))
    sitk.WriteImage(_itk_image(data, affine), str(tmp_path / "moving.mha"))
    sitk.WriteImage(_itk_image(data, affine), str(tmp_path / "fixed.nrrd"))
    write_itk_affine(tmp_path / "id.mat", np.eye(4))
    out = tmp_path / "out" / "moved.nii.gz"
    assert main(["apply", str(tmp_path / "moving.mha"), "-r", str(tmp_path / "fixed.nrrd"), "-t",
                 str(tmp_path / "id.mat"), "-o", str(out)]) == 0, capsys.readouterr().err
    moved = nib.load(str(out))
    np.testing.assert_allclose(moved.affine, _save_image(tmp_path / "twin.nii.gz", data, affine), atol=1e-5)
    np.testing.assert_allclose(np.asanyarray(moved.dataobj), data, atol=1e-5)
    (tmp_path / "broken.mha").write_text("ObjectType = Image\nNDims = 3\n")
    assert main(["apply", str(tmp_path / "broken.mha"), "-r", str(tmp_path / "fixed.nrrd"), "-t",
                 str(tmp_path / "id.mat"), "-o", str(tmp_path / "x.nii.gz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "broken.mha" in err[0] and "not a readable image" in err[0], err


# ------------------------------------------------------------------------------------------
# fast gzip NIfTI writing (io.nifti.save_nifti, re-exported by io.images)
# ------------------------------------------------------------------------------------------
def test_fast_gzip_nifti_holds_the_bytes_nibabel_writes_and_itk_reads_it(tmp_path):
    """Same decompressed bytes (header, extension gap, data) as ``nib.save``; a displacement field
    written through it reads back exactly with nibabel and SimpleITK."""
    rng = np.random.default_rng(5)
    data = np.cumsum(rng.normal(size=(19, 13, 7)), axis=0).astype(np.float32)
    aff = np.diag([-1.2, 0.9, 2.5, 1.0])
    aff[:3, 3] = [10.0, -20.0, 5.0]
    img = nib.Nifti1Image(data, aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    nib.save(img, str(tmp_path / "nibabel.nii.gz"))
    save_nifti(img, tmp_path / "fast.nii.gz")
    with gzip.open(tmp_path / "nibabel.nii.gz") as a, gzip.open(tmp_path / "fast.nii.gz") as b:
        assert a.read() == b.read()
    save_nifti(img, tmp_path / "plain.nii")  # not compressed: nibabel's own path
    assert np.array_equal(np.asarray(nib.load(str(tmp_path / "plain.nii")).dataobj), data)

    field = rng.normal(size=(9, 8, 7, 3)).astype(np.float32)
    write_ants_displacement_field(tmp_path / "warp.nii.gz", field, aff)
    back, grid = read_ants_displacement_field(tmp_path / "warp.nii.gz")
    np.testing.assert_array_equal(back, field)
    np.testing.assert_allclose(grid, aff, atol=1e-6)
    itk = sitk.ReadImage(str(tmp_path / "warp.nii.gz"))
    assert itk.GetSize() == (9, 8, 7) and itk.GetNumberOfComponentsPerPixel() == 3
    lps = np.transpose(sitk.GetArrayFromImage(itk), (2, 1, 0, 3))
    np.testing.assert_array_equal(lps, field * np.array([-1.0, -1.0, 1.0], np.float32))


# ------------------------------------------------------------------------------------------
# the same files as RAS transform objects (inrreg_pipeline.core.transform)
# ------------------------------------------------------------------------------------------
def test_parse_transform_spec_is_ants_syntax():
    from inrreg_pipeline.io.itk import parse_transform_spec

    assert parse_transform_spec("a/0GenericAffine.mat") == ("a/0GenericAffine.mat", False)
    assert parse_transform_spec("[ a/0GenericAffine.mat , 1 ]") == ("a/0GenericAffine.mat", True)
    assert parse_transform_spec("[w.nii.gz,0]") == ("w.nii.gz", False)


@pytest.mark.parametrize("which", ["files", "h5", "inverse-files", "inverse-h5"])
def test_read_transform_chain_is_the_chain_ants_applies(scen, which):
    """The object chain read from the written files maps the grid as ITK does, kinds in -t order."""
    from inrreg_pipeline.core.transform import AffineTransform, DisplacementField, map_grid
    from inrreg_pipeline.io.itk import read_transform_chain

    chain, shape, affine, kinds = {
        "files": ([(scen.warp, False), (scen.mat, False)], scen.fixed_shape, scen.fixed_affine,
                  [DisplacementField, AffineTransform]),
        "h5": ([(scen.h5, False)], scen.fixed_shape, scen.fixed_affine, [DisplacementField, AffineTransform]),
        "inverse-files": ([(scen.mat, True), (scen.invwarp, False)], scen.moving_shape, scen.moving_affine,
                          [AffineTransform, DisplacementField]),
        "inverse-h5": ([(scen.inv_h5, False)], scen.moving_shape, scen.moving_affine,
                       [AffineTransform, DisplacementField]),
    }[which]
    objects = read_transform_chain(chain, scen.d)
    assert [type(t) for t in objects] == kinds
    np.testing.assert_allclose(map_grid(objects, shape, affine), transform_chain_to_points(chain, shape, affine),
                               atol=1e-9)
    expected = scen.fwd_points if which in ("files", "h5") else scen.inv_points
    assert np.abs(map_grid(objects, shape, affine) - expected).max() < 1e-3
    np.testing.assert_allclose(objects[kinds.index(AffineTransform)].matrix,
                               scen.A if which in ("files", "h5") else np.linalg.inv(scen.A), atol=1e-12)
