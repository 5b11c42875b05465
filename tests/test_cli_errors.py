"""The ``inrreg`` command line contract: exit codes, one-line errors, all-or-nothing outputs.

``inrreg register`` / ``inrreg apply`` exit 0 on success, 2 on bad input (exactly one line on
stderr naming the problem, no traceback) and 1 on an internal failure. Outputs are staged in a
hidden ``.inrreg-*`` folder and moved into place only when everything succeeded, so a failed run
leaves neither outputs nor the staging folder behind. Everything runs in-process through
:func:`inrreg_pipeline.cli.main` on tiny 2-D images, so the whole file takes seconds.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from inrreg_pipeline.cli import main

PREFIX = "sub_"
SPACING = 2.0  # mm
SHAPE = (24, 20)

# what `inrreg register -o P` writes, and nothing else with the prefix
REGISTER_SUFFIXES = ("0GenericAffine.mat", "1Warp.nii.gz", "1InverseWarp.nii.gz", "Composite.h5",
                     "InverseComposite.h5", "Warped.nii.gz", "InverseWarped.nii.gz", "jacobian.nii.gz",
                     "registration.json")

FAST_PRESET = {"affine": {"shrink_factors": [1], "iterations": [20], "rigid_iterations": 10, "samples": 500},
               "network": {"hidden_layers": 2, "hidden_features": 32},
               "optimisation": {"iterations": 10, "patch_size": 8, "patches": 2},
               "inverse_iterations": 5}


# ----------------------------------------------------------------------------- helpers


def _affine(ndim: int = 2) -> np.ndarray:
    aff = np.diag([SPACING, SPACING, SPACING, 1.0])
    aff[:3, 3] = [-20.0, -18.0, 0.0 if ndim == 2 else -10.0]
    return aff


def _save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    data = np.asarray(data)
    nib.save(nib.Nifti1Image(data, _affine(data.ndim) if affine is None else affine), str(path))
    return path


def _blob(shape=SHAPE, shift_mm: float = 0.0) -> np.ndarray:
    """A smooth 2-D image: two Gaussian blobs, shifted along x by ``shift_mm``."""
    i, j = np.meshgrid(np.arange(shape[0], dtype=np.float64), np.arange(shape[1], dtype=np.float64), indexing="ij")
    s = shift_mm / SPACING
    img = (np.exp(-((i - 11 - s) ** 2 + (j - 9) ** 2) / (2 * 3.0 ** 2))
           + 0.6 * np.exp(-((i - 16 - s) ** 2 + (j - 13) ** 2) / (2 * 2.0 ** 2)))
    return (100.0 * img).astype(np.float32)


def _md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _run(argv: list[str]) -> int:
    """``main(argv)`` as the shell would see it (argparse exits through ``SystemExit``)."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1


def _assert_one_line_error(capsys, code: int, expected_code: int, *words: str) -> str:
    out, err = capsys.readouterr()
    assert code == expected_code, f"exit {code}, expected {expected_code}; stderr: {err!r}"
    assert "Traceback" not in err and "Traceback" not in out, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].strip(), f"expected exactly one non-empty stderr line, got {err!r}"
    assert any(w.lower() in lines[0].lower() for w in words), f"none of {words} in {lines[0]!r}"
    return lines[0]


def _assert_nothing_written(directory: Path, prefix: str = PREFIX) -> None:
    if not directory.is_dir():
        return
    left = [p.name for p in directory.iterdir() if p.name.startswith(prefix) or p.name.startswith(".inrreg-")]
    assert not left, f"left behind in {directory}: {left}"


@pytest.fixture
def pair(tmp_path):
    """``(fixed, moving, out_dir)``: a tiny valid 2-D pair and an empty output folder."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    fixed = _save(inputs / "fixed.nii.gz", _blob())
    moving = _save(inputs / "moving.nii.gz", _blob(shift_mm=2.0))
    return fixed, moving, out


def _register_argv(fixed, moving, out: Path, *extra) -> list:
    return ["register", fixed, moving, "-o", f"{out}/{PREFIX}", "--device", "cpu", *extra]


# ----------------------------------------------------------------------------- register: bad input -> 2


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_register_non_finite_voxels(pair, capsys, bad_value):
    fixed, moving, out = pair
    data = _blob()
    data[3, 4] = bad_value
    bad = _save(fixed.parent / "bad.nii.gz", data)
    code = _run(_register_argv(bad, moving, out))
    _assert_one_line_error(capsys, code, 2, "NaN", "infinite")
    _assert_nothing_written(out)


def _four_d(inputs: Path) -> Path:
    return _save(inputs / "bold.nii.gz", np.stack([_blob()[..., None]] * 3, axis=-1))  # (24, 20, 1, 3)


def _text_file(inputs: Path) -> Path:
    bogus = inputs / "x.nii.gz"
    bogus.write_text("this is not an image\n")
    return bogus


#: ``(argv from (fixed, moving, out), exit code, words one of which the line holds, text the line must hold)``
REGISTER_BAD_INPUT = {
    "missing-fixed": (lambda f, m, o: _register_argv(f.parent / "nope.nii.gz", m, o), 2, ("does not exist",), "fixed"),
    "text-file-as-image": (lambda f, m, o: _register_argv(_text_file(f.parent), m, o), 2, ("not a readable",), None),
    "4d-image": (lambda f, m, o: _register_argv(f, _four_d(f.parent), o), 2, ("4-D",), "moving"),
    "2d-vs-3d": (lambda f, m, o: _register_argv(f, _save(f.parent / "vol.nii.gz", np.stack([_blob()] * 5, axis=-1)),
                                                o), 2, ("2-D",), None),
    "empty-fixed-mask": (lambda f, m, o: _register_argv(
        f, m, o, "--fixed-mask", _save(f.parent / "mask.nii.gz", np.zeros(SHAPE, np.uint8))), 2, ("empty",), None),
    "unknown-preset": (lambda f, m, o: _register_argv(f, m, o, "--preset", "no-such-preset"), 2, ("unknown preset",),
                       None),
    "missing-preset-file": (lambda f, m, o: _register_argv(f, m, o, "--preset", f.parent / "absent.json"), 2,
                            ("does not exist",), None),
    "constant-image": (lambda f, m, o: _register_argv(_save(f.parent / "flat.nii.gz", np.full(SHAPE, 7.0, np.float32)),
                                                      m, o), 2, ("constant",), None),
    "unknown-device": (lambda f, m, o: ["register", f, m, "-o", f"{o}/{PREFIX}", "--device", "tpu"], 2,
                       ("unknown device",), None),
    "cuda-without-cuda": (lambda f, m, o: ["register", f, m, "-o", f"{o}/{PREFIX}", "--device", "cuda"], 2, ("CUDA",),
                          None),
    "unknown-option": (lambda f, m, o: _register_argv(f, m, o, "--bogus-option"), 2, ("unrecognized arguments",), None),
    "missing-output": (lambda f, m, o: ["register", f, m], 2, ("-o/--output",), None),
    "motion-needs-two-network": (lambda f, m, o: _register_argv(f, m, o, "--method", "siren", "--motion", "rigid"), 2,
                                 ("two-network",), None),
}
_NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")


@pytest.mark.parametrize("argv, code, words, in_line", [
    pytest.param(*case, id=name, marks=[_NO_CUDA] if name == "cuda-without-cuda" else [])
    for name, case in REGISTER_BAD_INPUT.items()])
def test_register_bad_input(pair, capsys, argv, code, words, in_line):
    """Bad input to ``inrreg register``: its exit code, one line holding one of ``words`` (and
    ``in_line``), nothing written."""
    fixed, moving, out = pair
    line = _assert_one_line_error(capsys, _run(argv(fixed, moving, out)), code, *words)
    assert in_line is None or in_line in line, line
    _assert_nothing_written(out)


@pytest.mark.parametrize("which", ["shape", "affine"])
def test_register_mask_on_other_grid(pair, capsys, which):
    fixed, moving, out = pair
    if which == "shape":
        mask = _save(fixed.parent / "mask.nii.gz", np.ones((12, 10), np.uint8))
    else:
        aff = _affine()
        aff[0, 3] += 5.0
        mask = _save(fixed.parent / "mask.nii.gz", np.ones(SHAPE, np.uint8), aff)
    code = _run(_register_argv(fixed, moving, out, "--moving-mask", mask))
    _assert_one_line_error(capsys, code, 2, "grid")
    _assert_nothing_written(out)


def test_register_output_parent_is_a_file(pair, capsys):
    fixed, moving, out = pair
    afile = out / "afile"
    afile.write_text("a regular file\n")
    code = _run(["register", fixed, moving, "-o", f"{afile}/{PREFIX}", "--device", "cpu"])
    _assert_one_line_error(capsys, code, 2, "cannot write", "does not exist", "not a directory")
    assert afile.read_text() == "a regular file\n"
    _assert_nothing_written(out)


def test_register_creates_a_missing_output_directory(pair, capsys):
    """``-o out/a/b/sub_`` with ``out/a/b`` missing: made as ``mkdir -p`` would (the README's example
    on a fresh machine), holding the outputs and nothing else."""
    fixed, moving, out = pair
    preset = fixed.parent / "tiny.json"
    preset.write_text(json.dumps(FAST_PRESET))
    code = _run(["register", fixed, moving, "-o", f"{out}/a/b/{PREFIX}", "--device", "cpu", "--preset", preset,
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (out / "a" / "b").iterdir()) == sorted(PREFIX + s for s in REGISTER_SUFFIXES)


@pytest.mark.parametrize("failure, expected", [(KeyboardInterrupt, 130), (RuntimeError("boom"), 1),
                                               (None, 2)], ids=["interrupted", "internal-error", "bad-input"])
def test_register_failure_removes_the_directories_it_created(pair, capsys, monkeypatch, failure, expected):
    """A run that fails after making ``out/a/b`` removes them again: nothing half-made is left."""
    import inrreg_pipeline.register as register_module

    def fail(*args, **kwargs):
        raise failure

    fixed, moving, out = pair
    argv = ["register", fixed, moving, "-o", f"{out}/a/b/{PREFIX}", "--device", "cpu"]
    if failure is None:  # bad input found while loading, before any folder is made
        argv += ["--fixed-mask", _save(fixed.parent / "empty_mask.nii.gz", np.zeros(SHAPE, np.uint8))]
    else:
        monkeypatch.setattr(register_module, "register", fail)
    code = _run(argv)
    assert code == expected, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores directory permissions")
def test_register_output_directory_read_only(pair, capsys):
    fixed, moving, out = pair
    out.chmod(0o500)
    try:
        code = _run(_register_argv(fixed, moving, out))
        _assert_one_line_error(capsys, code, 2, "cannot write")
    finally:
        out.chmod(0o700)
    _assert_nothing_written(out)


@pytest.mark.parametrize("content", ['{"affine": {"iterations": [20,]', "[1, 2, 3]", '{"no_such_section": {}}'],
                         ids=["invalid-json", "not-an-object", "unknown-key"])
def test_register_malformed_preset(pair, capsys, content):
    fixed, moving, out = pair
    preset = fixed.parent / "broken.json"
    preset.write_text(content)
    code = _run(_register_argv(fixed, moving, out, "--preset", preset))
    _assert_one_line_error(capsys, code, 2, "preset")
    _assert_nothing_written(out)


@pytest.mark.parametrize("content, word", [
    ('{"optimisation": {"iterations": "ten"}}', "must be int"),
    ('{"loss": {"similarity": "bogus"}}', "loss.similarity"),
    ('{"optimisation": {"iterations": -5}}', "iterations >= 1"),
    ('{"affine": {"shrink_factors": [1, 2], "iterations": [5]}}', "differ in length"),
    ('{"network": {"activation": "tanh"}}', "activation"),
    ('{"optimisation": {"smoothing_mm": [4, -1]}}', "smoothing_mm"),
    ('{"optimisation": {"smoothing_mm": ["4mm"]}}', "must be list"),
    ('{"optimisation": {"lr_schedule": "step"}}', "lr_schedule"),
    # JSON reads 1e309 as inf; Python's JSON also takes NaN and Infinity: one finite check for every float key
    ('{"loss": {"alpha": 1e309}}', "loss.alpha must be a finite number"),
    ('{"optimisation": {"lr": NaN}}', "optimisation.lr must be a finite number"),
    ('{"network": {"omega": Infinity}}', "network.omega must be a finite number"),
    ('{"optimisation": {"smoothing_mm": [2, 1e400]}}', "optimisation.smoothing_mm[1] must be a finite number"),
    ('{"two_network": {"image_hash": {"growth_factor": -Infinity}}}', "growth_factor must be a finite number"),
], ids=["wrong-type", "unknown-similarity", "negative", "mismatched-lists", "unknown-activation", "negative-sigma",
        "sigma-not-number", "unknown-schedule", "alpha-inf", "lr-nan", "omega-inf", "sigma-inf", "nested-inf"])
def test_register_preset_with_bad_values(pair, capsys, content, word):
    """Bad preset values are the user's input: exit 2 before any work, not an internal failure."""
    fixed, moving, out = pair
    preset = fixed.parent / "bad_values.json"
    preset.write_text(content)
    code = _run(_register_argv(fixed, moving, out, "--preset", preset))
    _assert_one_line_error(capsys, code, 2, word)
    _assert_nothing_written(out)


@pytest.mark.parametrize("threads", ["-1", "0", "two"])
def test_register_bad_threads(pair, capsys, threads):
    fixed, moving, out = pair
    code = _run(_register_argv(fixed, moving, out, "--threads", threads))
    _assert_one_line_error(capsys, code, 2, "positive integer")
    _assert_nothing_written(out)


@pytest.mark.parametrize("seed", ["abc", "-1", str(2 ** 31 - 1), str(2 ** 32), str(2 ** 64), "1.5"])
@pytest.mark.parametrize("preset", ["default", "ants-syn"])
def test_register_bad_seed(pair, capsys, seed, preset):
    """One seed range, [0, 2**31 - 2], for every preset (ANTs adds 1 and reads a C int): a usage error
    before any work, not an internal failure."""
    fixed, moving, out = pair
    code = _run(_register_argv(fixed, moving, out, "--seed", seed, "--preset", preset))
    line = _assert_one_line_error(capsys, code, 2, "--seed")
    assert "2147483646" in line or seed == "abc"
    _assert_nothing_written(out)


def test_register_seed_range_is_checked_in_the_python_api(pair):
    from inrreg_pipeline.io.images import InputError
    from inrreg_pipeline.register import register_files

    fixed, moving, out = pair
    with pytest.raises(InputError, match="seed must be an integer"):
        register_files(str(fixed), str(moving), f"{out}/{PREFIX}", device="cpu", seed=-1)
    _assert_nothing_written(out)


def test_a_later_run_removes_staging_folders_of_dead_processes(pair, capsys):
    """SIGKILL (or a node going down) leaves ``.inrreg-*`` behind; the next run with that output folder
    removes those of dead processes of this host, and leaves a live run's folder and other hosts' alone."""
    import subprocess
    import sys

    from inrreg_pipeline.io.images import _host

    fixed, moving, out = pair
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid that no longer runs
    stale = [out / f".inrreg-{gone.pid}@{_host()}-abc123", out / f".inrreg-ants-{gone.pid}@{_host()}-def456"]
    kept = [out / f".inrreg-{os.getpid()}@{_host()}-live", out / f".inrreg-{gone.pid}@other.host-remote"]
    for folder in stale + kept:
        folder.mkdir()
        (folder / f"{PREFIX}Warped.nii.gz").write_bytes(b"half-written")
    preset = fixed.parent / "tiny.json"
    preset.write_text(json.dumps(FAST_PRESET))
    code = _run(_register_argv(fixed, moving, out, "--preset", preset, "--no-progress"))
    assert code == 0, capsys.readouterr().err
    assert not any(folder.exists() for folder in stale)
    assert all(folder.is_dir() for folder in kept)


def _register_until_staged(fixed, moving, out):
    """``inrreg register`` (preset ``default``) started in a subprocess and waited for until its
    ``.inrreg-*`` staging folder exists (asserted; the process is killed if it never appears)."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "inrreg_pipeline.cli", *map(str, _register_argv(
        fixed, moving, out, "--preset", "default", "--no-progress", "--threads", "1"))],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(out.glob(".inrreg-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    if not list(out.glob(".inrreg-*")):
        proc.kill()
        raise AssertionError("the run never staged its outputs")
    return proc


def test_sigterm_exits_143_and_removes_its_staging_folder(pair):
    """What a scheduler sends at a time limit: the run stops, says so in one line, exit 143, and its
    staging folder (named with its pid) is gone."""
    import signal
    import time

    fixed, moving, out = pair
    proc = _register_until_staged(fixed, moving, out)
    try:
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert err.splitlines() == ["inrreg: terminated (SIGTERM)"], err
    _assert_nothing_written(out)


def test_a_rerun_after_sigkill_leaves_no_staging_folder(pair):
    """Issue 16, defect 7, with a real SIGKILL (no handler runs): the killed run's ``.inrreg-*``
    folder stays, and the next run with that output folder removes it and writes its outputs."""
    import signal
    import subprocess
    import sys

    fixed, moving, out = pair
    proc = _register_until_staged(fixed, moving, out)
    try:
        left = list(out.glob(".inrreg-*"))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert all(folder.is_dir() for folder in left)  # what SIGKILL leaves
    preset = fixed.parent / "tiny.json"
    preset.write_text(json.dumps(FAST_PRESET))
    rerun = subprocess.run([sys.executable, "-m", "inrreg_pipeline.cli", *map(str, _register_argv(
        fixed, moving, out, "--preset", preset, "--no-progress", "--threads", "1"))],
        capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert not list(out.glob(".inrreg-*"))
    assert (out / f"{PREFIX}Warped.nii.gz").is_file()


# ----------------------------------------------------------------------------- outputs never replace inputs


def _snapshot(*folders: Path) -> dict[str, str]:
    """md5 of every file (symlinks by their target's content) in ``folders``."""
    return {str(p): _md5(p) for folder in folders for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("how", ["same-name", "symlink", "mask"])
def test_register_output_that_is_an_input_is_refused(pair, capsys, how):
    """``register F out/p_Warped.nii.gz -o out/p_`` would replace the moving image (also through a
    symlink, and for a mask named like an output): exit 2 before any work, the input unchanged."""
    fixed, moving, out = pair
    clash = out / f"{PREFIX}Warped.nii.gz"
    extra = []
    if how == "symlink":
        clash.symlink_to(moving)
    else:
        clash.write_bytes(moving.read_bytes() if how == "same-name" else
                          _save(fixed.parent / "mask.nii.gz", np.ones(SHAPE, np.uint8)).read_bytes())
    if how == "mask":
        extra, argv_moving = ["--fixed-mask", clash], moving
    else:
        argv_moving = clash
    before = _snapshot(fixed.parent, out)
    code = _run(_register_argv(fixed, argv_moving, out, *extra))
    line = _assert_one_line_error(capsys, code, 2, "overwritten")
    assert ("fixed mask" if how == "mask" else "moving image") in line
    assert _snapshot(fixed.parent, out) == before
    assert sorted(p.name for p in out.iterdir()) == [clash.name]


def test_register_interrupted_exits_130(pair, capsys, monkeypatch):
    """Ctrl-C during the optimisation: exit 130 (not the internal-failure 1), one line, no outputs and
    no staging folder left."""
    import inrreg_pipeline.register as register_module

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    fixed, moving, out = pair
    monkeypatch.setattr(register_module, "register", interrupted)
    code = _run(_register_argv(fixed, moving, out))
    line = _assert_one_line_error(capsys, code, 130, "interrupted")
    assert line == "inrreg: interrupted"
    _assert_nothing_written(out)


def _patch_header(path: Path, **fields) -> Path:
    """Overwrite NIfTI-1 header fields of an uncompressed ``.nii`` in place (what nibabel would refuse
    to write): ``datatype``/``bitpix`` (int16 at 70/72), ``scl_slope``/``scl_inter`` (float32 at 112/116)."""
    offsets = {"datatype": (70, "<i2"), "bitpix": (72, "<i2"), "scl_slope": (112, "<f4"), "scl_inter": (116, "<f4")}
    raw = bytearray(path.read_bytes())
    for name, value in fields.items():
        offset, dtype = offsets[name]
        raw[offset:offset + np.dtype(dtype).itemsize] = np.array([value], dtype).tobytes()
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("case, words, not_words", [
    ("scl_slope-overflow", ("scl_slope", "float32 range"), ("NaN", "Warning")),
    ("dt-binary", ("DT_BINARY",), ("not attempting fix",)),
])
def test_header_problems_are_one_line_with_the_real_reason(pair, case, words, not_words):
    """A scl_slope that overflows float32 was blamed on NaN/inf voxels after a 2-line NumPy warning; a
    DT_BINARY image printed nibabel's log line first. Run as a user would (a subprocess: warnings and
    log records reach stderr there) and expect exactly one line naming the cause."""
    import subprocess
    import sys

    fixed, moving, out = pair
    data = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 100).astype(np.int16 if case != "dt-binary" else np.uint8)
    bad = _save(fixed.parent / "bad.nii", data)
    if case == "dt-binary":
        _patch_header(bad, datatype=1, bitpix=1)
    else:
        _patch_header(bad, scl_slope=1e38, scl_inter=0.0)
    proc = subprocess.run([sys.executable, "-m", "inrreg_pipeline.cli", *map(str, _register_argv(bad, moving, out))],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert all(w in lines[0] for w in words) and not any(w in lines[0] for w in not_words), lines[0]
    _assert_nothing_written(out)


# ----------------------------------------------------------------------------- geometry: valid grids load


def _plane_affine(columns: list[int], spacing: float = SPACING) -> np.ndarray:
    """A 4x4 affine whose array axes 0, 1, 2 point along world axes ``columns``."""
    aff = np.zeros((4, 4))
    for axis, world in enumerate(columns):
        aff[world, axis] = spacing
    aff[:, 3] = [-20.0, -18.0, 5.0, 1.0]
    return aff


@pytest.mark.parametrize("shape, columns", [
    ((*SHAPE, 1), [0, 1, 2]),            # axial, the singleton last (as before)
    ((1, *SHAPE), [2, 0, 1]),            # axial plane stored with the singleton first
    ((SHAPE[0], 1, SHAPE[1]), [0, 2, 1]),  # ... and in the middle
], ids=["last", "first", "middle"])
def test_single_slice_volume_is_a_2d_image(tmp_path, shape, columns):
    """A 3-D NIfTI one voxel thick along any axis is the 2-D image of the other two axes, with their
    columns of the affine (the singleton axis squeezed, not assumed to be the last)."""
    from inrreg_pipeline.io.images import load_image

    data = _blob().reshape(shape)
    aff = _plane_affine(columns)
    img = load_image(_save(tmp_path / "slice.nii.gz", data, aff))
    assert img.shape == SHAPE
    np.testing.assert_array_equal(img.data, _blob())
    in_plane = [axis for axis in range(3) if shape[axis] != 1]
    np.testing.assert_allclose(img.affine, aff[np.ix_([0, 1, 3], in_plane + [3])])
    np.testing.assert_allclose(img.affine[:2, :2], np.diag([SPACING, SPACING]))


@pytest.mark.parametrize("shape, columns, plane", [
    ((*SHAPE, 1), [1, 2, 0], "sagittal"),          # in-plane axes along world y, z: was "singular affine"
    ((1, *SHAPE), [0, 1, 2], "sagittal"),
    ((SHAPE[0], 1, SHAPE[1]), [0, 1, 2], "coronal"),
    ((*SHAPE, 1), [0, 2, 1], "coronal"),
], ids=["sagittal-last", "sagittal-first", "coronal-middle", "coronal-last"])
def test_non_axial_slice_is_refused_with_the_real_reason(pair, capsys, shape, columns, plane):
    """2-D registration works in the world x-y plane: a sagittal or coronal slice cannot be mapped to
    it without distortion. Say so (exit 2, one line), not "singular or non-finite affine"."""
    fixed, moving, out = pair
    slice_ = _save(fixed.parent / "slice.nii.gz", _blob().reshape(shape), _plane_affine(columns))
    code = _run(_register_argv(slice_, moving, out))
    line = _assert_one_line_error(capsys, code, 2, plane)
    assert "singular" not in line and "axial" in line
    _assert_nothing_written(out)


@pytest.mark.parametrize("spacing_mm", [0.0008, 1e-6], ids=["0.8um", "1nm"])
def test_tiny_voxels_register(pair, capsys, spacing_mm):
    """Microscopy voxels (0.8 micrometre: |det| ~ 5e-10 mm^3) are a valid grid: the affine test is
    relative to the voxel size, and the pair registers like its millimetre twin."""
    fixed, moving, out = pair
    scale = spacing_mm / SPACING
    aff = _affine()
    aff[:3] *= scale
    small_f = _save(fixed.parent / "small_fixed.nii.gz", _blob(), aff)
    small_m = _save(fixed.parent / "small_moving.nii.gz", _blob(shift_mm=2.0), aff)
    preset = fixed.parent / "tiny.json"
    preset.write_text(json.dumps(FAST_PRESET))
    code = _run(_register_argv(small_f, small_m, out, "--preset", preset, "--no-progress"))
    assert code == 0, capsys.readouterr().err
    warped = nib.load(str(out / f"{PREFIX}Warped.nii.gz"))
    np.testing.assert_allclose(warped.affine[:2, :2], aff[:2, :2], rtol=1e-5)
    assert np.isfinite(np.asanyarray(warped.dataobj)).all()


def test_images_that_cannot_overlap_are_a_usage_error_before_any_work(pair, capsys):
    """A fixed affine scaled 1e6 (issue 16, defect 3) used to register to an all-zero image with exit 0:
    now exit 2, one line saying why, and nothing written."""
    fixed, moving, out = pair
    aff = _affine()
    aff[:2] *= 1e6
    huge = _save(fixed.parent / "huge_fixed.nii.gz", _blob(), aff)
    preset = fixed.parent / "fast.json"
    preset.write_text(json.dumps(FAST_PRESET))
    code = _run(_register_argv(huge, moving, out, "--preset", preset, "--no-progress"))
    _assert_one_line_error(capsys, code, 2, "cannot overlap in world space")
    _assert_nothing_written(out)


@pytest.mark.parametrize("spacing_mm", [0.0008, 1e-5], ids=["0.8um", "10nm"])
def test_tiny_voxel_volume_loads(tmp_path, spacing_mm):
    """A 3-D volume of 0.8 micrometre voxels (|det| 5e-10 mm^3, below the old absolute 1e-9 threshold)
    and of 10 nm voxels (below SpatialImage's old 1e-12) is a valid grid."""
    from inrreg_pipeline.core.space import SpatialImage
    from inrreg_pipeline.io.images import load_image

    aff = np.diag([spacing_mm, spacing_mm, spacing_mm, 1.0])
    img = load_image(_save(tmp_path / "micro.nii.gz", np.stack([_blob()] * 4, axis=-1), aff))
    assert img.shape == (*SHAPE, 4)
    np.testing.assert_allclose(img.spacing, [spacing_mm] * 3, rtol=1e-6)
    SpatialImage(img.data, img.affine).with_data(img.data)


@pytest.mark.parametrize("affine_kind, word", [("zero-column", "zero voxel size"), ("parallel", "parallel"),
                                               ("nan", "non-finite")])
def test_degenerate_affine_names_the_problem(pair, capsys, affine_kind, word):
    fixed, moving, out = pair
    aff = _affine(3)
    if affine_kind == "zero-column":
        aff[:, 1] = 0.0
    elif affine_kind == "parallel":
        aff[:3, 1] = aff[:3, 0] * (1 + 1e-9)
    else:
        aff[0, 0] = np.nan
    # nibabel refuses to write such an affine: write a valid file and put the rows into its sform
    bad = _save(fixed.parent / "bad.nii", np.stack([_blob()] * 4, axis=-1))
    raw = bytearray(bad.read_bytes())
    raw[252:256] = np.array([0, 1], "<i2").tobytes()            # qform_code 0, sform_code 1
    raw[280:328] = np.asarray(aff[:3], "<f4").tobytes()          # srow_x, srow_y, srow_z
    bad.write_bytes(bytes(raw))
    code = _run(_register_argv(bad, moving, out))
    _assert_one_line_error(capsys, code, 2, word)
    _assert_nothing_written(out)


# ----------------------------------------------------------------------------- apply: bad input -> 2


@pytest.fixture
def apply_inputs(pair):
    """``(moving, fixed, warp, affine_mat, out_dir)``: valid transform files made by hand (no registration)."""
    from inrreg_pipeline.io.itk import write_ants_displacement_field, write_itk_affine

    fixed, moving, out = pair
    warp = fixed.parent / "w_1Warp.nii.gz"
    write_ants_displacement_field(warp, np.zeros((*SHAPE, 2)), _affine()[np.ix_([0, 1, 3], [0, 1, 3])])
    mat = fixed.parent / "w_0GenericAffine.mat"
    write_itk_affine(mat, np.eye(3))
    return moving, fixed, warp, mat, out


def test_apply_inputs_fixture_is_valid(apply_inputs, capsys):
    """The hand-made transforms are fine, so the failures below are about what each test breaks."""
    moving, fixed, warp, mat, out = apply_inputs
    code = _run(["apply", moving, "-r", fixed, "-t", warp, "-t", mat, "-o", out / f"{PREFIX}moved.nii.gz"])
    assert code == 0, capsys.readouterr().err
    assert (out / f"{PREFIX}moved.nii.gz").is_file()


def test_apply_takes_several_transforms_after_one_t(apply_inputs, capsys):
    """``-t A B`` (the form many users type) is ``-t A -t B``: same order, same output."""
    moving, fixed, warp, mat, out = apply_inputs
    mat2 = fixed.parent / "shift_0GenericAffine.mat"
    from inrreg_pipeline.io.itk import write_itk_affine

    shift = np.eye(3)
    shift[:2, 2] = [3.0, -2.0]
    write_itk_affine(mat2, shift)
    outputs = {}
    for form, argv in {"repeated": ["-t", warp, "-t", mat2, "-t", mat], "one-t": ["-t", warp, mat2, mat],
                       "mixed": ["-t", warp, mat2, "-t", mat]}.items():
        outputs[form] = out / f"{form}.nii.gz"
        code = _run(["apply", moving, "-r", fixed, *argv, "-o", outputs[form]])
        assert code == 0, capsys.readouterr().err
    reference = np.asanyarray(nib.load(str(outputs["repeated"])).dataobj)
    for form in ("one-t", "mixed"):
        np.testing.assert_array_equal(np.asanyarray(nib.load(str(outputs[form])).dataobj), reference)
    assert not np.allclose(reference, np.asanyarray(nib.load(str(moving)).dataobj))  # the shift was applied


def _junk_transform(inputs: Path) -> Path:
    junk = inputs / "junk.mat"
    junk.write_text("not a transform")
    return junk


#: ``(argv from (moving, fixed, warp, mat, out), exit code, words one of which the line holds, text it must hold)``
APPLY_BAD_INPUT = {
    "missing-transform": (lambda m, f, w, a, o: ["apply", m, "-r", f, "-t", w.parent / "absent_1Warp.nii.gz", "-t", a,
                                                 "-o", o / f"{PREFIX}moved.nii.gz"], 2, ("does not exist",), None),
    "inverting-a-displacement-field": (lambda m, f, w, a, o: ["apply", m, "-r", f, "-t", f"[{w},1]", "-t", a,
                                                              "-o", o / f"{PREFIX}moved.nii.gz"], 2, ("invert",), None),
    "missing-reference": (lambda m, f, w, a, o: ["apply", m, "-r", f.parent / "absent.nii.gz", "-t", w, "-t", a,
                                                 "-o", o / f"{PREFIX}moved.nii.gz"], 2, ("does not exist",),
                          "reference"),
    "unknown-interpolation": (lambda m, f, w, a, o: ["apply", m, "-r", f, "-t", w, "-t", a, "-o",
                                                     o / f"{PREFIX}moved.nii.gz", "--interpolation", "cubic"], 2,
                              ("invalid choice",), None),
    "unreadable-transform-names-the-file": (lambda m, f, w, a, o: ["apply", m, "-r", f, "-t", _junk_transform(f.parent),
                                                                   "-o", o / f"{PREFIX}moved.nii.gz"], 2,
                                            ("cannot read",), "junk.mat"),
}


@pytest.mark.parametrize("argv, code, words, in_line", [pytest.param(*case, id=name)
                                                        for name, case in APPLY_BAD_INPUT.items()])
def test_apply_bad_input(apply_inputs, capsys, argv, code, words, in_line):
    """Bad input to ``inrreg apply``: its exit code, one line holding one of ``words`` (and
    ``in_line``), nothing written."""
    moving, fixed, warp, mat, out = apply_inputs
    line = _assert_one_line_error(capsys, _run(argv(moving, fixed, warp, mat, out)), code, *words)
    assert in_line is None or in_line in line, line
    _assert_nothing_written(out)


def test_apply_creates_a_missing_output_directory(apply_inputs, capsys):
    moving, fixed, warp, mat, out = apply_inputs
    code = _run(["apply", moving, "-r", fixed, "-t", warp, "-t", mat, "-o", out / "a" / "b" / f"{PREFIX}moved.nii.gz"])
    assert code == 0, capsys.readouterr().err
    assert [p.name for p in (out / "a" / "b").iterdir()] == [f"{PREFIX}moved.nii.gz"]


def test_apply_failure_removes_the_directories_it_created(apply_inputs, capsys):
    moving, fixed, warp, mat, out = apply_inputs
    junk = fixed.parent / "junk.mat"
    junk.write_text("not a transform")
    code = _run(["apply", moving, "-r", fixed, "-t", junk, "-o", out / "a" / "b" / f"{PREFIX}moved.nii.gz"])
    _assert_one_line_error(capsys, code, 2, "cannot read")
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("command", ["register", "apply"])
def test_output_directory_below_a_file_is_refused(apply_inputs, capsys, command):
    """mkdir -p semantics stop at a file: ``-o out/afile/x/...`` is refused (exit 2), the file untouched."""
    moving, fixed, warp, mat, out = apply_inputs
    afile = out / "afile"
    afile.write_text("a regular file\n")
    if command == "register":
        argv = ["register", fixed, moving, "-o", f"{afile}/x/{PREFIX}", "--device", "cpu"]
    else:
        argv = ["apply", moving, "-r", fixed, "-t", warp, "-o", afile / "x" / "moved.nii.gz"]
    _assert_one_line_error(capsys, _run(argv), 2, "not a directory")
    assert afile.read_text() == "a regular file\n" and [p.name for p in out.iterdir()] == ["afile"]


@pytest.mark.parametrize("name, word", [("noext", ".nii"), ("moved.img", ".nii"), ("adir", "directory")])
def test_apply_output_must_be_a_nifti_file(apply_inputs, capsys, name, word):
    moving, fixed, warp, mat, out = apply_inputs
    (out / "adir").mkdir()
    code = _run(["apply", moving, "-r", fixed, "-t", warp, "-t", mat, "-o", out / name])
    _assert_one_line_error(capsys, code, 2, word)
    assert not (out / "noext").exists() and not (out / "moved.img").exists()
    assert not list(out.glob(".inrreg-*"))


@pytest.mark.parametrize("target", ["input", "input-symlink", "reference", "transform"])
def test_apply_output_that_is_an_input_is_refused(apply_inputs, capsys, target):
    """``apply X -r F -t T -o X`` (or -o a symlink to X, or -o the reference) would replace an input."""
    moving, fixed, warp, mat, out = apply_inputs
    if target == "input-symlink":
        output = out / "link.nii.gz"
        output.symlink_to(moving)
    else:
        output = {"input": moving, "reference": fixed, "transform": warp}[target]
    before = _snapshot(moving.parent, out)
    code = _run(["apply", moving, "-r", fixed, "-t", warp, "-t", mat, "-o", output])
    _assert_one_line_error(capsys, code, 2, "overwritten")
    assert _snapshot(moving.parent, out) == before
    assert not list(out.glob(".inrreg-*")) and not list(moving.parent.glob(".inrreg-*"))


# ----------------------------------------------------------------------------- --help


@pytest.mark.parametrize("command, names", [
    ("register", ["0GenericAffine.mat", "1Warp.nii.gz", "1InverseWarp.nii.gz", "Composite.h5", "Warped.nii.gz"]),
    ("apply", ["P1Warp.nii.gz", "P0GenericAffine.mat", "PComposite.h5"]),
])
def test_subcommand_help(capsys, monkeypatch, command, names):
    monkeypatch.setenv("COLUMNS", "100")
    code = _run([command, "--help"])
    out, err = capsys.readouterr()
    assert code == 0, err
    text = " ".join(out.split())
    for name in names:
        assert name in text, f"{name} not in `inrreg {command} --help`"


# ----------------------------------------------------------------------------- success: outputs appear


def test_register_then_apply_succeeds(pair, capsys):
    fixed, moving, out = pair
    inputs = fixed.parent
    preset = inputs / "tiny.json"
    preset.write_text(json.dumps(FAST_PRESET))
    labels = np.zeros(SHAPE, np.int16)
    labels[6:14, 4:12] = 1
    labels[12:20, 10:17] = 5
    labels[2:5, 15:19] = 12
    label_map = _save(inputs / "moving_labels.nii.gz", labels)
    before = {p.name: _md5(p) for p in inputs.iterdir()}

    code = _run(["register", fixed, moving, "-o", f"{out}/{PREFIX}", "--preset", preset, "--device", "cpu",
                 "--seed", "1", "--no-progress"])
    _, err = capsys.readouterr()
    assert code == 0, err
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(PREFIX + s for s in REGISTER_SUFFIXES)  # all of them, nothing else, no .inrreg-*
    meta = json.loads((out / f"{PREFIX}registration.json").read_text())
    assert meta["seed"] == 1 and meta["device"] == "cpu"
    assert nib.load(str(out / f"{PREFIX}Warped.nii.gz")).shape[:2] == SHAPE

    moved = out / "moved.nii.gz"
    code = _run(["apply", moving, "-r", fixed, "-t", out / f"{PREFIX}1Warp.nii.gz",
                 "-t", out / f"{PREFIX}0GenericAffine.mat", "-o", moved])
    _, err = capsys.readouterr()
    assert code == 0, err
    moved_data = np.asanyarray(nib.load(str(moved)).dataobj)
    assert moved_data.shape[:2] == SHAPE and np.isfinite(moved_data).all()

    moved_c = out / "moved_composite.nii.gz"
    code = _run(["apply", moving, "-r", fixed, "-t", out / f"{PREFIX}Composite.h5", "-o", moved_c])
    _, err = capsys.readouterr()
    assert code == 0, err
    np.testing.assert_allclose(np.asanyarray(nib.load(str(moved_c)).dataobj), moved_data, atol=1e-3 * moved_data.max())

    moved_labels = out / "moved_labels.nii.gz"
    code = _run(["apply", label_map, "-r", fixed, "-t", out / f"{PREFIX}1Warp.nii.gz",
                 "-t", out / f"{PREFIX}0GenericAffine.mat", "-o", moved_labels, "--interpolation", "label"])
    _, err = capsys.readouterr()
    assert code == 0, err
    out_labels = np.asanyarray(nib.load(str(moved_labels)).dataobj)
    assert out_labels.shape[:2] == SHAPE
    assert set(np.unique(out_labels).tolist()) <= set(np.unique(labels).tolist())
    assert len(np.unique(out_labels)) > 1

    assert not [p.name for p in out.iterdir() if p.name.startswith(".inrreg-")]
    assert {p.name: _md5(p) for p in inputs.iterdir()} == before  # inputs untouched


def test_register_two_network_rigid_from_the_command_line(pair, capsys):
    """``--method two-network --motion rigid`` runs the second method and records the rigid matrix."""
    fixed, moving, out = pair
    preset = fixed.parent / "tn.json"
    preset.write_text(json.dumps({"method": "two-network", "two_network": {"iterations": 20, "points": 256}}))
    code = _run(_register_argv(fixed, moving, out, "--preset", preset, "--motion", "rigid"))
    assert code == 0, capsys.readouterr().err
    meta = json.loads((out / f"{PREFIX}registration.json").read_text())
    assert meta["method"] == "two-network" and meta["settings"]["two_network"]["motion"] == "rigid"
    assert np.asarray(meta["rigid_matrix_ras"]).shape == (3, 3)
    assert (out / f"{PREFIX}0GenericAffine.mat").is_file()
