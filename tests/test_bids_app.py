"""``inrreg-bids`` (``inrreg_pipeline.bids_app``): both levels end to end on a tiny (6 mm) BIDS dataset
made from nilearn's template, the input left untouched, a cached re-run, every user error with its
exit code and one line, derivative names as pybids parses them, and (when the shared data are
there) OASIS-TRT-20 participants against a third subject's DKT31 labels.

Registrations run with ``--sloppy`` (a handful of iterations; ANTs iterations scaled by 0.05).
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

pytest.importorskip("nipype")
pytest.importorskip("bids")
pytest.importorskip("nilearn")

from inrreg_pipeline.bids_app.demo_dataset import make_demo_dataset  # noqa: E402
from inrreg_pipeline.bids_app.run import main  # noqa: E402

OASIS = Path(__file__).resolve().parents[2] / "shared" / "data" / "oasis-trt-20"
TPL = "MNI152NLin2009aSym"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "inrreg_pipeline.bids_app.run", *map(str, args)],
                          capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bids_app")
    bids = make_demo_dataset(root / "bids", resolution=6.0, n_participants=2)
    return {"root": root, "bids": bids, "labels": bids / "derivatives" / "labels", "out": root / "out",
            "work": root / "work"}


@pytest.fixture(scope="module")
def participant_run(dataset):
    """The participant level (INR + ANTs, labels, brain-mask estimation), then the group level."""
    before = _checksums(dataset["bids"])
    args = [dataset["bids"], dataset["out"], "participant", "-w", dataset["work"], "--sloppy", "--nprocs", "1",
            "--template-resolution", "6", "--compare-ants", "-d", f"labels={dataset['labels']}", "--device", "cpu"]
    proc = _cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    group = _cli(dataset["bids"], dataset["out"], "group", "-w", dataset["work"])
    assert group.returncode == 0, group.stderr[-3000:]
    return {**dataset, "before": before, "args": args, "stdout": proc.stdout + group.stdout}


def test_participant_outputs(participant_run):
    out = participant_run["out"]
    anat = out / "sub-01" / "anat"
    expected = [
        f"sub-01_from-T1w_to-{TPL}_mode-image_xfm.h5", f"sub-01_from-{TPL}_to-T1w_mode-image_xfm.h5",
        f"sub-01_from-T1w_to-{TPL}_mode-image_desc-ants_xfm.h5",
        f"sub-01_from-{TPL}_to-T1w_mode-image_desc-ants_xfm.h5",
        f"sub-01_space-{TPL}_desc-preproc_T1w.nii.gz", f"sub-01_space-{TPL}_desc-antspreproc_T1w.nii.gz",
        f"sub-01_space-{TPL}_desc-jacobian_T1w.nii.gz", f"sub-01_space-{TPL}_dseg.nii.gz",
        f"sub-01_space-{TPL}_desc-ants_dseg.nii.gz", "sub-01_space-T1w_desc-preproc_T2w.nii.gz",
        "sub-01_from-T2w_to-T1w_mode-image_xfm.h5", "sub-01_from-T1w_to-T2w_mode-image_xfm.h5",
        "sub-01_desc-brain_mask.nii.gz", "sub-01_desc-brain_T1w.nii.gz", f"sub-01_from-T1w_to-{TPL}_desc-evaluation_metrics.tsv",
        f"sub-01_from-T1w_to-{TPL}_desc-labels_metrics.tsv",
    ]
    for name in expected:
        assert (anat / name).is_file(), name
    assert not list(out.rglob(".*.tmp*")) and not [p for p in out.rglob(".*") if p.name != ".bidsignore"]
    # the estimated brain mask (template mask brought back through the inverse transform) covers the brain
    import nibabel as nib
    import numpy as np

    mask = nib.load(str(anat / "sub-01_desc-brain_mask.nii.gz")).get_fdata() > 0
    brain = nib.load(str(participant_run["labels"] / "sub-01" / "anat" / "sub-01_dseg.nii.gz")).get_fdata() > 0
    assert 2 * (mask & brain).sum() / (mask.sum() + brain.sum()) > 0.8
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "inrreg"
    assert {"Version", "CodeURL"} <= set(desc["GeneratedBy"][0]) and desc["SourceDatasets"]
    assert set((out / ".bidsignore").read_text().split()) == {"*.html", "logs/", "figures/", "*_xfm.*"}
    side = json.loads((anat / f"sub-01_space-{TPL}_desc-preproc_T1w.json").read_text())
    assert side["Sources"][0] == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    assert side["SpatialReference"].startswith("bids::tpl-")  # 6 mm: not the standard 2 mm space
    assert side["Registration"]["device"] == "cpu" and "total" in side["Registration"]["runtime_s"]
    # evaluation: one row per method with Dice, HD95, folding and log-Jacobian spread
    rows = [dict(zip(*[line.split("\t") for line in [lines[0], row]]))
            for lines in [(anat / f"sub-01_from-T1w_to-{TPL}_desc-evaluation_metrics.tsv").read_text().splitlines()]
            for row in lines[1:]]
    assert sorted(r["method"] for r in rows) == ["ants", "inr"]
    for r in rows:
        for key in ("mean_dice", "mean_hd95_mm", "folding_percent", "log_jacobian_std", "runtime_s"):
            assert r[key] not in ("", "nan"), key
        assert 0.3 < float(r["mean_dice"]) <= 1.0
    # reports and citation boilerplate
    html = (out / "sub-01.html").read_text()
    figs = sorted((out / "sub-01" / "figures").glob("*.svg"))
    assert len(figs) == 5 and all(f"sub-01/figures/{f.name}" in html for f in figs)
    assert "Methods" in html and "inrreg" in html
    citation = (out / "logs" / "CITATION.md").read_text()
    assert "[@idir]" in citation and "Wolterink" in citation and "antsRegistration" in citation
    # group level
    table = (out / "group_registration.tsv").read_text().splitlines()
    assert table[0].split("\t") == ["participant_id", "session_id", "t1w", "method", "metric", "value"]
    assert {tuple(r.split("\t")[:4]) for r in table[1:] if "\tmean_dice\t" in r} == {
        (sub, "n/a", "n/a", method) for sub in ("sub-01", "sub-02") for method in ("inr", "ants")}
    group_html = (out / "group_registration.html").read_text()
    assert group_html.count("data:image/png;base64,") >= 4
    assert "group_registration.html" in participant_run["stdout"]


def test_derivative_names_parse(participant_run):
    from bids.layout import BIDSLayout, parse_file_entities

    out = participant_run["out"]
    ents = parse_file_entities(str(out / "sub-01" / "anat" / f"sub-01_from-T1w_to-{TPL}_mode-image_xfm.h5"))
    assert ents["subject"] == "01" and ents["from"] == "T1w" and ents["to"] == TPL and ents["mode"] == "image"
    assert ents["suffix"] == "xfm" and ents["extension"] == ".h5"
    ents = parse_file_entities(str(out / "sub-01" / "anat" / f"sub-01_space-{TPL}_desc-preproc_T1w.nii.gz"))
    assert ents["space"] == TPL and ents["desc"] == "preproc" and ents["suffix"] == "T1w"
    layout = BIDSLayout(str(out), validate=False, is_derivative=True)
    assert layout.get(subject="01", suffix="xfm", extension=".h5", to=TPL, desc=None, **{"from": "T1w"})
    assert layout.get(subject="02", space="T1w", desc="preproc", suffix="T2w", extension=".nii.gz")
    assert layout.get(subject="02", space=TPL, suffix="dseg", extension=".nii.gz", desc="ants")
    assert layout.get(subject="01", space=TPL, desc="jacobian", suffix="T1w", extension=".nii.gz")


def test_input_untouched(participant_run):
    """chmod does not stop root, so: same checksums and no new files in the input dataset."""
    assert _checksums(participant_run["bids"]) == participant_run["before"]


def test_rerun_same_workdir(participant_run):
    out = participant_run["out"]
    target = out / "sub-01" / "anat" / f"sub-01_space-{TPL}_desc-preproc_T1w.nii.gz"
    target.unlink()  # the sinks run again even when everything upstream is cached
    plugin = participant_run["root"] / "plugin.yml"
    plugin.write_text("plugin: Linear\nplugin_args: {}\n")
    assert main([str(a) for a in participant_run["args"]] + ["--participant-label", "sub-01", "--use-plugin",
                                                             str(plugin), "--mem", "2G", "--omp-nthreads", "1"]) == 0
    assert target.is_file()
    assert main([str(a) for a in participant_run["args"]] + ["--reports-only"]) == 0


def _one_line_error(capsys, code, argv, *fragments):
    assert main([str(a) for a in argv]) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("inrreg-bids: error:"), err
    for f in fragments:
        assert f in err, err
    return err


def test_exit_codes(dataset, tmp_path, capsys):
    bids, out = dataset["bids"], tmp_path / "out"
    w = ["-w", tmp_path / "work"]
    assert main(["--version"]) == 0
    _one_line_error(capsys, 17, [bids, out, "subject"], "unknown analysis level")
    _one_line_error(capsys, 64, [bids, out, "participant", "--no-such-option"], "unrecognized")
    _one_line_error(capsys, 64, [bids, out, "participant", "--participant-label", "../01"], "not a BIDS label")
    _one_line_error(capsys, 64, [bids, out, "participant", "--participant-label", "sub-0/1"], "not a BIDS label")
    _one_line_error(capsys, 64, [bids, out, "participant", "--nprocs", "0"], "positive integer")
    _one_line_error(capsys, 64, [bids, out, "participant", "-w", bids / "work"], "inside the input dataset")
    _one_line_error(capsys, 64, [bids, out, "participant", *w, "--preset", "nope"], "--preset")
    empty = tmp_path / "not_bids"
    empty.mkdir()
    _one_line_error(capsys, 16, [empty, out, "participant", *w], "dataset_description.json")
    _one_line_error(capsys, 16, [tmp_path / "missing", out, "participant", *w], "no such folder")
    _one_line_error(capsys, 73, [bids, bids, "participant", *w], str(bids / "derivatives" / "inrreg"))
    _one_line_error(capsys, 73, [bids, bids / "sub-01" / "out", "participant", *w], "inside the input dataset")
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    _one_line_error(capsys, 73, [bids, blocker / "out", "participant", *w], "cannot create")
    _one_line_error(capsys, 66, [bids, out, "participant", *w, "--participant-label", "99"], "sub-99")
    _one_line_error(capsys, 66, [bids, out, "group"], "participant level first")
    _one_line_error(capsys, 66, [bids, out, "participant", *w, "-d", f"labels={tmp_path / 'nope'}"], "labels")
    filt = tmp_path / "filter.json"
    filt.write_text(json.dumps({"t1w": {"acquisition": "nope"}}))
    _one_line_error(capsys, 18, [bids, out, "participant", *w, "--bids-filter-file", filt], "selected no")
    filt.write_text("{not json")
    _one_line_error(capsys, 64, [bids, out, "participant", *w, "--bids-filter-file", filt], "not valid JSON")
    assert not out.exists() or not any(out.rglob("sub-*"))


@pytest.mark.parametrize("content, word", [("{\"Name\": \"x\", ", "not valid JSON"),
                                           ("[1, 2]", "JSON object"),
                                           (b"\xff\xfe\x00", "not valid JSON")], ids=["truncated", "list", "binary"])
def test_invalid_dataset_description_is_not_bids(tmp_path, capsys, content, word):
    """A dataset_description.json that is not a JSON object: exit 16 (not BIDS), one line, nothing
    created; --skip-bids-validation goes on past it."""
    bids = tmp_path / "bids"
    bids.mkdir()
    desc = bids / "dataset_description.json"
    desc.write_bytes(content if isinstance(content, bytes) else content.encode())
    out, work = tmp_path / "out", tmp_path / "work"
    _one_line_error(capsys, 16, [bids, out, "participant", "-w", work], "dataset_description.json", word,
                    "--skip-bids-validation")
    assert not out.exists() and not work.exists()
    main([str(a) for a in (bids, out, "participant", "-w", work, "--skip-bids-validation")])
    err = capsys.readouterr().err
    assert "--skip-bids-validation to go on" not in err, err  # past the check (pybids or 'no participants' next)


@pytest.mark.parametrize("seed", ["-1", str(2 ** 31 - 1), "x"])
def test_random_seed_out_of_range_is_a_usage_error(tmp_path, capsys, seed):
    """--random-seed takes the range of inrreg register --seed (every preset, ANTs included): 64, one line."""
    _one_line_error(capsys, 64, [tmp_path, tmp_path / "out", "participant", "--random-seed", seed], "--random-seed")


def _interrupt_self(seconds):
    import os
    import signal
    import time

    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while this node runs
    time.sleep(seconds)
    return seconds


def _mark(marker):
    from pathlib import Path

    Path(marker).write_text("ran")
    return marker


def test_ctrl_c_during_a_node_is_an_interruption_not_a_crash(tmp_path):
    """Nipype turns a KeyboardInterrupt inside a node into a node crash ('processing failed', exit 1)
    and runs the other nodes. The app must stop at once and report an interruption (130 from main)."""
    from types import SimpleNamespace

    from nipype import Node, Workflow
    from nipype.interfaces.utility import Function

    from inrreg_pipeline.bids_app.cluster import PluginSettings
    from inrreg_pipeline.bids_app.execution import execute

    wf = Workflow(name="interrupt_wf", base_dir=str(tmp_path / "work"))
    first = Node(Function(input_names=["seconds"], output_names=["out"], function=_interrupt_self), name="a_first")
    first.inputs.seconds = 0.5
    later = Node(Function(input_names=["marker"], output_names=["out"], function=_mark), name="b_later")
    later.inputs.marker = str(tmp_path / "later_ran")
    wf.add_nodes([first, later])
    opts = SimpleNamespace(verbose=0, stop_on_first_crash=False, resource_monitor=False, write_graph=False)
    started = []

    def record(node, status):  # a status callback of the user's own plugin settings is still called
        if status == "start":
            started.append(node.name)

    with pytest.raises(KeyboardInterrupt):
        execute(wf, opts, PluginSettings("Linear", {"status_callback": record}), tmp_path / "work")
    assert started and started[0] in ("a_first", "b_later"), started
    if started[0] == "a_first":  # independent nodes: Linear may take either first
        assert started == ["a_first"] and not (tmp_path / "later_ran").exists(), "the run went on after Ctrl-C"


def test_ctrl_c_status_callback_pickles():
    """Nipype pickles plugin settings (MapNodes such as apply_labels): a local function there broke every run."""
    import pickle

    from inrreg_pipeline.bids_app.execution import StopWhenInterrupted

    assert isinstance(pickle.loads(pickle.dumps(StopWhenInterrupted())), StopWhenInterrupted)


def test_data_errors(dataset, tmp_path, capsys):
    """Missing T1w (66), corrupted NIfTI (65), template and dseg on different grids (65)."""
    bids = tmp_path / "bids"
    shutil.copytree(dataset["bids"], bids)
    w = ["-w", tmp_path / "work"]
    (bids / "sub-03" / "anat").mkdir(parents=True)
    shutil.copy(bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz", bids / "sub-03" / "anat" / "sub-03_T2w.nii.gz")
    _one_line_error(capsys, 66, [bids, tmp_path / "out", "participant", *w], "no T1w image for sub-03")
    shutil.rmtree(bids / "sub-03")
    t1 = bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    data = gzip.decompress(t1.read_bytes())
    t1.write_bytes(gzip.compress(data[: len(data) // 2]))
    _one_line_error(capsys, 65, [bids, tmp_path / "out", "participant", *w], "sub-02_T1w.nii.gz",
                    "not a readable NIfTI")
    t1.write_bytes(b"garbage")
    _one_line_error(capsys, 65, [bids, tmp_path / "out", "participant", *w, "--participant-label", "02"],
                    "not a readable NIfTI")
    tpl = dataset["bids"] / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    import nibabel as nib
    import numpy as np

    img = nib.load(str(tpl))
    small = tmp_path / "small_dseg.nii.gz"
    nib.save(nib.Nifti1Image(np.ones([s - 2 for s in img.shape], np.int16), img.affine), str(small))
    _one_line_error(capsys, 65, [dataset["bids"], tmp_path / "out2", "participant", *w, "--participant-label",
                                 "01", "--template", tpl, "--template-dseg", small], "not on the template's grid")


def _downsample_copy(src: Path, dst: Path, voxel: float, order: int) -> None:
    import nibabel as nib
    import numpy as np
    from nibabel.processing import resample_to_output

    img = nib.load(str(src))
    res = resample_to_output(nib.Nifti1Image(np.asarray(img.dataobj, np.float32), img.affine),
                             voxel_sizes=[voxel] * 3, order=order)
    data = res.get_fdata()
    out = np.rint(data).astype(np.int16) if order == 0 else data.astype(np.float32)
    dst.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(out, res.affine), str(dst))


@pytest.mark.skipif(not (OASIS / "dataset_description.json").is_file(), reason="OASIS-TRT-20 not present")
def test_oasis_labels(tmp_path):
    """Two OASIS participants to a third subject's T1w; Dice/HD95 against its DKT31 labels."""
    voxel = 6.0
    bids, labels = tmp_path / "bids", tmp_path / "labels"
    bids.mkdir()
    labels.mkdir()
    shutil.copy(OASIS / "dataset_description.json", bids / "dataset_description.json")
    shutil.copy(OASIS / "derivatives" / "manual-labels" / "dataset_description.json", labels)
    man = OASIS / "derivatives" / "manual-labels"
    for sub in ("01", "02"):
        _downsample_copy(OASIS / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz",
                         bids / f"sub-{sub}" / "anat" / f"sub-{sub}_T1w.nii.gz", voxel, 1)
        _downsample_copy(man / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-DKT31_dseg.nii.gz",
                         labels / f"sub-{sub}" / "anat" / f"sub-{sub}_desc-DKT31_dseg.nii.gz", voxel, 0)
    tpl_t1, tpl_dseg = tmp_path / "tpl" / "T1w.nii.gz", tmp_path / "tpl" / "dseg.nii.gz"
    _downsample_copy(OASIS / "sub-03" / "anat" / "sub-03_T1w.nii.gz", tpl_t1, voxel, 1)
    _downsample_copy(man / "sub-03" / "anat" / "sub-03_desc-DKT31_dseg.nii.gz", tpl_dseg, voxel, 0)
    out = tmp_path / "out"
    before = _checksums(OASIS / "sub-01")
    proc = _cli(bids, out, "participant", "-w", tmp_path / "work", "--sloppy", "--nprocs", "1", "--skull-stripped",
                "--template", tpl_t1, "--template-dseg", tpl_dseg, "--template-name", "OASIS03",
                "-d", f"labels={labels}", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    for sub in ("01", "02"):
        table = out / f"sub-{sub}" / "anat" / f"sub-{sub}_from-T1w_to-OASIS03_desc-labels_metrics.tsv"
        lines = table.read_text().splitlines()
        header = lines[0].split("\t")
        dice = [float(r.split("\t")[header.index("dice")]) for r in lines[1:]]
        assert len(dice) >= 20 and all(0.0 <= d <= 1.0 for d in dice) and max(dice) > 0.2
        side = json.loads((out / f"sub-{sub}" / "anat" / f"sub-{sub}_space-OASIS03_dseg.json").read_text())
        assert side["SpatialReference"] == "bids::tpl-OASIS03/tpl-OASIS03_T1w.nii.gz"
    assert (out / "tpl-OASIS03" / "tpl-OASIS03_T1w.nii.gz").is_file()
    assert _checksums(OASIS / "sub-01") == before


def test_processing_failure_exit_1(dataset, tmp_path, capsys):
    """A readable but empty T1w fails inside the graph: exit 1, one line naming the node and the crash files."""
    import nibabel as nib
    import numpy as np

    bids = tmp_path / "bids"
    shutil.copytree(dataset["bids"], bids, ignore=shutil.ignore_patterns("sub-02", "derivatives"))
    t1 = bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    img = nib.load(str(t1))
    nib.save(nib.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), str(t1))
    (bids / "sub-01" / "anat" / "sub-01_T2w.nii.gz").unlink()
    _one_line_error(capsys, 1, [bids, tmp_path / "out", "participant", "-w", tmp_path / "work", "--sloppy",
                                "--nprocs", "1", "--template-resolution", "6", "--skull-stripped", "--device", "cpu"],
                    "processing failed", "crash files in")
    assert not list((tmp_path / "out").glob("sub-01/anat/*.nii.gz"))


def test_sessions_and_contrasts_boilerplate(dataset, tmp_path, capsys):
    """Sessions, FLAIR and ce-T1w are found (the workflow is built; --boilerplate-only runs nothing)."""
    bids = tmp_path / "bids"
    shutil.copytree(dataset["bids"], bids, ignore=shutil.ignore_patterns("derivatives"))
    for sub in ("01", "02"):
        anat = bids / f"sub-{sub}" / "anat"
        dst = bids / f"sub-{sub}" / "ses-A" / "anat"
        dst.mkdir(parents=True)
        for f in sorted(anat.iterdir()):
            f.rename(dst / f.name.replace(f"sub-{sub}_", f"sub-{sub}_ses-A_"))
        anat.rmdir()
    ses = bids / "sub-01" / "ses-A" / "anat"
    shutil.copy(ses / "sub-01_ses-A_T2w.nii.gz", ses / "sub-01_ses-A_FLAIR.nii.gz")
    shutil.copy(ses / "sub-01_ses-A_T1w.nii.gz", ses / "sub-01_ses-A_ce-gd_T1w.nii.gz")
    out, w = tmp_path / "out", ["-w", tmp_path / "work"]
    assert main([str(a) for a in [bids, out, "participant", *w, "--sloppy", "--template-resolution", "6",
                                  "--session-label", "ses-A", "--boilerplate-only"]]) == 0
    text = (out / "logs" / "CITATION.md").read_text()
    for contrast in ("T2w", "FLAIR", "cegdT1w"):
        assert f"The {contrast} image was co-registered to the T1w image" in text, contrast
    assert not list(out.glob("sub-*"))
    _one_line_error(capsys, 66, [bids, out, "participant", *w, "--session-label", "B"], "session(s) B not found")


def test_low_mem_runs_one_registration_at_a_time(dataset, tmp_path):
    """``--low-mem`` under MultiProc: the INR, ANTs and T2w co-registrations never overlap in time,
    although two processes with one thread each let them run side by side without it."""
    from nipype.utils.filemanip import loadpkl

    work = tmp_path / "work"
    assert main([str(a) for a in [dataset["bids"], tmp_path / "out", "participant", "-w", work, "--sloppy",
                                  "--participant-label", "01", "--template-resolution", "6", "--compare-ants",
                                  "--device", "cpu", "--nprocs", "2", "--omp-nthreads", "1", "--low-mem"]]) == 0
    spans = []
    for name in ("inr_registration", "ants_registration"):  # the T2w co-registration is an INR one too
        for result in work.rglob(f"{name}/result_*.pklz"):
            runtime = loadpkl(result).runtime
            spans.append((datetime.fromisoformat(runtime.startTime), datetime.fromisoformat(runtime.endTime),
                          result.parent.parent.name))
    assert len(spans) >= 3, spans
    spans.sort()
    for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
        assert start >= end, f"{second} started before {first} ended"


def test_every_t1w_run_is_registered(dataset, tmp_path):
    """Two T1w runs of one session: both are registered and evaluated, with ``run-`` in every name;
    the T2w is co-registered once, to the first run; the group table tells the runs apart."""
    bids = tmp_path / "bids"
    shutil.copytree(dataset["bids"], bids, ignore=shutil.ignore_patterns("derivatives", "sub-02"))
    anat = bids / "sub-01" / "anat"
    (anat / "sub-01_T1w.nii.gz").rename(anat / "sub-01_run-1_T1w.nii.gz")
    shutil.copy(anat / "sub-01_run-1_T1w.nii.gz", anat / "sub-01_run-2_T1w.nii.gz")
    labels = tmp_path / "labels" / "sub-01" / "anat"
    shutil.copytree(dataset["labels"] / "sub-01" / "anat", labels)
    out, work = tmp_path / "out", tmp_path / "work"
    assert main([str(a) for a in [bids, out, "participant", "-w", work, "--sloppy", "--nprocs", "1",
                                  "--template-resolution", "6", "--device", "cpu",
                                  "-d", f"labels={labels.parents[1]}"]]) == 0
    names = sorted(p.name for p in (out / "sub-01" / "anat").iterdir())
    for run in ("run-1", "run-2"):
        for kind in ("mode-image_xfm.h5", "desc-evaluation_metrics.tsv"):
            assert f"sub-01_{run}_from-T1w_to-{TPL}_{kind}" in names, (run, kind, names)
    # labels named without a run belong to the first run only
    assert f"sub-01_run-1_from-T1w_to-{TPL}_desc-labels_metrics.tsv" in names
    assert f"sub-01_run-2_from-T1w_to-{TPL}_desc-labels_metrics.tsv" not in names
    assert [n for n in names if "T2w" in n and n.endswith(".nii.gz")] == ["sub-01_space-T1w_desc-preproc_T2w.nii.gz"]
    sources = json.loads((out / "sub-01" / "anat" / "sub-01_space-T1w_desc-preproc_T2w.json").read_text())["Sources"]
    assert any(s.endswith("sub-01_run-1_T1w.nii.gz") for s in sources), sources
    assert main([str(bids), str(out), "group", "-w", str(work)]) == 0
    group = (out / "group_registration.tsv").read_text().splitlines()
    assert group[0].split("\t")[:3] == ["participant_id", "session_id", "t1w"]
    assert {line.split("\t")[2] for line in group[1:]} >= {"run-1", "run-2"}


def test_a_4d_t1w_and_a_missing_gpu_are_refused_before_any_work(dataset, tmp_path, capsys):
    """Issue 16, defect 4: a 4-D T1w used to pass the pre-check and fail 58 s later with exit 1, and
    ``--device cuda`` without CUDA failed inside the graph after writing dataset-level files; early
    failures left empty work and output folders (defect 7)."""
    import nibabel as nib
    import numpy as np
    import torch

    bids = tmp_path / "bids"
    shutil.copytree(dataset["bids"], bids)
    t1 = bids / "sub-02" / "anat" / "sub-02_T1w.nii.gz"
    img = nib.load(str(t1))
    data = np.asanyarray(img.dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), img.affine), str(t1))
    out, work = tmp_path / "out", tmp_path / "work"
    _one_line_error(capsys, 65, [bids, out, "participant", "-w", work, "--participant-label", "02"],
                    "sub-02_T1w.nii.gz", "2 volumes")
    assert not out.exists() and not work.exists()  # nothing left of a run refused before work
    if not torch.cuda.is_available():
        out2 = tmp_path / "out2"
        _one_line_error(capsys, 64, [dataset["bids"], out2, "participant", "-w", tmp_path / "work2",
                                     "--device", "cuda"], "--device", "CUDA is not available")
        assert not out2.exists() and not (tmp_path / "work2").exists()


def _tagged_processes(tag: str) -> list[int]:
    """Pids of the processes whose environment holds ``INRREG_TEST_TAG=tag`` (a run and every
    process it started: the fork server, the workers, the resource tracker, the ANTs child)."""
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"INRREG_TEST_TAG={tag}".encode() in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or another user's
            continue
    return pids


def _wait_gone(tag: str, seconds: float) -> list[int]:
    import time

    deadline = time.monotonic() + seconds
    while (left := _tagged_processes(tag)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("target", ["app", "job"])
def test_sigterm_during_a_multiproc_run_exits_143_and_the_rerun_resumes(dataset, tmp_path, target):
    """Issue 16, defects 2 and 7: a scheduler's SIGTERM at a time limit, to the app alone (``kill``,
    ``docker stop``: ``app``) or to every process of the job (SLURM: ``job``), while MultiProc
    workers register. The app used to die at once, leaving the fork server and a worker running
    their node under init. Now: exit 143 with one line, no process left, no temporary or
    half-written file in the derivatives, and (``app``) the same command resumes: finished nodes are
    not run again, and leftovers of dead processes are removed, nobody else's files."""
    import signal
    import time
    import uuid

    out, work = tmp_path / "out", tmp_path / "work"
    tag = uuid.uuid4().hex
    env = {**ENV, "INRREG_TEST_TAG": tag}
    args = [sys.executable, "-m", "inrreg_pipeline.bids_app.run", str(dataset["bids"]), str(out), "participant",
            "-w", str(work), "--participant-label", "01", "--sloppy", "--nprocs", "2", "--template-resolution", "6",
            "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        # a registration node runs in a worker: Nipype's hash file of a node that has not finished
        while not list(work.glob("inrreg_wf/**/inr_registration/_0x*_unfinished.json")) \
                and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, f"the run ended before a registration started: {proc.stderr.read()[-2000:]}"
        assert list(work.glob("inrreg_wf/**/inr_registration/_0x*_unfinished.json")), "no registration started"
        assert len(_tagged_processes(tag)) >= 3, "no MultiProc worker running"  # app, fork server, worker(s)
        finished = {p: p.stat().st_mtime_ns for p in work.glob("inrreg_wf/**/_0x*.json")
                    if not p.name.endswith("_unfinished.json")}
        assert finished, "no node had finished before the signal"
        sent = time.monotonic()
        if target == "app":
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        stopped = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 143, err[-2000:]
    assert err.splitlines() == ["inrreg-bids: terminated (SIGTERM)"], err[-2000:]
    assert stopped < 30, f"took {stopped:.0f} s to stop"
    assert _wait_gone(tag, 10) == [], "processes left running after the app exited"
    assert [p.name for p in out.rglob(".*")] == [".bidsignore"]  # no temporary or half-written file
    assert not list(work.rglob(".inrreg-*")) and not list(work.glob("inrreg_wf/**/_0x*_unfinished.json"))
    if target == "job":
        return

    # leftovers of a run killed with SIGKILL: removed by the rerun; a live process's and the user's kept
    from inrreg_pipeline.io.images import _host

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    anat = out / "sub-01" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    stale = [out / f".inrreg-{gone.pid}@{_host()}-abc123",
             anat / f".inrreg-sink-{gone.pid}@{_host()}-sub-01_desc-brain_mask.nii.gz.x1y2z3"]
    kept = [anat / f".inrreg-sink-{os.getpid()}@{_host()}-sub-01_T1w.nii.gz.live", out / ".user_notes",
            anat / f".inrreg-sink-{gone.pid}@other.host-sub-01_T1w.nii.gz.remote"]
    stale[0].mkdir()
    (stale[0] / "sub-01_T1w.nii.gz").write_bytes(b"half-written")
    for path in stale[1:] + kept:
        path.write_bytes(b"half-written")
    rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "finished nodes were run again"
    assert not any(p.exists() for p in stale) and all(p.exists() for p in kept)
    for name in ["sub-01_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.h5", "sub-01_desc-brain_mask.nii.gz",
                 "sub-01_space-T1w_desc-preproc_T2w.nii.gz"]:
        assert (anat / name).is_file(), name
    assert (out / "sub-01.html").is_file()
    assert _wait_gone(tag, 10) == []


def test_a_node_ended_by_sigterm_outside_its_interface_leaves_no_unfinished_marker(tmp_path, monkeypatch):
    """The race the job-wide case above can hit under load, made deterministic. Nipype writes a node's
    ``_0x<hash>_unfinished.json`` before its interface runs and removes it only on an ``Exception``;
    a SIGTERM landing in that stretch ends ``Node.run`` with the ``BaseException`` ``Terminated``,
    which Nipype's ``run_node`` reports as a failed node while the marker of a running node stayed in
    the work directory. The worker removes it; a finished node's hash file is kept."""
    import signal

    from nipype import Node
    from nipype.interfaces.utility import IdentityInterface

    from inrreg_pipeline.bids_app import workers

    for name in ("_BUSY", "_TERMINATED", "_RAISED"):  # worker-process state, restored after the test
        monkeypatch.setattr(workers, name, False)
    node = Node(IdentityInterface(fields=["x"]), name="registration", base_dir=str(tmp_path))
    folder = Path(node.output_dir())
    folder.mkdir(parents=True)
    (folder / "_0xfinished.json").write_text("{}")  # another node state's hash file, not this run's marker

    def run_node(node, updatehash, taskid):
        """Nipype's ``run_node``: every exception of ``node.run`` becomes a traceback in the result."""
        try:
            (Path(node.output_dir()) / "_0xabc_unfinished.json").write_text("{}")
            workers._on_sigterm(signal.SIGTERM, None)  # the signal, before the interface started
        except BaseException as err:  # noqa: BLE001 - as run_node's bare except
            return {"result": None, "traceback": repr(err), "taskid": taskid}
        return {"result": "ran", "traceback": None, "taskid": taskid}

    result = workers.run_in_worker(run_node, node, False, 7)
    assert result["traceback"] == "Terminated()" and result["taskid"] == 7
    assert sorted(p.name for p in folder.iterdir()) == ["_0xfinished.json"]
    # a terminated worker starts no further node
    assert workers.run_in_worker(run_node, node, False, 8)["result"] is None
    assert sorted(p.name for p in folder.iterdir()) == ["_0xfinished.json"]
