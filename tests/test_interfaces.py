"""Nipype interfaces of inrreg on small real images (nilearn's MNI152 at 6 mm, BraTS-Reg landmarks).

Registrations use a preset JSON with a handful of iterations (seconds on 2 CPU cores); ANTs runs
through ``inrreg_pipeline.baselines.run_ants`` with ``scale_iterations`` small.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import SHARED, ensure_run_ants, make_pair, read_tsv

pytest.importorskip("nipype")
from nipype.pipeline import engine as pe  # noqa: E402

from inrreg_pipeline import interfaces as ifc  # noqa: E402


def ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    a, b = (a, b) if mask is None else (a[mask], b[mask])
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def run_node(iface, base_dir, name="node"):
    node = pe.Node(iface, name=name, base_dir=str(base_dir))
    return node.run().outputs


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("data") / "inputs")


@pytest.fixture(scope="module")
def inr_outputs(pair, tmp_path_factory):
    reg = ifc.INRRegistration(fixed_image=pair["fixed"], moving_image=pair["moving"], preset=pair["preset"],
                              device="cpu", random_seed=0)
    return run_node(reg, tmp_path_factory.mktemp("inr"), "inr_registration")


# ---------------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------------
def test_inr_registration_outputs_mirror_ants_registration(pair, inr_outputs):
    from nipype.interfaces import ants as nipype_ants

    out = inr_outputs
    # the names and order nipype's ants.Registration reports for Affine + SyN with collapsed outputs
    ref = nipype_ants.Registration(
        fixed_image=[pair["fixed"]], moving_image=[pair["moving"]], transforms=["Affine", "SyN"],
        transform_parameters=[(0.1,), (0.1, 3.0, 0.0)], metric=["MI", "CC"], metric_weight=[1, 1],
        radius_or_number_of_bins=[32, 4], number_of_iterations=[[10], [5]], smoothing_sigmas=[[0], [0]],
        shrink_factors=[[1], [1]], collapse_output_transforms=True, write_composite_transform=False,
        output_transform_prefix="P")._list_outputs()
    kinds = {"0GenericAffine.mat": "affine", "1Warp.nii.gz": "warp", "1InverseWarp.nii.gz": "inverse_warp"}

    def roles(paths):
        return [next(v for k, v in kinds.items() if str(p).endswith(k)) for p in paths]

    for field in ("forward_transforms", "reverse_forward_transforms", "reverse_transforms"):
        assert roles(getattr(out, field)) == roles(ref[field]), field
    for field in ("forward_invert_flags", "reverse_forward_invert_flags", "reverse_invert_flags"):
        assert list(getattr(out, field)) == list(ref[field]), field
    assert out.forward_invert_flags == [False, False] and out.reverse_invert_flags == [True, False]
    assert roles(out.reverse_forward_transforms) == ["warp", "affine"]
    assert roles(out.reverse_transforms) == ["affine", "inverse_warp"]
    for field in ("composite_transform", "inverse_composite_transform", "warped_image", "inverse_warped_image",
                  "jacobian", "metadata"):
        assert Path(getattr(out, field)).is_file(), field
        assert Path(getattr(out, field)).parent.name == "inr_registration"  # inside the node directory
    meta = json.loads(Path(out.metadata).read_text())
    assert meta["seed"] == 0 and meta["device"] == "cpu" and out.elapsed_time > 0
    warped = nib.load(out.warped_image)
    fixed = nib.load(pair["fixed"])
    assert warped.shape == fixed.shape and np.allclose(warped.affine, fixed.affine, atol=1e-4)


def test_inr_registration_drops_into_an_ants_graph(pair, tmp_path):
    """Build a graph around nipype's ants.Registration, swap in INRRegistration, keep every edge."""
    from nipype.interfaces import ants as nipype_ants
    from nipype.interfaces import utility as niu

    wf = pe.Workflow(name="ants_graph", base_dir=str(tmp_path))
    inputnode = pe.Node(niu.IdentityInterface(fields=["fixed", "moving", "labels"]), name="inputnode")
    inputnode.inputs.fixed, inputnode.inputs.moving = pair["fixed"], pair["moving"]
    inputnode.inputs.labels = pair["fixed_labels"]
    reg = pe.Node(nipype_ants.Registration(
        transforms=["Affine", "SyN"], transform_parameters=[(0.1,), (0.1, 3.0, 0.0)], metric=["MI", "CC"],
        metric_weight=[1, 1], radius_or_number_of_bins=[32, 4], number_of_iterations=[[10], [5]],
        smoothing_sigmas=[[0], [0]], shrink_factors=[[1], [1]], collapse_output_transforms=True,
        write_composite_transform=True), name="registration")
    by_list = pe.Node(ifc.ApplyTransforms(output_image="by_list.nii.gz"), name="apply_list")
    by_h5 = pe.Node(ifc.ApplyTransforms(output_image="by_h5.nii.gz"), name="apply_h5")
    back = pe.Node(ifc.ApplyTransforms(interpolation="GenericLabel", output_image="labels_in_moving.nii.gz"),
                   name="labels_to_moving")
    outputnode = pe.Node(niu.IdentityInterface(fields=["warped", "by_list", "by_h5", "inverse_warped", "back"]),
                         name="outputnode")
    wf.connect([
        (inputnode, reg, [("fixed", "fixed_image"), ("moving", "moving_image")]),
        (inputnode, by_list, [("moving", "input_image"), ("fixed", "reference_image")]),
        (inputnode, by_h5, [("moving", "input_image"), ("fixed", "reference_image")]),
        (inputnode, back, [("labels", "input_image"), ("moving", "reference_image")]),
        (reg, by_list, [("reverse_forward_transforms", "transforms"),
                        ("reverse_forward_invert_flags", "invert_transform_flags")]),
        (reg, by_h5, [("composite_transform", "transforms")]),
        (reg, back, [("reverse_transforms", "transforms"), ("reverse_invert_flags", "invert_transform_flags")]),
        (reg, outputnode, [("warped_image", "warped"), ("inverse_warped_image", "inverse_warped")]),
        (by_list, outputnode, [("output_image", "by_list")]),
        (by_h5, outputnode, [("output_image", "by_h5")]),
        (back, outputnode, [("output_image", "back")]),
    ])
    downstream_before = sorted((v.name, str(d["connect"])) for _, v, d in wf._graph.out_edges(reg, data=True))

    # the swap: same node name, every edge re-made with the same field names
    new = pe.Node(ifc.INRRegistration(preset=pair["preset"], device="cpu"), name="registration")
    in_edges = [(u, d["connect"]) for u, _, d in wf._graph.in_edges(reg, data=True)]
    out_edges = [(v, d["connect"]) for _, v, d in wf._graph.out_edges(reg, data=True)]
    wf.remove_nodes([reg])
    wf.connect([(u, new, conns) for u, conns in in_edges] + [(new, v, conns) for v, conns in out_edges])
    assert sorted((v.name, str(d["connect"])) for _, v, d in wf._graph.out_edges(new, data=True)) == downstream_before

    graph = wf.run(plugin="Linear")
    nodes = {n.name: n for n in graph.nodes()}
    warped = nib.load(nodes["registration"].result.outputs.warped_image).get_fdata()
    fixed = nib.load(pair["fixed"]).get_fdata()
    inside = fixed > 0.1 * fixed.max()
    for name in ("apply_list", "apply_h5"):
        ours = nib.load(nodes[name].result.outputs.output_image).get_fdata()
        assert ncc(ours, warped, inside) > 0.995, name  # ANTs' transform order, as ANTs' outputs would be used
    labels_back = nib.load(nodes["labels_to_moving"].result.outputs.output_image)
    moving_labels = nib.load(pair["moving_labels"]).get_fdata()
    assert labels_back.shape == moving_labels.shape
    assert set(np.unique(labels_back.get_fdata())) <= {0, 1, 2}
    brain = moving_labels > 0
    assert np.mean(labels_back.get_fdata()[brain] == moving_labels[brain]) > 0.6


def test_inr_registration_methods_and_gpu_fallback(pair, tmp_path):
    reg = ifc.INRRegistration(fixed_image=[pair["fixed"]], moving_image=pair["moving"], preset=pair["preset"],
                              method="relu", use_gpu=True, random_seed=3)
    out = run_node(reg, tmp_path, "relu_gpu_flagged")
    meta = json.loads(Path(out.metadata).read_text())
    assert meta["settings"]["network"]["activation"] == "relu"
    import torch

    if not torch.cuda.is_available():  # flagged for a GPU slot, ran on the CPU without raising
        assert out.device == "cpu" and "no CUDA" in meta["nipype_note"]
    from inrreg_pipeline.interfaces.registration import inr_settings

    with pytest.raises(ValueError, match=r"^method: 'two-network' needs a preset"):
        inr_settings("two-network", pair["preset"])


@pytest.mark.parametrize("setup, pattern", [
    (lambda p: dict(fixed_image=p["fixed"], moving_image=p["moving"], preset="no-such-preset"), r"^preset: unknown preset"),
    (lambda p: dict(fixed_image=[p["fixed"], p["fixed"]], moving_image=p["moving"]), r"^fixed_image: takes one image"),
    (lambda p: dict(fixed_image=p["fixed"], moving_image=p["moving"], fixed_image_mask="SMALL", preset=p["preset"]),
     r"^fixed_image_mask: fixed mask .* not on the grid"),
    (lambda p: dict(fixed_image=p["fixed"], moving_image=p["moving"], preset=p["preset"], device="cuda:7"
                    if not __import__("torch").cuda.is_available() else "bogus"), r"^device: "),
    (lambda p: dict(fixed_image=p["fixed"], moving_image=p["moving"], preset=p["preset"],
                    output_transform_prefix="../escape_"), r"^output name: .* plain file name"),
])
def test_inr_registration_rejects_bad_inputs_in_one_line(pair, tmp_path, setup, pattern):
    kwargs = setup(pair)
    if kwargs.get("fixed_image_mask") == "SMALL":  # a mask on another grid than the fixed image
        mask = nib.load(pair["fixed_mask"])
        small = nib.Nifti1Image(np.asanyarray(mask.dataobj)[:-2], mask.affine)
        nib.save(small, tmp_path / "small_mask.nii.gz")
        kwargs["fixed_image_mask"] = str(tmp_path / "small_mask.nii.gz")
    reg = ifc.INRRegistration(**kwargs)
    with pytest.raises(ValueError) as err:
        reg.run(cwd=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message.strip(), message
    import re

    assert re.search(pattern, message), message
    assert not [p for p in Path(tmp_path).parent.iterdir() if p.name.startswith("escape")]


def test_spec_refuses_missing_and_nonexistent_files(tmp_path):
    with pytest.raises(Exception, match="does not exist|exist|not found"):
        ifc.INRRegistration(fixed_image=str(tmp_path / "nope.nii.gz"))
    with pytest.raises(ValueError, match="requires a value for input 'moving_image'"):
        ifc.INRRegistration(fixed_image=__file__).run(cwd=str(tmp_path))
    with pytest.raises(ValueError, match="requires a value for input 'reference_image'"):
        ifc.ApplyTransforms(input_image=__file__, transforms=[__file__]).run(cwd=str(tmp_path))
    with pytest.raises(Exception):
        ifc.ANTsRegistration(preset="ants-nonsense")
    with pytest.raises(Exception):
        ifc.ANTsRegistration(scale_iterations=0.0)


def test_ants_registration_same_outputs(pair, tmp_path):
    ensure_run_ants()
    reg = ifc.ANTsRegistration(fixed_image=pair["fixed"], moving_image=pair["moving"], preset="ants-syn",
                               scale_iterations=0.02, num_threads=1)
    out = run_node(reg, tmp_path, "ants_registration")
    assert out.forward_invert_flags == [False, False] and out.reverse_invert_flags == [True, False]
    for field in ("forward_transforms", "reverse_forward_transforms", "reverse_transforms"):
        assert all(Path(p).is_file() and Path(p).parent.name == "ants_registration" for p in getattr(out, field))
    assert str(out.reverse_forward_transforms[0]).endswith("1Warp.nii.gz")
    assert str(out.reverse_transforms[1]).endswith("1InverseWarp.nii.gz")
    for field in ("composite_transform", "inverse_composite_transform", "warped_image", "inverse_warped_image",
                  "jacobian", "metadata"):
        assert Path(getattr(out, field)).is_file(), field
    fixed = nib.load(pair["fixed"])
    assert nib.load(out.warped_image).shape == fixed.shape
    meta = json.loads(Path(out.metadata).read_text())
    assert meta["method"] == "ants" and meta["preset"] == "ants-syn" and out.elapsed_time > 0


# ---------------------------------------------------------------------------------------------
# application
# ---------------------------------------------------------------------------------------------
def test_apply_transforms_agrees_with_ants(pair, inr_outputs, tmp_path):
    ants = pytest.importorskip("ants")
    out = inr_outputs
    img = run_node(ifc.ApplyTransforms(input_image=pair["moving"], reference_image=pair["fixed"],
                                       transforms=out.reverse_forward_transforms,
                                       invert_transform_flags=out.reverse_forward_invert_flags), tmp_path, "img")
    lab = run_node(ifc.ApplyTransforms(input_image=pair["moving_labels"], reference_image=pair["fixed"],
                                       transforms=[out.composite_transform], interpolation="GenericLabel"),
                   tmp_path, "lab")
    inv = run_node(ifc.ApplyTransforms(input_image=pair["fixed"], reference_image=pair["moving"],
                                       transforms=out.reverse_transforms,
                                       invert_transform_flags=out.reverse_invert_flags), tmp_path, "inv")
    f, m = ants.image_read(pair["fixed"]), ants.image_read(pair["moving"])
    ml = ants.image_read(pair["moving_labels"])
    a_img = ants.apply_transforms(f, m, list(out.reverse_forward_transforms), interpolator="linear",
                                  whichtoinvert=[False, False]).numpy()
    a_lab = ants.apply_transforms(f, ml, list(out.reverse_forward_transforms), interpolator="genericLabel",
                                  whichtoinvert=[False, False]).numpy()
    a_inv = ants.apply_transforms(m, f, list(out.reverse_transforms), interpolator="linear",
                                  whichtoinvert=[True, False]).numpy()
    fixed = nib.load(pair["fixed"]).get_fdata()
    moving = nib.load(pair["moving"]).get_fdata()
    ours = nib.load(img.output_image).get_fdata()
    assert ncc(ours, a_img, fixed > 0.1 * fixed.max()) > 0.999
    assert ncc(nib.load(inv.output_image).get_fdata(), a_inv, moving > 0.1 * moving.max()) > 0.999
    labels = np.asanyarray(nib.load(lab.output_image).dataobj)
    assert np.issubdtype(labels.dtype, np.integer) and set(np.unique(labels)) <= {0, 1, 2}
    assert np.mean(labels == np.rint(a_lab)) > 0.97
    with pytest.raises(ValueError, match=r"^invert_transform_flags: has 1 flag\(s\) for 2 transform\(s\)$"):
        ifc.ApplyTransforms(input_image=pair["moving"], reference_image=pair["fixed"],
                            transforms=out.reverse_forward_transforms, invert_transform_flags=[True]
                            ).run(cwd=str(tmp_path))
    with pytest.raises(ValueError, match=r"^transforms: cannot invert"):
        ifc.ApplyTransforms(input_image=pair["moving"], reference_image=pair["fixed"],
                            transforms=out.reverse_forward_transforms, invert_transform_flags=[True, False]
                            ).run(cwd=str(tmp_path))


# ---------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------
def _lps_copy(path, tmp_path) -> str:
    """The same image stored with flipped first two axes (LPS): another grid, same world geometry."""
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)[::-1, ::-1, :].copy()
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:3, 3] = [img.shape[0] - 1, img.shape[1] - 1, 0]
    lps = nib.Nifti1Image(data, img.affine @ flip)
    path = str(tmp_path / Path(path).name.replace(".nii.gz", "_lps.nii.gz"))
    nib.save(lps, path)
    return path


def test_reorient_keeps_world_geometry(pair, tmp_path):
    lps = _lps_copy(pair["moving"], tmp_path)
    assert nib.aff2axcodes(nib.load(lps).affine) == ("L", "P", "S")
    out = run_node(ifc.Reorient(in_file=lps), tmp_path, "reorient")
    img = nib.load(out.out_file)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S") and out.in_orientation == "LPS"
    orig = nib.load(pair["moving"])
    assert np.allclose(img.affine, orig.affine, atol=1e-4)  # back on the original RAS grid
    assert np.allclose(img.get_fdata(), orig.get_fdata())
    with pytest.raises(ValueError, match=r"^orientation: 'RRS' is not 3 axis codes"):
        ifc.Reorient(in_file=lps, orientation="RRS").run(cwd=str(tmp_path))


def test_preprocessing_2d_slice_from_shared_data(tmp_path):
    """A 2-D OASIS slice of ../shared/data (128 x 128, identity affine) through the preprocessing steps."""
    path = SHARED / "oasis-2d" / "oasis2d_0055.nii.gz"
    if not path.is_file():
        pytest.skip("../shared/data/oasis-2d not present")
    lps = run_node(ifc.Reorient(in_file=str(path), orientation="LPS"), tmp_path, "lps")
    img, orig = nib.load(lps.out_file), nib.load(path)
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S") and img.shape == (128, 128, 1)
    world = img.affine @ [10, 20, 0, 1]  # the same world point holds the same value
    back = np.linalg.solve(orig.affine, world).round().astype(int)
    assert img.get_fdata()[10, 20, 0] == orig.get_fdata()[back[0], back[1]]
    n4 = run_node(ifc.N4BiasFieldCorrection(in_file=lps.out_file, n_iterations=[10], backend="simpleitk"),
                  tmp_path, "n4")
    res = run_node(ifc.Resample(in_file=n4.out_file, resolution=[2.0]), tmp_path, "res")
    assert nib.load(res.out_file).shape[:2] == (64, 64)


@pytest.mark.parametrize("backend", ["antspyx", "simpleitk"])
def test_n4_removes_a_smooth_bias(pair, tmp_path, backend):
    if backend == "antspyx":
        pytest.importorskip("ants")
    img = nib.load(pair["fixed"])
    data = img.get_fdata()
    ijk = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in data.shape], indexing="ij"), -1)
    bias = np.exp(0.3 * ijk[..., 0] + 0.2 * ijk[..., 2])
    nib.save(nib.Nifti1Image((data * bias).astype(np.float32), img.affine), tmp_path / "biased.nii.gz")
    out = run_node(ifc.N4BiasFieldCorrection(in_file=str(tmp_path / "biased.nii.gz"), mask_file=pair["fixed_mask"],
                                             backend=backend, n_iterations=[50, 50, 50], shrink_factor=2),
                   tmp_path, f"n4_{backend}")
    assert out.backend == backend
    corrected = nib.load(out.out_file)
    assert np.allclose(corrected.affine, img.affine)
    mask = nib.load(pair["fixed_mask"]).get_fdata() > 0
    est = nib.load(out.bias_image).get_fdata()[mask]
    # the estimated field follows the applied one (up to a constant factor)
    assert np.corrcoef(np.log(est), np.log(bias[mask]))[0, 1] > 0.9


def test_mask_normalise_resample(pair, tmp_path):
    masked = run_node(ifc.ApplyMask(in_file=pair["fixed"], in_mask=pair["fixed_mask"]), tmp_path, "mask")
    data = nib.load(masked.out_file).get_fdata()
    assert np.all(data[nib.load(pair["fixed_mask"]).get_fdata() == 0] == 0)
    norm = run_node(ifc.NormalizeIntensity(in_file=masked.out_file, in_mask=pair["fixed_mask"]), tmp_path, "norm")
    ndata = nib.load(norm.out_file).get_fdata()
    assert ndata.min() == 0.0 and ndata.max() == pytest.approx(1.0)
    res = run_node(ifc.Resample(in_file=norm.out_file, resolution=[9.0]), tmp_path, "res")
    rimg, fimg = nib.load(res.out_file), nib.load(pair["fixed"])
    assert np.allclose(np.linalg.norm(rimg.affine[:3, :3], axis=0), 9.0)
    # same field of view: the outer faces of the grids agree to within one new voxel
    def extent(img):
        corners = np.array([[-0.5] * 3, [n - 0.5 for n in img.shape[:3]]])
        return corners @ img.affine[:3, :3].T + img.affine[:3, 3]
    assert np.allclose(extent(rimg), extent(fimg), atol=9.0)
    lab = run_node(ifc.Resample(in_file=pair["fixed_labels"], reference_image=res.out_file, interpolation="label"),
                   tmp_path, "res_lab")
    labels = np.asanyarray(nib.load(lab.out_file).dataobj)
    assert labels.shape == rimg.shape and set(np.unique(labels)) <= {0, 1, 2}
    with pytest.raises(ValueError, match=r"^in_mask: .* is not on the grid of in_file"):
        ifc.ApplyMask(in_file=res.out_file, in_mask=pair["fixed_mask"]).run(cwd=str(tmp_path))
    with pytest.raises(ValueError, match=r"^lower_percentile: "):
        ifc.NormalizeIntensity(in_file=pair["fixed"], lower_percentile=99.0, upper_percentile=1.0
                               ).run(cwd=str(tmp_path))
    with pytest.raises(Exception):  # xor in the spec
        ifc.Resample(in_file=pair["fixed"], resolution=[4.0], reference_image=pair["fixed"])


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def test_label_overlap_improves_with_registration(pair, inr_outputs, tmp_path):
    warped = run_node(ifc.ApplyTransforms(input_image=pair["moving_labels"], reference_image=pair["fixed"],
                                          transforms=inr_outputs.reverse_forward_transforms,
                                          interpolation="GenericLabel"), tmp_path, "warp_labels")
    before = run_node(ifc.LabelOverlap(reference=pair["fixed_labels"], test=pair["moving_labels"],
                                       tags={"method": "none"}), tmp_path, "overlap_before")
    after = run_node(ifc.LabelOverlap(reference=pair["fixed_labels"], test=warped.output_image,
                                      tags={"method": "inr"}), tmp_path, "overlap_after")
    assert after.mean_dice > before.mean_dice
    rows = read_tsv(after.out_labels)
    assert [r["label"] for r in rows] == ["1", "2"] and all(r["method"] == "inr" for r in rows)
    assert {"dice", "jaccard", "hd95_mm", "assd_mm"} <= set(rows[0])
    summary = read_tsv(after.out_summary)
    assert len(summary) == 1 and float(summary[0]["mean_dice"]) == pytest.approx(after.mean_dice)
    with pytest.raises(ValueError, match=r"^test: .* not on the grid of the reference"):
        ifc.LabelOverlap(reference=pair["fixed_labels"], test=_lps_copy(pair["fixed_labels"], tmp_path)
                         ).run(cwd=str(tmp_path))
    with pytest.raises(ValueError, match=r"^test: .* non-integer"):
        ifc.LabelOverlap(reference=pair["fixed_labels"], test=pair["fixed"]).run(cwd=str(tmp_path))


def test_transform_quality(pair, inr_outputs, tmp_path):
    out = run_node(ifc.TransformQuality(warp=inr_outputs.forward_transforms[1],
                                        inverse_warp=inr_outputs.reverse_transforms[1], mask=pair["fixed_mask"],
                                        metadata=inr_outputs.metadata, tags={"method": "inr"}), tmp_path, "quality")
    row = read_tsv(out.out_tsv)[0]
    assert row["method"] == "inr" and float(row["runtime_s"]) > 0
    assert 0.0 <= out.folding_percent <= 100.0 and out.log_jacobian_std >= 0
    assert 0.0 <= out.inverse_consistency_mm < 2.0
    # det J recomputed from the warp file agrees with the one inrreg wrote (same finite differences) away from the edges
    ours = nib.load(out.jacobian).get_fdata()[2:-2, 2:-2, 2:-2]
    theirs = nib.load(inr_outputs.jacobian).get_fdata()[2:-2, 2:-2, 2:-2]
    assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.9
    with pytest.raises(ValueError, match=r"^warp: .*not an ITK displacement field"):
        ifc.TransformQuality(warp=pair["fixed"]).run(cwd=str(tmp_path))


def test_landmark_error(pair, inr_outputs, tmp_path):
    out = run_node(ifc.LandmarkError(fixed_landmarks=pair["fixed_landmarks"], moving_landmarks=pair["moving_landmarks"],
                                     transforms=inr_outputs.reverse_forward_transforms, convention="ras",
                                     tags={"method": "inr"}), tmp_path, "tre")
    assert out.mean_tre_mm < out.initial_mean_tre_mm
    rows = read_tsv(out.out_points)
    assert len(rows) == 8 and rows[0]["method"] == "inr"
    # the composite file maps the points the same way as the list
    out_h5 = run_node(ifc.LandmarkError(fixed_landmarks=pair["fixed_landmarks"],
                                        moving_landmarks=pair["moving_landmarks"],
                                        transforms=[inr_outputs.composite_transform], convention="ras"),
                      tmp_path, "tre_h5")
    assert out_h5.mean_tre_mm == pytest.approx(out.mean_tre_mm, abs=1e-3)
    with pytest.raises(ValueError, match=r"^fixed_landmarks: .*RAS or LPS"):
        ifc.LandmarkError(fixed_landmarks=pair["fixed_landmarks"], moving_landmarks=pair["moving_landmarks"],
                          transforms=[inr_outputs.composite_transform]).run(cwd=str(tmp_path))


def test_landmark_error_on_brats_reg_files(tmp_path):
    """The BraTS-Reg landmark CSVs (LPS) of ../shared/data: identity transform gives the raw distances."""
    base = SHARED / "brats-reg-002" / "derivatives" / "landmarks" / "sub-002"
    fixed_csv = base / "ses-baseline" / "anat" / "sub-002_ses-baseline_landmarks.csv"
    moving_csv = base / "ses-followup" / "anat" / "sub-002_ses-followup_landmarks.csv"
    if not fixed_csv.is_file():
        pytest.skip("../shared/data/brats-reg-002 not present")
    from inrreg_pipeline.io.itk import write_itk_affine
    from inrreg_pipeline.metrics import read_landmarks

    write_itk_affine(tmp_path / "identity.mat", np.eye(4))
    out = run_node(ifc.LandmarkError(fixed_landmarks=str(fixed_csv), moving_landmarks=str(moving_csv),
                                     transforms=[str(tmp_path / "identity.mat")]), tmp_path, "tre")
    raw = np.linalg.norm(read_landmarks(fixed_csv) - read_landmarks(moving_csv), axis=1)
    assert out.mean_tre_mm == pytest.approx(raw.mean(), abs=1e-6)
    assert out.initial_mean_tre_mm == pytest.approx(raw.mean(), abs=1e-6)


def test_merge_tables(tmp_path):
    from inrreg_pipeline.metrics import write_rows_tsv

    write_rows_tsv([{"method": "inr", "dice": 0.8}, {"method": "ants", "dice": 0.7}], tmp_path / "a.tsv")
    write_rows_tsv([{"method": "ants", "folding_percent": 0.0}, {"method": "inr", "folding_percent": 0.1}],
                   tmp_path / "b.tsv")
    joined = run_node(ifc.MergeTables(in_files=[str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv")],
                                      join_on=["method"]), tmp_path, "join")
    rows = {r["method"]: r for r in read_tsv(joined.out_file)}
    assert rows["inr"]["dice"] == "0.8" and rows["inr"]["folding_percent"] == "0.1"
    stacked = run_node(ifc.MergeTables(in_files=[str(tmp_path / "a.tsv"), str(tmp_path / "b.tsv")]),
                       tmp_path, "stack")
    table = read_tsv(stacked.out_file)
    assert len(table) == 4 and table[2]["dice"] == "n/a"


# ---------------------------------------------------------------------------------------------
# reports
# ---------------------------------------------------------------------------------------------
def test_flicker_and_jacobian_reports(pair, inr_outputs, tmp_path):
    from xml.etree import ElementTree

    out = run_node(ifc.RegistrationFlicker(fixed_image=pair["fixed"], warped_image=inr_outputs.warped_image,
                                           contours=pair["fixed_labels"], n_cuts=3), tmp_path, "flicker")
    text = Path(out.out_report).read_text()
    root = ElementTree.fromstring(text.encode())  # one well-formed SVG document
    groups = [g.get("class") for g in root.iter("{http://www.w3.org/2000/svg}g") if g.get("class")]
    assert groups == ["background-svg", "foreground-svg"]
    assert "@keyframes flickerAnimation" in text and ".foreground-svg:hover" in text
    layers = [g for g in root if g.get("class")]
    assert all(len(list(g.iter("{http://www.w3.org/2000/svg}image"))) >= 9 for g in layers)  # 3 axes x 3 cuts
    ids = [e.get("id") for e in root.iter() if e.get("id")]
    assert len(ids) == len(set(ids))  # the two layers do not share element ids
    import re

    refs = set(re.findall(r'(?:url\(#|href="#)([^")]+)', text))
    assert refs and refs <= set(ids)  # clip paths etc. still point at their (renamed) targets
    tissue = run_node(ifc.RegistrationFlicker(fixed_image=pair["fixed"], warped_image=inr_outputs.warped_image,
                                              n_cuts=2), tmp_path, "flicker_tissue")
    assert "foreground-svg" in Path(tissue.out_report).read_text()
    jac = run_node(ifc.JacobianReport(jacobian=inr_outputs.jacobian, fixed_image=pair["fixed"],
                                      mask=pair["fixed_mask"]), tmp_path, "jacobian")
    ElementTree.parse(jac.out_report)
    with pytest.raises(ValueError, match=r"^warped_image: .* not on the fixed image's grid"):
        ifc.RegistrationFlicker(fixed_image=pair["fixed"], warped_image=_lps_copy(pair["fixed"], tmp_path)
                                ).run(cwd=str(tmp_path))


def test_nothing_is_written_outside_node_directories(pair, tmp_path):
    """Inputs' folder untouched after running every interface on them (outputs in node dirs only)."""
    folder = Path(pair["fixed"]).parent
    before = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    work = tmp_path / "work"
    run_node(ifc.Reorient(in_file=pair["fixed"]), work, "a")
    run_node(ifc.N4BiasFieldCorrection(in_file=pair["fixed"], n_iterations=[5]), work, "b")
    run_node(ifc.ForegroundMask(in_file=pair["fixed"]), work, "c")
    run_node(ifc.Resample(in_file=pair["fixed"], resolution=[8.0]), work, "d")
    run_node(ifc.LabelOverlap(reference=pair["fixed_labels"], test=pair["fixed_labels"]), work, "e")
    after = sorted((p.name, p.stat().st_mtime_ns) for p in folder.iterdir())
    assert before == after
    assert {p.name for p in work.iterdir()} == {"a", "b", "c", "d", "e"}


def test_interfaces_import_without_optional_modules():
    """Importing the interfaces loads none of the optional dependencies (the required ones, torch
    included, are imported at module level: no function-level imports, issue 15)."""
    import subprocess

    code = ("import sys, inrreg_pipeline.interfaces; "
            "print(sorted(m for m in ('ants', 'matplotlib', 'nilearn.plotting', 'picsl_greedy', 'fireants', "
            "'tinycudann', 'monai') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert res.stdout.strip() == "[]"
