"""The container image, checked by reading (no Docker daemon in CI): the Dockerfile parses into known
instructions; it installs the package with the same install step CI runs (``.ci/install``, which
``make setup`` calls, which ``make test`` and ``.ci/run`` go through); ``inrreg-bids`` is the
ENTRYPOINT; no USER line, ``$HOME`` open to any UID, thread variables, OCI labels, a CUDA -devel base and
tiny-cuda-nn behind a build argument; the container tag reaches ``GeneratedBy.Container``. And the
device selection inside a container without a usable GPU falls back to the CPU.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
                "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """``[(INSTRUCTION, arguments)]``: comments and parser directives dropped, ``\\`` continuations joined
    (comment and blank lines inside a continuation skipped, as BuildKit does). ``ValueError`` on an
    unknown instruction or a dangling continuation."""
    out, buf, start = [], "", 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not buf:
            start = number
        if stripped.endswith("\\"):
            buf += stripped[:-1].rstrip() + " "
            continue
        buf += stripped
        keyword, _, args = buf.partition(" ")
        if keyword.upper() not in INSTRUCTIONS:
            raise ValueError(f"line {start}: unknown instruction {keyword!r}")
        out.append((keyword.upper(), args.strip()))
        buf = ""
    if buf:
        raise ValueError(f"line {start}: continuation at the end of the file")
    return out


def pairs(args: str) -> dict[str, str]:
    """``KEY=VALUE ...`` of ARG/ENV/LABEL (quotes honoured)."""
    return dict(item.partition("=")[::2] for item in shlex.split(args))


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


@pytest.fixture(scope="module")
def dockerfile():
    return parse_dockerfile((REPO / "Dockerfile").read_text())


def _all(instrs, kind):
    return [args for k, args in instrs if k == kind]


def test_parser_rejects_broken_files():
    assert parse_dockerfile("# syntax=docker/dockerfile:1\nFROM a\nRUN x \\\n  # c\n  && y\n") == \
        [("FROM", "a"), ("RUN", "x && y")]
    with pytest.raises(ValueError, match="unknown instruction 'FORM'"):
        parse_dockerfile("FORM a\n")
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("FROM a\nRUN x \\\n")


def test_dockerfile_structure(dockerfile):
    kinds = [k for k, _ in dockerfile]
    assert kinds.count("FROM") == 1 and set(kinds[:kinds.index("FROM")]) <= {"ARG"}, kinds
    args = {}  # FROM sees the ARGs declared before it (and only those)
    for a in [a for k, a in dockerfile[:kinds.index("FROM")] if k == "ARG"]:
        args.update(pairs(a))
    base = _all(dockerfile, "FROM")[0]
    base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
    # CUDA-enabled PyTorch with the toolkit (-devel) to build tinycudann
    assert re.fullmatch(r"pytorch/pytorch:2\.\d+\.\d+-cuda12\.\d+-cudnn\d+-devel", base), base
    # the app is the entrypoint, exec form
    assert exec_form(_all(dockerfile, "ENTRYPOINT")[-1]) == ["inrreg-bids"]
    assert "inrreg-bids = inrreg_pipeline.bids_app.run:main" in (REPO / "setup.cfg").read_text()
    # any UID: no USER line, $HOME writable by group/others like by its owner
    assert "USER" not in kinds
    env = {}
    for e in _all(dockerfile, "ENV"):
        env.update(pairs(e))
    assert env["HOME"] and any('chmod -R go=u "$HOME"' in r or "chmod -R go=u $HOME" in r
                               for r in _all(dockerfile, "RUN"))
    assert env["OMP_NUM_THREADS"] == "1" and env["MKL_NUM_THREADS"] == "1"
    labels = {}
    for lab in _all(dockerfile, "LABEL"):
        labels.update(pairs(lab))
    for key in ("title", "description", "source", "licenses", "version", "revision", "created"):
        assert labels.get(f"org.opencontainers.image.{key}"), key
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_run_steps_are_valid_shell(dockerfile):
    """Every RUN (shell form, /bin/sh -c) parses as shell: a broken continuation or an unbalanced
    if/fi would otherwise only show at `docker build`."""
    for args in _all(dockerfile, "RUN"):
        proc = subprocess.run(["sh", "-n", "-c", args], capture_output=True, text=True)
        assert proc.returncode == 0, (args, proc.stderr)


def test_tinycudann_behind_build_arg(dockerfile):
    args = {}
    for a in _all(dockerfile, "ARG"):
        args.update(pairs(a))
    assert args["WITH_TCNN"] == "1"
    archs = [int(a) for a in args["TCNN_CUDA_ARCHITECTURES"].split(";")]
    assert {70, 80, 86, 90} <= set(archs), archs
    (tcnn,) = [r for r in _all(dockerfile, "RUN") if "tiny-cuda-nn" in r]
    assert '"$WITH_TCNN" = "1"' in tcnn and "--no-build-isolation" in tcnn
    assert 'TCNN_CUDA_ARCHITECTURES="$TCNN_CUDA_ARCHITECTURES"' in tcnn and "subdirectory=bindings/torch" in tcnn


def test_install_step_is_the_one_ci_runs(dockerfile):
    """No drift: the image, `make setup` (README's `make demo`/`make test`) and CI use .ci/install."""
    runs = _all(dockerfile, "RUN")
    installs = [r for r in runs if ".ci/install" in r]
    assert len(installs) == 1, runs
    # ... and the package is installed nowhere else in the image
    assert not any(re.search(r"pip install[^&;]*(\s-e\s|\s\.\[|\s\.\s|/opt/inrreg|\binrreg\b)", r) for r in runs)
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^\$\(STAMP\):.*\n((?:\t.*\n)+)", makefile, re.M).group(1)
    assert re.search(r"^\t\.ci/install \$\(PY\) test$", recipe, re.M), recipe
    assert "pip install" not in recipe
    assert re.search(r"^test: setup$", makefile, re.M) and re.search(r"^setup: \$\(STAMP\)$", makefile, re.M)
    assert re.search(r"^make test$", (REPO / ".ci" / "run").read_text(), re.M)
    script = REPO / ".ci" / "install"
    assert os.access(script, os.X_OK)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert re.search(r"pip install -q -e \"\.\[\$EXTRAS\]\"", script.read_text())
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme and "docker build" in readme


def test_dockerignore_keeps_local_state_out():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "work", "demo_output"} <= set(ignored)
    for needed in ("setup.cfg", "pyproject.toml", "README.md", ".ci", "inrreg_pipeline", "bids_app", "workflows"):
        assert needed not in ignored


def test_container_tag_reaches_dataset_description(dockerfile, tmp_path, monkeypatch):
    from inrreg_pipeline.bids_app.derivative_dataset import write_dataset_description

    env = {}
    for e in _all(dockerfile, "ENV"):
        env.update(pairs(e))
    assert env["INRREG_CONTAINER_TYPE"] == "docker" and env["INRREG_CONTAINER_TAG"] == "${CONTAINER_TAG}"
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text('{"Name": "raw", "BIDSVersion": "1.9.0"}')

    def generated_by(out):
        write_dataset_description(out, bids)
        return json.loads((out / "dataset_description.json").read_text())["GeneratedBy"][0]

    for var in ("INRREG_CONTAINER_TYPE", "INRREG_CONTAINER_TAG", "APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"):
        monkeypatch.delenv(var, raising=False)
    assert "Container" not in generated_by(tmp_path / "plain")
    monkeypatch.setenv("INRREG_CONTAINER_TYPE", "docker")
    monkeypatch.setenv("INRREG_CONTAINER_TAG", "inrreg/inrreg:1.2.3")
    assert generated_by(tmp_path / "docker")["Container"] == {"Type": "docker", "Tag": "inrreg/inrreg:1.2.3"}
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/inrreg.sif")  # the Docker image run by Apptainer
    assert generated_by(tmp_path / "sif")["Container"] == {"Type": "apptainer", "Tag": "inrreg/inrreg:1.2.3"}


def test_container_tag_through_the_cli(tmp_path):
    """The app itself (``--boilerplate-only``: no processing) with the image's variables set."""
    import nibabel as nib
    import numpy as np

    bids = tmp_path / "bids"
    (bids / "sub-01" / "anat").mkdir(parents=True)
    (bids / "dataset_description.json").write_text('{"Name": "raw", "BIDSVersion": "1.9.0"}')
    img = nib.Nifti1Image(np.random.default_rng(0).random((12, 12, 12), dtype=np.float32), np.eye(4) * 4)
    nib.save(img, str(bids / "sub-01" / "anat" / "sub-01_T1w.nii.gz"))
    env = {k: v for k, v in os.environ.items() if k not in ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER")}
    env.update(INRREG_CONTAINER_TYPE="docker", INRREG_CONTAINER_TAG="inrreg:test", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "inrreg_pipeline.bids_app.run", str(bids), str(tmp_path / "out"),
                           "participant", "-w", str(tmp_path / "work"), "--sloppy", "--skull-stripped",
                           "--boilerplate-only"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    desc = json.loads((tmp_path / "out" / "dataset_description.json").read_text())
    assert desc["GeneratedBy"][0]["Container"] == {"Type": "docker", "Tag": "inrreg:test"}


_DEVICE_PROBE = """
import json, torch
from inrreg_pipeline.core.space import resolve_device
from inrreg_pipeline.interfaces.base import resolve_device_for_node
out = {"available": torch.cuda.is_available(), "auto": str(resolve_device("auto")),
       "node": list(resolve_device_for_node("auto", True)), "cpu": str(resolve_device("cpu"))}
try:
    resolve_device("cuda")
    out["cuda"] = "no error"
except ValueError as err:
    out["cuda"] = str(err)
print(json.dumps(out))
"""


def test_device_falls_back_to_cpu_without_cuda():
    """As in a container started without ``--gpus``/``--nv`` (or with the GPUs hidden): ``auto`` is the
    CPU, a GPU-flagged node runs on the CPU with a note, an explicit ``cuda`` is a clear error."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _DEVICE_PROBE], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["available"] is False and out["auto"] == "cpu" and out["cpu"] == "cpu"
    assert out["node"][0] == "cpu" and "ran on the CPU" in out["node"][1]
    assert "CUDA is not available" in out["cuda"]
