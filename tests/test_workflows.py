"""The ``init_*_wf`` workflows end to end on small real images, with the Linear and MultiProc plugins.

Inputs: nilearn's MNI152 at 6 mm with a known deformation and GM/WM labels (see
``helpers.make_pair``), and the BraTS-Reg T1w/FLAIR of ``../shared/data`` (downsampled)
for the multi-modal workflow. Registrations run a handful of iterations (``QUICK_PRESET``; ANTs
with ``scale_iterations`` small). Without a GPU, GPU-flagged nodes run on the CPU under MultiProc
with ``multiproc_plugin_args`` (``n_gpu_procs`` >= 1).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("nipype")
pytest.importorskip("inrreg_pipeline.workflows")

from helpers import QUICK_PRESET, SHARED, ensure_run_ants, make_pair, mni_tissue, read_tsv  # noqa: E402

from inrreg_pipeline.core.space import SpatialImage, downsample  # noqa: E402
from inrreg_pipeline.io.images import save_image  # noqa: E402
from inrreg_pipeline.synthetic import deform, random_deformation  # noqa: E402
from inrreg_pipeline.workflows import (init_ants_registration_wf, init_inr_registration_wf,  # noqa: E402
                                       init_multimodal_coreg_wf, init_preproc_wf, init_registration_comparison_wf,
                                       multiproc_plugin_args)

PLUGINS = ["Linear", "MultiProc"]


def _warm_imports() -> None:
    """Import the heavy modules the nodes use once here: MultiProc forks its workers from this
    process, so they start with them loaded instead of importing them again for every run."""
    import importlib

    for name in ("torch", "ants", "SimpleITK", "matplotlib.pyplot", "nilearn.plotting"):
        try:
            importlib.import_module(name)
        except ImportError:
            pass


_warm_imports()
ANTS_SCALE = 0.02


def run(workflow, base_dir: Path, plugin: str):
    """Run with ``plugin`` (crash files and node folders under ``base_dir``); return the values the
    ``outputnode`` received (identity nodes are dropped from the executed graph, so a Function
    node is attached to it to collect them)."""
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    outputnode = workflow.get_node("outputnode")
    fields = sorted({dst for _, _, data in workflow._graph.in_edges(outputnode, data=True)
                     for _, dst in data["connect"]})
    source = (f"def collect({', '.join(f + '=None' for f in fields)}):\n"
              f"    return {', '.join(fields)}{',' if len(fields) == 1 else ''}\n")
    collect = pe.Node(niu.Function(input_names=fields, output_names=fields, function=source), name="collect_outputs")
    workflow.connect([(outputnode, collect, [(f, f) for f in fields])])
    workflow.base_dir = str(base_dir)
    workflow.config["execution"].update({"crashdump_dir": str(base_dir), "poll_sleep_duration": 0.1,
                                         "stop_on_first_crash": True, "remove_unnecessary_outputs": False,
                                         "create_report": False})
    args = multiproc_plugin_args(n_procs=2, memory_gb=4) if plugin == "MultiProc" else {}
    graph = workflow.run(plugin=plugin, plugin_args=args)
    node = next(n for n in graph.nodes() if n.name == "collect_outputs")
    return node.result.outputs


def same_grid(a: str, b: str) -> bool:
    ia, ib = nib.load(a), nib.load(b)
    return ia.shape[:3] == ib.shape[:3] and np.allclose(ia.affine, ib.affine, atol=1e-4)


def svg_layers(path: str) -> list[str]:
    root = ElementTree.parse(path).getroot()
    return [g.get("class") for g in root if g.get("class")]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return make_pair(tmp_path_factory.mktemp("wfdata") / "inputs")


@pytest.fixture(scope="module")
def lps_inputs(pair, tmp_path_factory):
    """The fixed image and mask stored LPS (flipped axes), as scanners often write them."""
    folder = tmp_path_factory.mktemp("lps")
    out = {}
    for key in ("fixed", "fixed_mask"):
        img = nib.load(pair[key])
        flip = np.diag([-1.0, -1.0, 1.0, 1.0])
        flip[:3, 3] = [img.shape[0] - 1, img.shape[1] - 1, 0]
        path = folder / f"{key}_lps.nii.gz"
        nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj)[::-1, ::-1].copy(), img.affine @ flip), path)
        out[key] = str(path)
    return out


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("plugin", PLUGINS)
def test_preproc_wf(pair, lps_inputs, tmp_path, plugin):
    wf = init_preproc_wf(use_mask=True, resolution=9.0, sloppy=True, name="preproc_wf")
    wf.inputs.inputnode.in_file = lps_inputs["fixed"]
    wf.inputs.inputnode.in_mask = lps_inputs["fixed_mask"]
    out = run(wf, tmp_path, plugin)
    img = nib.load(out.out_file)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert np.allclose(np.linalg.norm(img.affine[:3, :3], axis=0), 9.0)
    assert same_grid(out.out_mask, out.out_file)
    data = img.get_fdata()
    assert data.min() >= 0.0 and data.max() <= 1.0
    outside = nib.load(out.out_mask).get_fdata() == 0
    assert np.percentile(data[outside], 95) < 0.05 < np.median(data[~outside])  # masked (up to interpolation)
    # reorientation kept the world: the reoriented image is the RAS original
    assert same_grid(out.reoriented, pair["fixed"])
    assert np.allclose(nib.load(out.reoriented).get_fdata(), nib.load(pair["fixed"]).get_fdata())
    assert Path(out.bias_image).is_file()
    assert "N4 [@n4]" in wf.visit_desc() and "9 mm" in wf.visit_desc()


# ---------------------------------------------------------------------------------------------
def _check_registration_outputs(out, pair, label: str):
    for field in ("composite_transform", "inverse_composite_transform", "warped_image", "inverse_warped_image",
                  "jacobian", "metadata", "quality_tsv"):
        assert Path(getattr(out, field)).is_file(), field
    assert out.forward_invert_flags == [False, False] and out.reverse_invert_flags == [True, False]
    assert same_grid(out.moving_in_fixed, pair["fixed"])  # the moving image, on the fixed image's grid
    assert same_grid(out.warped_image, out.fixed_preproc)
    labels = out.labels_in_fixed[0] if isinstance(out.labels_in_fixed, list) else out.labels_in_fixed
    assert same_grid(labels, pair["fixed"])
    values = np.asanyarray(nib.load(labels).dataobj)
    assert np.issubdtype(values.dtype, np.integer) and set(np.unique(values)) <= {0, 1, 2}
    assert svg_layers(out.out_report) == ["background-svg", "foreground-svg"]
    ElementTree.parse(out.jacobian_report)
    row = read_tsv(out.quality_tsv)[0]
    assert row["method"] == label and float(row["folding_percent"]) >= 0 and float(row["runtime_s"]) > 0


@pytest.mark.parametrize("plugin", PLUGINS)
def test_inr_registration_wf(pair, tmp_path, plugin):
    wf = init_inr_registration_wf(preset=pair["preset"], device="cpu", use_masks=True, label_maps=True,
                                  fixed_labels=True, sloppy=True, name="inr_wf")
    for field, key in (("fixed_image", "fixed"), ("moving_image", "moving"), ("fixed_mask", "fixed_mask"),
                       ("moving_mask", "moving_mask"), ("fixed_labels", "fixed_labels")):
        setattr(wf.inputs.inputnode, field, pair[key])
    wf.inputs.inputnode.moving_labels = [pair["moving_labels"]]
    out = run(wf, tmp_path, plugin)
    _check_registration_outputs(out, pair, "inr")
    meta = json.loads(Path(out.metadata).read_text())
    assert meta["device"] == "cpu" and meta["settings"]["optimisation"]["iterations"] == 20
    desc = wf.visit_desc()
    assert "*inrreg*" in desc and "PyTorch" in desc and "random seed 0" in desc and "20 adam" in desc.lower()


def test_svf_boilerplate_states_the_levels_control_grids_and_fade_in_the_preset_runs(tmp_path):
    """The citation text of ``svf`` says what ran: its three levels, the control grid of each, its LNCC
    window(s), every regularisation term with its weight and the hash levels' fade-in, read from the
    preset (a user's two-level preset is described as two levels)."""
    desc = init_inr_registration_wf(preset="svf", name="svf_wf").visit_desc()
    assert "resampled to 8, 4, 2 mm voxels (100, 150, 450 steps)" in desc
    assert "control grids of 8, 4, 4 mm at the successive levels" in desc
    assert "fading in over the first 250 steps" in desc
    assert "NCC+LNCC dissimilarity (LNCC window 18 mm, an odd number of voxels at each level) plus 2" in desc
    # every regularisation term the preset optimises is named with its weight
    assert ("plus 2 times the mean squared log Jacobian determinant of the transform, 0.003 times the diffusion "
            "energy of the velocity") in desc
    assert "100 times a penalty on every control cell that keeps less than 0.1 of its volume." in desc
    volume_only = tmp_path / "volume_only.json"
    volume_only.write_text('{"base": "svf", "svf": {"diffusion_alpha": 0, "folding_alpha": 0}}')
    desc = init_inr_registration_wf(preset=str(volume_only), name="volume_only_wf").visit_desc()
    assert "plus 2 times the mean squared log Jacobian determinant of the transform. " in desc
    assert "diffusion" not in desc and "control cell" not in desc
    windows = tmp_path / "windows.json"
    windows.write_text('{"base": "svf", "svf": {"level_lncc_window_mm": [72, 36, 18]}}')
    desc = init_inr_registration_wf(preset=str(windows), name="windows_wf").visit_desc()
    assert "(LNCC windows of 72, 36, 18 mm at the successive levels, each an odd number of voxels)" in desc
    assert "MIND" not in desc and "ReLU units without biases on" in desc  # the shipped svf's MLP (session 18)
    assert "hash levels kept the values" not in desc
    held = tmp_path / "held.json"
    held.write_text('{"base": "svf", "svf": {"level_frozen_hash_levels": [0, 0, 4]}}')
    desc = init_inr_registration_wf(preset=str(held), name="held_wf").visit_desc()
    assert ("of its volume. At the successive levels the coarsest 0, 0, 4 hash levels kept the values the "
            "earlier levels had given them") in desc
    structural = tmp_path / "structural.json"
    structural.write_text('{"base": "svf", "svf": {"level_mind_alpha": [5, 5, 0], "hash": {"hidden_bias": true}}}')
    desc = init_inr_registration_wf(preset=str(structural), name="structural_wf").visit_desc()
    assert ("(LNCC window 18 mm, an odd number of voxels at each level), 5, 5, 0 times (at the successive levels) "
            "the mean squared difference of MIND-SSC self-similarity descriptors [@mind] (neighbours 4 mm apart) "
            "plus 2 times") in desc
    assert "ReLU units on" in desc
    two = tmp_path / "two.json"
    two.write_text('{"base": "svf", "svf": {"level_spacing_mm": [4, 2], "iterations": [150, 450], '
                   '"level_control_spacing_mm": null, "hash": {"coarse_to_fine_steps": 0}}}')
    desc = init_inr_registration_wf(preset=str(two), name="two_wf").visit_desc()
    assert "resampled to 4, 2 mm voxels (150, 450 steps)" in desc and "on a 4 mm control grid" in desc
    assert "fading in" not in desc


@pytest.mark.parametrize("plugin", PLUGINS)
def test_ants_registration_wf(pair, tmp_path, plugin):
    ensure_run_ants()
    wf = init_ants_registration_wf(preset="ants-syn", scale_iterations=ANTS_SCALE, label_maps=True, sloppy=True,
                                   name="ants_wf")
    wf.inputs.inputnode.fixed_image = pair["fixed"]
    wf.inputs.inputnode.moving_image = pair["moving"]
    wf.inputs.inputnode.moving_labels = pair["moving_labels"]  # one file: the MapNode takes it as a list
    out = run(wf, tmp_path, plugin)
    _check_registration_outputs(out, pair, "ants")
    assert "antsRegistration" in wf.visit_desc() and "scaled by 0.02" in wf.visit_desc()


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("plugin", PLUGINS)
def test_registration_comparison_wf(pair, tmp_path, plugin):
    ensure_run_ants()
    # the INR node is flagged for a GPU slot: without a GPU it must still run (on the CPU)
    wf = init_registration_comparison_wf(has_labels=True, has_landmarks=True, preset=pair["preset"], use_gpu=True,
                                         ants_preset="ants-syn", scale_iterations=ANTS_SCALE,
                                         landmark_convention="ras", sloppy=True, name="compare_wf")
    inr_node = wf.get_node("inr_registration_wf").get_node("inr_registration")
    assert inr_node.is_gpu_node() and inr_node.n_procs == 1
    for field, key in (("fixed_image", "fixed"), ("moving_image", "moving"), ("fixed_labels", "fixed_labels"),
                       ("moving_labels", "moving_labels"), ("fixed_landmarks", "fixed_landmarks"),
                       ("moving_landmarks", "moving_landmarks")):
        setattr(wf.inputs.inputnode, field, pair[key])
    out = run(wf, tmp_path, plugin)
    rows = read_tsv(out.comparison_tsv)
    assert sorted(r["method"] for r in rows) == ["ants", "inr"]
    for row in rows:
        for column in ("mean_dice", "mean_hd95_mm", "tre_mean_mm", "tre_initial_mean_mm", "folding_percent",
                       "log_jacobian_std", "inverse_consistency_mm", "runtime_s"):
            assert row[column] not in ("", "n/a"), (row["method"], column)
        assert 0.0 < float(row["mean_dice"]) <= 1.0
    per_label = read_tsv(out.labels_tsv)
    assert sorted((r["method"], r["label"]) for r in per_label) == [("ants", "1"), ("ants", "2"),
                                                                     ("inr", "1"), ("inr", "2")]
    assert len(read_tsv(out.landmarks_tsv)) == 16
    root = ElementTree.parse(out.comparison_figure).getroot()
    assert root.tag.endswith("svg")
    for key in ("inr", "ants"):
        assert svg_layers(getattr(out, f"{key}_report")) == ["background-svg", "foreground-svg"]
        assert same_grid(getattr(out, f"{key}_labels_in_fixed"), pair["fixed"])
        assert same_grid(getattr(out, f"{key}_moving_in_fixed"), pair["fixed"])
    desc = wf.visit_desc()
    assert "*inrreg*" in desc and "antsRegistration" in desc and "Dice" in desc
    assert desc.count("Each image was reoriented") == 1  # shared steps described once


# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def multimodal_pair(tmp_path_factory):
    """BraTS-Reg baseline T1w and FLAIR (same grid, aligned), 4 mm, FLAIR under a known deformation.

    Falls back to nilearn's MNI152 with inverted intensities as the second contrast when
    ``../shared/data`` is absent."""
    folder = tmp_path_factory.mktemp("multimodal")
    anat = SHARED / "brats-reg-002" / "sub-002" / "ses-baseline" / "anat"
    if (anat / "sub-002_ses-baseline_T1w.nii.gz").is_file():
        images = {}
        for suffix in ("T1w", "FLAIR"):
            img = nib.load(anat / f"sub-002_ses-baseline_{suffix}.nii.gz")
            images[suffix] = downsample(SpatialImage(np.asarray(img.get_fdata(), np.float32), img.affine), 4)
        source = "brats"
    else:
        t1 = downsample(mni_tissue("t1"), 3)
        images = {"T1w": t1, "FLAIR": t1.with_data(np.where(t1.data > 0.05, 1.2 - t1.data, 0).astype(np.float32))}
        source = "nilearn"
    psi = random_deformation(images["T1w"], amplitude_mm=3.0, seed=5)
    flair = deform(images["FLAIR"], psi)
    paths = {"t1w": str(folder / "T1w.nii.gz"), "flair": str(folder / "FLAIR.nii.gz"), "source": source}
    save_image(images["T1w"].data, images["T1w"].affine, paths["t1w"])
    save_image(flair.data, flair.affine, paths["flair"])
    preset = json.loads(json.dumps(QUICK_PRESET))
    preset["affine"]["similarity"] = "mi"
    preset["loss"] = {"similarity": "mi", "regulariser": "jacobian", "alpha": 0.1}
    paths["preset"] = str(folder / "quick_multimodal.json")
    Path(paths["preset"]).write_text(json.dumps(preset))
    return paths


@pytest.mark.parametrize("plugin", PLUGINS)
def test_multimodal_coreg_wf(multimodal_pair, tmp_path, plugin):
    from inrreg_pipeline.workflows import default_multimodal_preset

    assert default_multimodal_preset() == "coreg-rigid-multimodal"
    wf = init_multimodal_coreg_wf(contrast="FLAIR", preset=multimodal_pair["preset"], device="cpu", sloppy=True,
                                  name="flair_to_t1w_wf")
    wf.inputs.inputnode.t1w = multimodal_pair["t1w"]
    wf.inputs.inputnode.source_file = multimodal_pair["flair"]
    out = run(wf, tmp_path, plugin)
    assert same_grid(out.source_in_t1w, multimodal_pair["t1w"])
    assert Path(out.composite_transform).is_file() and Path(out.inverse_composite_transform).is_file()
    assert svg_layers(out.out_report) == ["background-svg", "foreground-svg"]
    meta = json.loads(Path(out.metadata).read_text())
    assert meta["settings"]["loss"]["similarity"] == "mi"
    assert read_tsv(out.quality_tsv)[0]["method"] == "FLAIR-to-T1w"
    assert "FLAIR image was co-registered to the T1w image" in wf.visit_desc()


# ---------------------------------------------------------------------------------------------
def test_factories_refuse_bad_parameters_at_build_time(pair):
    with pytest.raises(ValueError, match=r"^preset: unknown preset 'nope'"):
        init_inr_registration_wf(preset="nope")
    with pytest.raises(ValueError, match=r"^method: 'two-network' needs a preset"):
        init_inr_registration_wf(method="two-network", preset=pair["preset"])
    with pytest.raises(ValueError, match=r"^preset: unknown ANTs preset"):
        init_ants_registration_wf(preset="ants-nope")
    with pytest.raises(ValueError, match=r"^contrast: "):
        init_multimodal_coreg_wf(contrast="T2 w")
    with pytest.raises(ValueError, match=r"^has_labels: "):
        init_registration_comparison_wf(has_labels=False, has_landmarks=False, preset=pair["preset"])


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="documents the behaviour without a GPU")
def test_multiproc_without_gpu_slots_refuses_gpu_nodes(pair, tmp_path):
    """What nipype 1.11 does with a GPU-flagged node and no ``n_gpu_procs`` on a machine with no
    GPU: its pre-run check raises before anything runs; ``multiproc_plugin_args`` avoids that."""
    wf = init_inr_registration_wf(preset=pair["preset"], use_gpu=True, name="gpu_wf")
    wf.inputs.inputnode.fixed_image = pair["fixed"]
    wf.inputs.inputnode.moving_image = pair["moving"]
    wf.base_dir = str(tmp_path)
    wf.config["execution"]["crashdump_dir"] = str(tmp_path)
    with pytest.raises(RuntimeError, match="Insufficient GPU resources"):
        wf.run(plugin="MultiProc", plugin_args={"n_procs": 2})
    assert multiproc_plugin_args(n_procs=2)["n_gpu_procs"] == 1


_SCRIPT = """\
import sys
from inrreg_pipeline.workflows import init_preproc_wf, multiproc_plugin_args
wf = init_preproc_wf(n4=False, resolution=8.0, name="preproc_wf")
wf.inputs.inputnode.in_file = sys.argv[1]
wf.base_dir = sys.argv[2]
wf.run(plugin="MultiProc", plugin_args=multiproc_plugin_args(n_procs=2))
print("finished")
"""


def _run_script(tmp_path: Path, how: str):
    """Run :data:`_SCRIPT` (the preprocessing workflow under MultiProc, with its fork server) from
    standard input, as a file without a ``__main__`` guard, or with one; a hang fails after 180 s."""
    import os
    import subprocess
    import sys
    import textwrap

    image = tmp_path / "image.nii.gz"
    data = np.zeros((16, 16, 16), np.float32)
    data[4:12, 4:12, 4:12] = 1.0
    save_image(data + np.random.default_rng(0).random(data.shape, np.float32) * 0.1, np.diag([4.0, 4, 4, 1]), image)
    work = tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    if how == "stdin":
        argv, stdin = [sys.executable, "-", str(image), str(work)], _SCRIPT
    else:
        script = tmp_path / "script.py"
        body = _SCRIPT if how == "unguarded" else (
            "def main():\n" + textwrap.indent(_SCRIPT, "    ") + "\n\nif __name__ == '__main__':\n    main()\n")
        script.write_text(body)
        argv, stdin = [sys.executable, str(script), str(image), str(work)], None
    try:
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, timeout=180,
                              cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail(f"MultiProc from a script ({how}) hung")
    resampled = list(work.glob("preproc_wf/resample/*.nii.gz"))
    return proc, resampled


@pytest.mark.parametrize("how", ["stdin", "unguarded"])
def test_multiproc_from_a_main_script_its_workers_cannot_import_falls_back_to_linear(tmp_path, how):
    """Issue 16, defect 10: fork-server workers import the main script again; from standard input
    they cannot, and an unguarded script starts the workflow again in each of them. Either hung
    with no message. Now: one warning line naming the fix, the graph run by Linear, exit 0."""
    proc, resampled = _run_script(tmp_path, how)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-1] == "finished"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("inrreg: MultiProc workers import the main script"), lines
    assert "if __name__ == \"__main__\":" in lines[0] and "Linear plugin instead" in lines[0]
    assert ("standard input" in lines[0]) == (how == "stdin")
    assert "[MultiProc]" not in proc.stdout and resampled


def test_multiproc_from_a_guarded_script_runs_multiproc(tmp_path):
    """The fallback is only for those two: a script with the guard runs MultiProc, with no warning."""
    proc, resampled = _run_script(tmp_path, "guarded")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "" and "[MultiProc]" in proc.stdout and resampled


def test_main_guard_detection(tmp_path):
    """``_under_main_guard`` reads the guard at any depth, either way round, and nothing else."""
    from inrreg_pipeline.workflows.base import _under_main_guard

    script = tmp_path / "s.py"
    script.write_text("import x\nrun()\nif __name__ == '__main__':\n    run()\n    try:\n        run()\n"
                      "    except E:\n        pass\nelse:\n    run()\nif '__main__' == __name__:\n    run()\n"
                      "if __name__ != '__main__':\n    run()\ndef f():\n    run()\n")
    assert [_under_main_guard(str(script), n) for n in range(1, 17)] == [
        False, False, False, True, True, True, True, True, False, False, False, True, False, False, False, False]
    assert _under_main_guard(str(tmp_path / "missing.py"), 1)
