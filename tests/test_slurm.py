"""``inrreg-bids`` under Nipype's SLURM plugins, on a real single-node SLURM started by this test.

The ``slurm_cluster`` fixture installs Debian's ``slurm-wlm`` when it is missing (root and apt-get
needed; otherwise the cluster tests skip, saying why), writes a ``slurm.conf`` as
``docs/conventions.md`` says (auth/none, loopback, state under a temp dir, ports of its own, a
stand-in GPU ``Gres=gpu:1`` backed by ``/dev/null``), starts ``slurmctld`` and ``slurmd`` in the
foreground, and stops them by PID at the end (after cancelling whatever is still queued).

Then: two participants of a 6 mm demo dataset through ``--use-plugin`` SLURM (with ``LOGNAME``
unset), each submitted node checked in ``scontrol show job`` (completed; the INR registration nodes
with the GPU gres, no other node), and the derivatives compared with a MultiProc run's; one
participant through SLURMGraph (submit-and-exit, then ``--reports-only``); the array-job script
submitted as a 2-task array. The plugin-file checks and the ``LOGNAME`` fallback run without SLURM.
"""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nipype")
pytest.importorskip("bids")
pytest.importorskip("nilearn")

from inrreg_pipeline.bids_app import cluster  # noqa: E402
from inrreg_pipeline.bids_app.demo_dataset import make_demo_dataset  # noqa: E402
from inrreg_pipeline.bids_app.run import main  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARRAY_SCRIPT = REPO / "bids_app" / "slurm" / "inrreg_array.sbatch"
SLURM_COMMANDS = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
GPU_ARGS = "--gres=gpu:1 -c 1 --mem=1G"
CPU_ARGS = "-c 1 --mem=1G"
#: the options both runs share: 2 participants, 6 mm, a handful of iterations, one thread per node
COMMON = ["--sloppy", "--template-resolution", "6", "--skull-stripped", "--omp-nthreads", "1", "--device", "auto"]
#: derivative values that depend on the run, not on the computation
_RUN_KEYS = re.compile(r"runtime|peak|rss|memory|hostname|elapsed|duration|timestamp", re.I)


# ------------------------------------------------------------------------------------------------
# a single-node SLURM on this machine
# ------------------------------------------------------------------------------------------------
def _install_slurm() -> str | None:
    """Install ``slurm-wlm`` if its commands are missing; the reason to skip, or None when usable."""
    if all(shutil.which(c) for c in SLURM_COMMANDS):
        return None
    if os.environ.get("INRREG_NO_SLURM_INSTALL"):
        return "slurm-wlm is not installed and INRREG_NO_SLURM_INSTALL is set"
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "slurm-wlm is not installed and installing it needs root"
    if not shutil.which("apt-get"):
        return "slurm-wlm is not installed and there is no apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "-q", "--no-install-recommends",
           "slurm-wlm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:  # stale package lists: update once and retry
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update", "-q"], capture_output=True,
                       env=env, timeout=600)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0 or not all(shutil.which(c) for c in SLURM_COMMANDS):
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"apt-get install slurm-wlm failed (exit {proc.returncode}: {tail[0]})"
    return None


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _write_conf(root: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port = _free_ports(2)
    ncpu = os.cpu_count() or 1
    for sub in ("state", "spool", "log", "run"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=inrregtest",
        f"SlurmctldHost={host}(127.0.0.1)",
        f"SlurmctldPort={ctld_port}", f"SlurmdPort={slurmd_port}",
        "AuthType=auth/none", "CredType=cred/none", "SlurmUser=root", "SlurmdUser=root",
        f"StateSaveLocation={root / 'state'}", f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'run' / 'slurmctld.pid'}", f"SlurmdPidFile={root / 'run' / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        "SlurmctldDebug=info", "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core_Memory", "DefMemPerCPU=1024",
        "ReturnToService=2", "MpiDefault=none", "SwitchType=switch/none",
        # finished jobs stay visible to scontrol for the checks (no accounting database, no sacct)
        "MinJobAge=3600", "SchedulerParameters=sched_interval=1",
        "GresTypes=gpu",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={ncpu} RealMemory=4000 Gres=gpu:1 State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ""]))
    # a stand-in GPU: enough for the scheduler to count and allocate --gres=gpu:1
    (root / "gres.conf").write_text(f"NodeName={host} Name=gpu File=/dev/null\n")
    return conf


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    reason = _install_slurm()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm")
    conf = _write_conf(root)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons = []
    try:
        for daemon in ("slurmctld", "slurmd"):
            log = open(root / "log" / f"{daemon}.stderr", "w")
            daemons.append(subprocess.Popen([daemon, "-D", "-f", str(conf)], env=env, stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True))
            log.close()
            time.sleep(1.0)
        deadline, state = time.time() + 60, ""
        while time.time() < deadline:
            dead = [d for d in daemons if d.poll() is not None]
            if dead:
                break
            proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
            state = proc.stdout.strip()
            if proc.returncode == 0 and state.startswith(("idle", "mixed", "allocated")):
                break
            time.sleep(1.0)
        else:
            dead = []
        if dead or not state.startswith(("idle", "mixed", "allocated")):
            logs = "; ".join(p.read_text()[-400:].replace("\n", " | ") for p in sorted((root / "log").glob("*"))
                             if p.is_file())
            pytest.skip(f"the local SLURM did not come up (node state {state!r}; {logs})")
        old = os.environ.get("SLURM_CONF")
        os.environ["SLURM_CONF"] = str(conf)  # sbatch/squeue/scontrol of this process and its children
        yield {"root": root, "conf": conf, "env": env}
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
    finally:
        # nothing of ours left running, then the daemons we started, by PID
        subprocess.run(["scancel", "--full", "--state=PENDING"], env=env, capture_output=True)
        subprocess.run(["scancel", "--full", "--state=RUNNING"], env=env, capture_output=True)
        for _ in range(30):
            out = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
            if out.returncode != 0 or not out.stdout.strip():
                break
            time.sleep(1)
        for proc in reversed(daemons):
            _stop(proc)


def _jobs(ids) -> dict[int, dict]:
    """``scontrol show job -o`` of each id, as key=value dicts."""
    out = {}
    for jid in ids:
        text = subprocess.run(["scontrol", "show", "job", "-o", str(jid)], capture_output=True, text=True,
                              check=True).stdout
        out[jid] = dict(m.groups() for m in re.finditer(r"(\w+)=(\S*)", text))
    return out


def _job_ids(batch_dir: Path) -> list[int]:
    """The job ids SLURM gave the plugin's submissions (``-o batch/slurm-%j.out``)."""
    return sorted(int(m.group(1)) for p in batch_dir.glob("slurm-*.out")
                  if (m := re.fullmatch(r"slurm-(\d+)\.out", p.name)))


def _wait_queue_empty(timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        reasons = subprocess.run(["squeue", "-h", "-o", "%i %j %r"], capture_output=True, text=True).stdout.strip()
        if not reasons:
            return
        assert "DependencyNeverSatisfied" not in reasons, f"a job failed, its dependants never run: {reasons}"
        time.sleep(1)
    raise AssertionError("SLURM jobs still queued after %.0f s" % timeout)


# ------------------------------------------------------------------------------------------------
# comparing derivatives of two runs
# ------------------------------------------------------------------------------------------------
def _strip_run_keys(value):
    if isinstance(value, dict):
        return {k: _strip_run_keys(v) for k, v in value.items() if not _RUN_KEYS.search(str(k))}
    if isinstance(value, list):
        return [_strip_run_keys(v) for v in value]
    return value


def _read_tsv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if not _RUN_KEYS.search(k)} for row in csv.DictReader(f, delimiter="\t")]


def _same_value(a: str, b: str, rtol: float, atol: float) -> bool:
    try:
        return bool(np.isclose(float(a), float(b), rtol=rtol, atol=atol, equal_nan=True))
    except ValueError:
        return a == b


def _h5_points(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    tx = sitk.ReadTransform(str(path))
    pts = np.stack(np.meshgrid(*[np.linspace(-60, 60, 7)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return np.array([tx.TransformPoint(tuple(float(c) for c in p)) for p in pts])


def compare_derivatives(a: Path, b: Path, rtol: float = 0.0, atol: float = 0.0) -> list[str]:
    """Differences between two derivative folders: the same files; images, transforms (the points they
    map; HDF5 files differ in bytes by their metadata) and tables equal (exactly by default: seeded
    registration with one thread per node is bit-reproducible across processes on one machine); JSON
    equal but for run-dependent keys (runtime, memory). HTML/SVG reports: presence only (timings)."""
    import nibabel as nib

    files_a = {p.relative_to(a) for p in a.rglob("*") if p.is_file()}
    files_b = {p.relative_to(b) for p in b.rglob("*") if p.is_file()}
    problems = [f"only in one run: {sorted(map(str, files_a ^ files_b))}"] if files_a != files_b else []
    for rel in sorted(files_a & files_b):
        pa, pb, name = a / rel, b / rel, rel.name
        if name.endswith((".nii", ".nii.gz")):
            ia, ib = nib.load(str(pa)), nib.load(str(pb))
            if ia.shape != ib.shape or not np.allclose(ia.affine, ib.affine, atol=1e-6):
                problems.append(f"{rel}: grid differs")
            elif not np.allclose(ia.get_fdata(), ib.get_fdata(), rtol=rtol, atol=atol, equal_nan=True):
                problems.append(f"{rel}: max |diff| {np.abs(ia.get_fdata() - ib.get_fdata()).max():.3g}")
        elif name.endswith(".h5"):
            if not np.allclose(_h5_points(pa), _h5_points(pb), rtol=rtol, atol=atol):
                problems.append(f"{rel}: transforms differ")
        elif name.endswith(".json"):
            ja, jb = json.loads(pa.read_text()), json.loads(pb.read_text())
            if name == "dataset_description.json":
                continue  # SourceDatasets/DatasetLinks name the same input; nothing run-specific to compare
            if _strip_run_keys(ja) != _strip_run_keys(jb):
                problems.append(f"{rel}: JSON differs")
        elif name.endswith(".tsv"):
            ra, rb = _read_tsv(pa), _read_tsv(pb)
            if len(ra) != len(rb) or any(ra_[k] != rb_.get(k) and not _same_value(ra_[k], rb_.get(k, ""), rtol, atol)
                                         for ra_, rb_ in zip(ra, rb) for k in ra_):
                problems.append(f"{rel}: table differs")
        elif name.endswith((".html", ".svg")):
            continue
        elif pa.read_bytes() != pb.read_bytes():
            problems.append(f"{rel}: bytes differ")
    return problems


def _cli(args, env=None, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "inrreg_pipeline.bids_app.run", *map(str, args)],
                          capture_output=True, text=True, env={k: v for k, v in env.items() if v is not None},
                          timeout=timeout)


# ------------------------------------------------------------------------------------------------
# without SLURM: the plugin file, LOGNAME, the GPU nodes
# ------------------------------------------------------------------------------------------------
def _bare_dataset(root: Path) -> Path:
    """A folder that passes the path checks (the plugin file is read before the dataset)."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.9.0"}')
    return root


@pytest.mark.parametrize("text, message", [
    ("plugin: [\n", "is not valid YAML"),
    ("plugin_args: {}\n", "needs a 'plugin:' key"),
    ("- SLURM\n", "needs a 'plugin:' key"),
    ("plugin: SLRM\n", "unknown plugin 'SLRM'"),
    ("plugin: SLURM\nplugn_args: {}\n", "unknown key(s) plugn_args"),
    ("plugin: SLURM\nplugin_args: [1, 2]\n", "'plugin_args' must be a mapping"),
    ("plugin: SLURM\nplugin_args: {sbatch_args: 4}\n", "plugin_args.sbatch_args must be a string"),
    ("plugin: SLURM\ngpu_sbatch_args: \"--gres=gpu:1 '-c 2\"\n", "cannot be split into options"),
    ("plugin: MultiProc\nplugin_args: {n_procs: 0}\n", "plugin_args.n_procs must be an integer >= 1"),
])
def test_bad_plugin_file_one_line_exit_64(tmp_path, capsys, text, message):
    bids = _bare_dataset(tmp_path / "bids")
    (tmp_path / "plugin.yml").write_text(text)
    code = main([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
                 "--use-plugin", str(tmp_path / "plugin.yml")])
    err = capsys.readouterr().err
    assert code == 64, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()  # failed before any work


def test_missing_plugin_file_and_missing_sbatch(tmp_path, capsys, monkeypatch):
    bids = _bare_dataset(tmp_path / "bids")
    base = [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work")]
    assert main(base + ["--use-plugin", str(tmp_path / "none.yml")]) == 64
    assert "No such file" in capsys.readouterr().err
    (tmp_path / "slurm.yml").write_text("plugin: slurm\n")  # any case, as Nipype spells it afterwards
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main(base + ["--use-plugin", str(tmp_path / "slurm.yml")]) == 64
    err = capsys.readouterr().err
    assert "plugin SLURM needs 'sbatch' on PATH" in err and err.count("\n") == 1


def test_plugin_settings(tmp_path, monkeypatch):
    from inrreg_pipeline.bids_app.parser import parse_args

    (tmp_path / "p.yml").write_text("plugin: SLURMGraph\nplugin_args: {sbatch_args: '-p cpu'}\n"
                                    "gpu_sbatch_args: '-p gpu --gres=gpu:1'\n")
    s = cluster.load_plugin_file(tmp_path / "p.yml")
    assert (s.plugin, s.plugin_args, s.gpu_sbatch_args) == ("SLURMGraph", {"sbatch_args": "-p cpu"},
                                                            "-p gpu --gres=gpu:1")
    assert s.batch and s.graph
    # SLURMGraph without plugin_args: Nipype's plugin would miss an attribute; the app fills it in
    (tmp_path / "g.yml").write_text("plugin: SLURMGraph\n")
    opts = parse_args(["b", "o", "participant", "--use-plugin", str(tmp_path / "g.yml")])
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    (tmp_path / "sbatch").write_text("#!/bin/sh\n")
    (tmp_path / "sbatch").chmod(0o755)
    s = cluster.plugin_settings(opts)
    assert s.plugin_args == {"dont_resubmit_completed_jobs": False}
    from nipype.pipeline.plugins import SLURMGraphPlugin

    assert SLURMGraphPlugin(plugin_args=s.plugin_args)._dont_resubmit_completed_jobs is False
    # MultiProc from a file still gets forkserver workers and GPU slots underneath
    (tmp_path / "mp.yml").write_text("plugin: MultiProc\nplugin_args: {n_procs: 3}\n")
    opts = parse_args(["b", "o", "participant", "--use-plugin", str(tmp_path / "mp.yml")])
    s = cluster.plugin_settings(opts)
    assert s.plugin_args["n_procs"] == 3 and s.plugin_args["mp_context"] == "forkserver"
    assert s.plugin_args["n_gpu_procs"] >= 1 and not s.batch
    # --gpu-sbatch-args (written with '=') overrides the file
    opts = parse_args(["b", "o", "participant", "--gpu-sbatch-args=--gres=gpu:2 -c 8"])
    assert cluster.plugin_settings(opts).gpu_sbatch_args == "--gres=gpu:2 -c 8"


def test_logname_fallback(monkeypatch):
    import getpass

    for var in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(var, raising=False)
    assert cluster.ensure_logname() == getpass.getuser() and os.environ["LOGNAME"]
    monkeypatch.delenv("LOGNAME")

    def no_user():
        raise KeyError("getpwuid(): uid not found")

    monkeypatch.setattr(getpass, "getuser", no_user)  # an arbitrary UID in a container
    assert cluster.ensure_logname() == f"uid{os.getuid()}" == os.environ["LOGNAME"]
    monkeypatch.setenv("LOGNAME", "alice")
    assert cluster.ensure_logname() == "alice"


def test_gpu_nodes_get_their_own_sbatch_args(tmp_path):
    """Only the INR registration nodes (interface with ``use_gpu``) get the GPU arguments, and only
    when not pinned to the CPU; the flag's value (False on a host without CUDA) does not matter."""
    from inrreg_pipeline.workflows import init_inr_registration_wf, init_multimodal_coreg_wf
    from inrreg_pipeline.workflows.base import LiterateWorkflow

    def build(device):
        top = LiterateWorkflow("top")
        top.add_nodes([init_inr_registration_wf(device=device, use_gpu=False, name="a_wf"),
                       init_multimodal_coreg_wf(contrast="T2w", device=device, name="b_wf")])
        return top

    slurm = cluster.PluginSettings("SLURM", {"sbatch_args": CPU_ARGS}, GPU_ARGS)
    top = build("auto")
    names = cluster.apply_gpu_sbatch_args(top, slurm, "auto")
    assert names and all(n.endswith("inr_registration") for n in names) and len(names) == 2, names
    for name in top.list_node_names():
        node = top.get_node(name)
        expected = {"sbatch_args": GPU_ARGS, "overwrite": True} if name in names else {}
        assert (node.plugin_args or {}) == expected, name
    assert cluster.apply_gpu_sbatch_args(build("cpu"), slurm, "cpu") == []
    assert cluster.apply_gpu_sbatch_args(build("auto"), cluster.PluginSettings("MultiProc", {}, GPU_ARGS)) == []


# ------------------------------------------------------------------------------------------------
# on the local cluster
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm_data")
    return root, make_demo_dataset(root / "bids", resolution=6.0, n_participants=2, t2w=False)


@pytest.fixture(scope="module")
def multiproc_run(dataset):
    """The MultiProc reference, started in the background: it overlaps the SLURM runs, which mostly
    wait (job start-up, scheduling, polling), to keep this module's wall time down. Call it for the
    output folder (waits for the run)."""
    root, bids = dataset
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "inrreg_pipeline.bids_app.run", str(bids),
                             str(root / "out_multiproc"), "participant", "-w", str(root / "work_multiproc"),
                             "--nprocs", "2", *COMMON], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    done = {}

    def result() -> Path:
        if not done:
            _, err = proc.communicate(timeout=600)
            assert proc.returncode == 0, err[-3000:]
            done["out"] = root / "out_multiproc"
        return done["out"]

    yield result
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_slurm_plugin_matches_multiproc(slurm_cluster, dataset, multiproc_run):
    root, bids = dataset
    (root / "slurm.yml").write_text(f"plugin: SLURM\nplugin_args:\n  sbatch_args: \"{CPU_ARGS}\"\n")
    work, out = root / "work_slurm", root / "out_slurm"
    start = time.perf_counter()
    # LOGNAME unset (the plugin names jobs after it): the app sets it
    proc = _cli([bids, out, "participant", "-w", work, "--use-plugin", root / "slurm.yml",
                 f"--gpu-sbatch-args={GPU_ARGS}", *COMMON], env={"LOGNAME": None})
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "sub-01.html").is_file() and (out / "sub-02.html").is_file()

    # every submitted node went through sbatch and completed; the GPU gres only on INR registration
    batch = work / "inrreg_wf" / "batch"
    ids = _job_ids(batch)
    scripts = list(batch.glob("batchscript_*.sh"))
    assert len(ids) == len(scripts) >= 10, (ids, len(scripts))
    jobs = _jobs(ids)
    names = {j["JobName"] for j in jobs.values()}
    for jid, job in jobs.items():
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", (jid, job)
        gres = "gpu" in job.get("TresPerNode", "") or "gpu" in job.get("TRES", "")
        assert gres == job["JobName"].startswith("inr_registration."), (jid, job["JobName"], job.get("TresPerNode"))
    for sub in ("01", "02"):
        assert any(n.startswith("inr_registration.") and f".sub_{sub}_wf." in n for n in names), names
    # the jobs' names end with the LOGNAME the app filled in
    assert all(n.endswith("." + jobs[ids[0]]["JobName"].rsplit(".", 1)[1]) for n in names)

    problems = compare_derivatives(multiproc_run(), out)
    assert not problems, problems
    print(f"\nSLURM: {len(ids)} jobs, {elapsed:.1f} s (MultiProc in parallel)")


def test_slurmgraph_submits_then_reports(slurm_cluster, dataset, multiproc_run):
    """SLURMGraph submits the whole graph with afterok dependencies and exits; the derivatives appear
    when the jobs finish, and ``--reports-only`` then writes the report."""
    root, bids = dataset
    (root / "graph.yml").write_text(f"plugin: SLURMGraph\nplugin_args: {{sbatch_args: '{CPU_ARGS}'}}\n"
                                    f"gpu_sbatch_args: '{GPU_ARGS}'\n")
    work, out = root / "work_graph", root / "out_graph"
    args = [bids, out, "participant", "-w", work, "--use-plugin", root / "graph.yml", "--participant-label", "01",
            *COMMON]
    proc = _cli(args)
    assert proc.returncode == 0 and "--reports-only" in proc.stdout, proc.stderr[-3000:]
    submit = (work / "inrreg_wf" / "batch" / "submit_jobs.sh").read_text()
    lines = [ln for ln in submit.splitlines() if "sbatch" in ln]
    assert lines and all("--gres=gpu:1" in ln for ln in lines if "_inr_registration " in ln)
    assert sum("--gres=gpu:1" in ln for ln in lines) == 1, lines
    assert any("--dependency=afterok:" in ln for ln in lines)
    _wait_queue_empty()
    assert not (out / "sub-01.html").exists()
    proc = _cli([*args, "--reports-only"])
    assert proc.returncode == 0 and (out / "sub-01.html").is_file(), proc.stderr[-3000:]
    ref = root / "ref_sub01"
    shutil.copytree(multiproc_run(), ref, ignore=shutil.ignore_patterns("sub-02*"))
    problems = compare_derivatives(ref, out)
    assert not problems, problems


def test_array_script(slurm_cluster, dataset, tmp_path):
    """The array script as users submit it: one task per participants.tsv line, labels and work dirs per
    task (the app replaced by ``echo`` so that only the script and SLURM are under test)."""
    root, bids = dataset
    logs = tmp_path / "logs"
    logs.mkdir()
    proc = subprocess.run(["sbatch", "--wait", "--array=1-2", "-c", "1", "--mem=1G", "--gres=gpu:1",
                           f"--output={logs}/%A_%a.out", "--export=ALL,INRREG_BIDS=echo inrreg-bids",
                           f"--chdir={tmp_path}", str(ARRAY_SCRIPT), str(bids), str(tmp_path / "out"), "--sloppy"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    outs = sorted(logs.glob("*.out"))
    assert len(outs) == 2, outs
    commands = sorted(p.read_text().strip().splitlines()[-1] for p in outs)
    for sub, cmd in zip(("01", "02"), commands):
        assert cmd.startswith(f"inrreg-bids {bids} {tmp_path / 'out'} participant --participant-label {sub} "), cmd
        assert f"-w {tmp_path / 'work' / ('sub-' + sub)}" in cmd and cmd.endswith("--sloppy"), cmd
        assert "--nprocs 1" in cmd, cmd


def test_compare_derivatives_sees_differences(tmp_path):
    """The comparison the cluster tests rely on: run-dependent values ignored, anything else reported."""
    import nibabel as nib

    for run in ("a", "b"):
        d = tmp_path / run / "sub-01" / "anat"
        d.mkdir(parents=True)
        nib.save(nib.Nifti1Image(np.ones((3, 3, 3), np.float32), np.eye(4)), str(d / "x.nii.gz"))
        (d / "x.json").write_text(json.dumps({"Sources": ["bids:raw:x"], "Registration": {"runtime_s": run}}))
        (d / "m.tsv").write_text(f"method\tdice\truntime_s\ninr\t0.5\t{len(run)}.{ord(run)}\n")
    assert compare_derivatives(tmp_path / "a", tmp_path / "b") == []
    b = tmp_path / "b" / "sub-01" / "anat"
    nib.save(nib.Nifti1Image(np.full((3, 3, 3), 1 + 1e-6, np.float32), np.eye(4)), str(b / "x.nii.gz"))
    (b / "x.json").write_text(json.dumps({"Sources": ["bids:raw:y"], "Registration": {"runtime_s": 0}}))
    (b / "m.tsv").write_text("method\tdice\truntime_s\ninr\t0.6\t1\n")
    (b / "extra.txt").write_text("")
    problems = compare_derivatives(tmp_path / "a", tmp_path / "b")
    assert len(problems) == 4 and "only in one run" in problems[0], problems


@pytest.mark.skipif(not os.environ.get("INRREG_SLURM_BENCH"),
                    reason="benchmark (minutes): INRREG_SLURM_BENCH=1 to run; figures in "
                           "benchmarks/results/slurm_vs_multiproc.md")
def test_benchmark_slurm_vs_multiproc(slurm_cluster, tmp_path):
    """Wall time of N = 2 and 4 participants (6 mm, --sloppy) with MultiProc (2 processes) and SLURM
    (the local node: 2 CPUs, -c 1 per job), and the scheduling overhead per submitted node from
    ``scontrol`` (submit/start/end, 1 s resolution) and Nipype's own node runtimes."""
    from datetime import datetime

    from nipype.utils.filemanip import loadpkl

    (tmp_path / "slurm.yml").write_text(f"plugin: SLURM\nplugin_args:\n  sbatch_args: \"{CPU_ARGS}\"\n")
    rows = []
    for n in (2, 4):
        bids = make_demo_dataset(tmp_path / f"bids{n}", resolution=6.0, n_participants=n, t2w=False)
        t0 = time.perf_counter()
        proc = _cli([bids, tmp_path / f"mp{n}", "participant", "-w", tmp_path / f"wmp{n}", "--nprocs", "2", *COMMON])
        t_mp = time.perf_counter() - t0
        assert proc.returncode == 0, proc.stderr[-2000:]
        work = tmp_path / f"wsl{n}"
        t0 = time.perf_counter()
        proc = _cli([bids, tmp_path / f"sl{n}", "participant", "-w", work, "--use-plugin", tmp_path / "slurm.yml",
                     f"--gpu-sbatch-args={GPU_ARGS}", *COMMON])
        t_sl = time.perf_counter() - t0
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert not compare_derivatives(tmp_path / f"mp{n}", tmp_path / f"sl{n}")
        jobs = _jobs(_job_ids(work / "inrreg_wf" / "batch"))
        stamp = lambda text: datetime.fromisoformat(text).timestamp()  # noqa: E731
        queue, startup, node_s = [], [], []
        for job in jobs.values():
            parts = job["JobName"].split(".")[:-1][::-1]  # root-first hierarchy, LOGNAME dropped
            node_dir = work.joinpath(*parts)
            result = loadpkl(next(node_dir.glob("result_*.pklz")))
            duration = float(result.runtime.duration)
            queue.append(stamp(job["StartTime"]) - stamp(job["SubmitTime"]))
            startup.append(stamp(job["EndTime"]) - stamp(job["StartTime"]) - duration)
            node_s.append(duration)
        rows.append((n, t_mp, t_sl, len(jobs), float(np.sum(node_s)), float(np.mean(queue)), float(np.mean(startup))))
    print("\n| N | MultiProc (s) | SLURM (s) | jobs | node run time, sum (s) | queue wait / job (s) "
          "| job run time - node run time / job (s) | (SLURM - MultiProc) / job (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for n, t_mp, t_sl, n_jobs, node_sum, q, st in rows:
        print(f"| {n} | {t_mp:.1f} | {t_sl:.1f} | {n_jobs} | {node_sum:.1f} | {q:.1f} | {st:.1f} | "
              f"{(t_sl - t_mp) / n_jobs:.1f} |")


@pytest.mark.skipif(not os.environ.get("INRREG_SLURM_BENCH"), reason="benchmark: INRREG_SLURM_BENCH=1 to run")
def test_benchmark_empty_job_roundtrip(slurm_cluster):
    """The scheduler alone, on the idle node: ``srun`` of ``true`` (allocation, launch, clean-up) and of
    Python importing Nipype's engine (what every node's job does before its interface runs); and the
    same import outside SLURM."""
    cases = {"srun true": ["srun", "-c", "1", "--mem=100M", "true"],
             "srun python -c 'import nipype.pipeline.engine'": ["srun", "-c", "1", "--mem=100M", sys.executable, "-c",
                                                                "import nipype.pipeline.engine"],
             "python -c 'import nipype.pipeline.engine' (no SLURM)": [sys.executable, "-c",
                                                                      "import nipype.pipeline.engine"]}
    for what, cmd in cases.items():
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            runs.append(time.perf_counter() - t0)
            assert proc.returncode == 0, proc.stderr
        print(f"\n{what}: median {np.median(runs):.2f} s, min {min(runs):.2f} s over {len(runs)}")
