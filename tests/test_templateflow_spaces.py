"""``inrreg-bids --output-spaces``: TemplateFlow identifiers, their files found offline in a
TemplateFlow-shaped ``TEMPLATEFLOW_HOME`` made here from nilearn's MNI152 (no network: only
``TemplateFlowClient.ls`` is used, and the folder is never empty, so templateflow writes no
skeleton), the refusals before any work, and one participant run that registers to the
TemplateFlow file and names the space ``space-MNI152NLin2009cAsym_res-6``.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os

import numpy as np
import pytest

pytest.importorskip("nipype")
pytest.importorskip("bids")
pytest.importorskip("nilearn")

import nibabel as nib  # noqa: E402
from nibabel.processing import resample_from_to, resample_to_output  # noqa: E402

from inrreg_pipeline.bids_app.parser import UsageError, parse_args  # noqa: E402
from inrreg_pipeline.bids_app.spaces import OutputSpace, parse_space  # noqa: E402

TPL = "MNI152NLin2009cAsym"


# ------------------------------------------------------------------------------------------------
# identifiers (no templateflow needed)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, space", [
    ("MNI152NLin2009cAsym", OutputSpace(TPL)),
    ("MNI152NLin2009cAsym:res-2", OutputSpace(TPL, 2)),
    ("MNI152NLin2009cAsym:res-02", OutputSpace(TPL, 2)),
    ("MNIPediatricAsym:cohort-1:res-2", OutputSpace("MNIPediatricAsym", 2, 1)),
    ("MNIPediatricAsym:res-1:cohort-3", OutputSpace("MNIPediatricAsym", 1, 3)),
    ("T1w", "T1w"), ("anat", "anat"),
])
def test_identifiers_parse(text, space):
    assert parse_space(text) == space


def test_space_names_follow_templateflow():
    space = OutputSpace("MNIPediatricAsym", 2, 1)
    assert space.identifier == "MNIPediatricAsym:cohort-1:res-2"
    assert space.image_entities == "_cohort-1_res-2" and space.xfm_entities == "_cohort-1"
    assert OutputSpace(TPL, 2).image_entities == "_res-2" and OutputSpace(TPL, 2).xfm_entities == ""


@pytest.mark.parametrize("text", ["MNI152NLin2009cAsym:res-native", "MNI152:den-10k", "MNI_152", "MNI152:res-0",
                                  "MNI152:res-1:res-2", "", "../tpl"])
def test_bad_identifiers_are_refused(text):
    with pytest.raises(argparse.ArgumentTypeError):
        parse_space(text)


@pytest.mark.parametrize("argv, fragment", [
    (["--output-spaces", "MNI152:res-1:x"], "unknown modifier"),
    (["--output-spaces", "MNI152NLin2009cAsym", "MNI152NLin6Asym"], "one template space per run"),
    (["--output-spaces", "MNI152NLin2009cAsym", "--template-resolution", "2"], "--template-resolution"),
    (["--output-spaces", "MNI152NLin2009cAsym", "--template", "t.nii.gz"], "--template"),
])
def test_option_errors_are_usage_errors(argv, fragment):
    with pytest.raises(UsageError) as err:
        parse_args(["bids", "out", "participant", *argv])
    assert err.value.code == 64 and fragment in str(err.value)


def test_only_native_spaces_keep_the_default_template():
    assert parse_args(["bids", "out", "participant", "--output-spaces", "T1w", "anat"]).template_space is None
    assert parse_args(["bids", "out", "participant"]).template_space is None
    opts = parse_args(["bids", "out", "participant", "--output-spaces", "T1w", f"{TPL}:res-2"])
    assert opts.template_space == OutputSpace(TPL, 2)


# ------------------------------------------------------------------------------------------------
# a TemplateFlow-shaped folder
# ------------------------------------------------------------------------------------------------
def _save(img: nib.Nifti1Image, path) -> None:
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    nib.save(img, str(path))


@pytest.fixture(scope="module")
def tf_home(tmp_path_factory):
    """``tpl-MNI152NLin2009cAsym`` with res-06 T1w + brain mask + GM/WM ``probseg`` maps and no plain
    ``dseg``, as the real template ships them (nilearn's MNI152 at 6 mm), an empty
    res-01 T1w (a TemplateFlow stub of a file not downloaded), and a second template without files."""
    from nilearn import datasets

    home = tmp_path_factory.mktemp("templateflow")
    (home / "dataset_description.json").write_text(json.dumps({"Name": "TemplateFlow (test)",
                                                               "BIDSVersion": "1.9.0"}))
    folder = home / f"tpl-{TPL}"
    folder.mkdir()
    (folder / "template_description.json").write_text(json.dumps({"Name": "test copy of nilearn's MNI152"}))
    t1 = datasets.load_mni152_template(resolution=2)
    t1 = resample_to_output(nib.Nifti1Image(np.asarray(t1.get_fdata(), np.float32), t1.affine), [6.0] * 3, order=1)
    mask = (t1.get_fdata() > 0.1 * t1.get_fdata().max()).astype(np.uint8)
    _save(nib.Nifti1Image(np.asarray(t1.get_fdata(), np.float32), t1.affine), folder / f"tpl-{TPL}_res-06_T1w.nii.gz")
    _save(nib.Nifti1Image(mask, t1.affine), folder / f"tpl-{TPL}_res-06_desc-brain_mask.nii.gz")
    for label, load in (("GM", datasets.load_mni152_gm_template), ("WM", datasets.load_mni152_wm_template)):
        tissue = load(resolution=2)
        tissue = resample_from_to(nib.Nifti1Image(np.asarray(tissue.get_fdata(), np.float32), tissue.affine), t1,
                                  order=1)
        _save(nib.Nifti1Image(np.asarray(tissue.get_fdata(), np.float32), t1.affine),
              folder / f"tpl-{TPL}_res-06_label-{label}_probseg.nii.gz")
    (folder / f"tpl-{TPL}_res-01_T1w.nii.gz").write_bytes(b"")
    (home / "tpl-MNI152NLin6Asym").mkdir()
    (home / "tpl-MNI152NLin6Asym" / "template_description.json").write_text("{}")
    return home


def _need_templateflow() -> None:
    """Skip without templateflow, without importing it: its first import reads TEMPLATEFLOW_HOME and
    fills that folder (by default the user's cache) with a skeleton when it is empty."""
    if importlib.util.find_spec("templateflow") is None:
        pytest.skip("templateflow is not installed")


@pytest.fixture
def tf_env(tf_home, monkeypatch):
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(tf_home))
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    _need_templateflow()
    return tf_home


def test_files_are_found_in_templateflow_home(tf_env):
    from inrreg_pipeline.bids_app.templates import templateflow_files

    before = sorted(p.relative_to(tf_env) for p in tf_env.rglob("*"))
    space, files = templateflow_files(OutputSpace(TPL, 6))
    assert space == OutputSpace(TPL, 6)
    assert files["T1w"] == tf_env / f"tpl-{TPL}" / f"tpl-{TPL}_res-06_T1w.nii.gz"
    assert files["mask"] == tf_env / f"tpl-{TPL}" / f"tpl-{TPL}_res-06_desc-brain_mask.nii.gz"
    assert files["brain"] is None and files["dseg"] is None
    assert files["GM"].name == f"tpl-{TPL}_res-06_label-GM_probseg.nii.gz"
    assert files["WM"].name == f"tpl-{TPL}_res-06_label-WM_probseg.nii.gz"
    assert sorted(p.relative_to(tf_env) for p in tf_env.rglob("*")) == before  # nothing written or fetched


def test_template_is_the_masked_templateflow_image(tf_env, tmp_path):
    from inrreg_pipeline.bids_app.templates import templateflow_files, templateflow_template

    tpl = templateflow_template(*templateflow_files(OutputSpace(TPL, 6)), tmp_path)
    assert tpl.space == f"{TPL}_res-6" and tpl.xfm == TPL and tpl.standard
    assert "6 x 6 x 6 mm" in tpl.metadata["Resolution"]
    head = nib.load(str(tf_env / f"tpl-{TPL}" / f"tpl-{TPL}_res-06_T1w.nii.gz"))
    brain = nib.load(str(tpl.t1w))
    mask = nib.load(str(tpl.mask)).get_fdata() > 0
    np.testing.assert_allclose(brain.affine, head.affine)
    np.testing.assert_allclose(brain.get_fdata()[mask], head.get_fdata()[mask])
    assert not brain.get_fdata()[~mask].any()


def test_dice_labels_come_from_the_tissue_maps(tf_env, tmp_path):
    """A TemplateFlow template without a plain dseg (the real ones) still gets GM/WM labels to score
    Dice on: the likelier tissue where it exceeds 0.3 inside the brain mask, on the template's grid,
    written under the work folder (TEMPLATEFLOW_HOME untouched), as for nilearn's default template."""
    from inrreg_pipeline.bids_app.templates import templateflow_files, templateflow_template

    before = sorted(p.relative_to(tf_env) for p in tf_env.rglob("*"))
    tpl = templateflow_template(*templateflow_files(OutputSpace(TPL, 6)), tmp_path)
    assert tpl.dseg is not None and tpl.dseg.is_relative_to(tmp_path) and tpl.contours == tpl.dseg
    folder = tf_env / f"tpl-{TPL}"
    gm, wm = (nib.load(str(folder / f"tpl-{TPL}_res-06_label-{k}_probseg.nii.gz")).get_fdata() for k in ("GM", "WM"))
    brain = nib.load(str(folder / f"tpl-{TPL}_res-06_desc-brain_mask.nii.gz")).get_fdata() > 0
    dseg = nib.load(str(tpl.dseg))
    labels = np.asarray(dseg.dataobj)
    np.testing.assert_allclose(dseg.affine, nib.load(str(tpl.t1w)).affine)
    assert set(np.unique(labels)) == {0, 1, 2}
    tissue = brain & (np.maximum(gm, wm) > 0.3)
    assert np.array_equal(labels > 0, tissue)
    assert np.array_equal(labels[tissue] == 2, (wm > gm)[tissue])
    assert "label-GM/-WM probseg" in tpl.description
    assert sorted(p.relative_to(tf_env) for p in tf_env.rglob("*")) == before


@pytest.mark.parametrize("space, code, fragment", [
    (OutputSpace("Nope", 2), 64, "unknown TemplateFlow template 'Nope'"),
    (OutputSpace(TPL, 3), 66, "no T1w"),
    (OutputSpace(TPL, 1), 66, "not downloaded"),
    (OutputSpace(TPL, 6, cohort=2), 66, "cohort-2"),
    (OutputSpace("MNI152NLin6Asym", 2), 66, "no T1w"),
])
def test_unavailable_templates_are_refused(tf_env, space, code, fragment):
    from inrreg_pipeline.bids_app.parser import AppError
    from inrreg_pipeline.bids_app.templates import templateflow_files

    with pytest.raises(AppError) as err:
        templateflow_files(space)
    assert err.value.code == code and fragment in str(err.value) and "\n" not in str(err.value)


def test_empty_templateflow_home_is_refused_and_left_empty(tmp_path, monkeypatch):
    _need_templateflow()
    from inrreg_pipeline.bids_app.parser import AppError
    from inrreg_pipeline.bids_app.templates import templateflow_files

    empty = tmp_path / "tf"
    empty.mkdir()
    monkeypatch.setenv("TEMPLATEFLOW_HOME", str(empty))
    monkeypatch.setenv("TEMPLATEFLOW_AUTOUPDATE", "0")
    with pytest.raises(AppError) as err:
        templateflow_files(OutputSpace(TPL, 2))
    assert err.value.code == 66 and "missing or empty" in str(err.value)
    assert not any(empty.iterdir())  # no skeleton written


def test_missing_templateflow_package_is_a_usage_error(monkeypatch):
    import sys

    from inrreg_pipeline.bids_app.parser import AppError
    from inrreg_pipeline.bids_app.templates import templateflow_files

    monkeypatch.delenv("TEMPLATEFLOW_HOME", raising=False)
    monkeypatch.setitem(sys.modules, "templateflow", None)  # import templateflow -> ImportError
    with pytest.raises(AppError) as err:
        templateflow_files(OutputSpace(TPL, 2))
    assert err.value.code == 64 and "inrreg[templateflow]" in str(err.value)


# ------------------------------------------------------------------------------------------------
# the app
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_participant(tmp_path_factory):
    from inrreg_pipeline.bids_app.demo_dataset import make_demo_dataset

    root = tmp_path_factory.mktemp("tf_bids")
    return make_demo_dataset(root / "bids", resolution=6.0, n_participants=1, t2w=False)


def test_refused_before_any_work(tf_env, one_participant, tmp_path, capsys):
    from inrreg_pipeline.bids_app.run import main

    out, work = tmp_path / "out", tmp_path / "work"
    code = main([str(one_participant), str(out), "participant", "-w", str(work), "--output-spaces", "Nope:res-2"])
    err = capsys.readouterr().err.strip()
    assert code == 64 and len(err.splitlines()) == 1 and "unknown TemplateFlow template" in err, err
    assert not out.exists() and not work.exists()


def test_participant_run_uses_the_templateflow_space(tf_env, one_participant, tmp_path):
    """A --sloppy run to MNI152NLin2009cAsym:res-6: registered onto the TemplateFlow file's grid,
    with TemplateFlow/fMRIPrep names and no copy of the (standard) template in the outputs."""
    from bids.layout import parse_file_entities

    from inrreg_pipeline.bids_app.run import main

    out, work = tmp_path / "out", tmp_path / "work"
    env = {"OMP_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        code = main([str(one_participant), str(out), "participant", "-w", str(work), "--sloppy", "--nprocs", "1",
                     "--device", "cpu", "--output-spaces", f"{TPL}:res-6", "T1w"])
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    assert code == 0
    anat = out / "sub-01" / "anat"
    image = anat / f"sub-01_space-{TPL}_res-6_desc-preproc_T1w.nii.gz"
    for name in (image.name, f"sub-01_from-T1w_to-{TPL}_mode-image_xfm.h5", f"sub-01_from-{TPL}_to-T1w_mode-image_xfm.h5",
                 f"sub-01_space-{TPL}_res-6_desc-jacobian_T1w.nii.gz", "sub-01_desc-brain_mask.nii.gz",
                 f"sub-01_from-T1w_to-{TPL}_desc-evaluation_metrics.tsv"):
        assert (anat / name).is_file(), name
    template = nib.load(str(tf_env / f"tpl-{TPL}" / f"tpl-{TPL}_res-06_T1w.nii.gz"))
    warped = nib.load(str(image))
    assert warped.shape == template.shape and np.allclose(warped.affine, template.affine, atol=1e-4)
    ents = parse_file_entities(str(image))
    assert ents["space"] == TPL and str(ents["res"]) == "6" and ents["desc"] == "preproc"
    side = json.loads(image.with_name(image.name.replace(".nii.gz", ".json")).read_text())
    assert "SpatialReference" not in side and "6 x 6 x 6 mm" in side["Resolution"]
    assert not list(out.glob("tpl-*"))  # a standard space: no template copy
    assert f"space `{TPL}_res-6`" in (out / "logs" / "CITATION.md").read_text()
