"""Bad input on the Slurm path of jobs/stage.py: one line on stderr and exit 2, nothing submitted.
An unknown partition or account, sbatch refusing a job (its own message and the command), no sbatch on
PATH, a second driver while the lock is held (named holder), and a run directory the nodes may not see."""
import dataclasses
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.slurm import SLURM, make_ctx, sh
from helpers.stage import ARGS
from vip.orchestrate import slurm, submit
from vip.orchestrate.ledger import Ledger
from vip.store import RunDir

from helpers.paths import ROOT  # noqa: E402
NAME = f"slurmbad{os.getpid()}"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _stage(run_dir, *extra, env=ENV):
    cmd = [sys.executable, str(ROOT / "jobs/stage.py"), "--stage", "1", "--executor", "slurm", "--run-dir",
           str(run_dir), *ARGS, *SLURM, f"run.name={NAME}", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)


def _one_error_line(r) -> str:
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


def _ours() -> list[str]:
    return [ln for ln in sh("squeue", "-h", "-r", "--me", "-o", "%j").splitlines() if ln.startswith(f"vip-{NAME}")]


@pytest.mark.slurm
@pytest.mark.parametrize("key", ["partition", "cpu_partition"])
def test_an_unknown_partition_is_one_line(tmp_path, key):
    line = _one_error_line(_stage(tmp_path / "run", f"slurm.{key}=nosuchpart"))
    assert f"slurm.{key}='nosuchpart' is not a partition of this cluster (sinfo lists: cpu, gpu)" in line
    assert not (tmp_path / "run").exists() and _ours() == []


@pytest.mark.slurm
def test_an_unknown_account_is_one_line(tmp_path):
    line = _one_error_line(_stage(tmp_path / "run", "slurm.account=nosuchaccount", "--dry-run"))
    assert "slurm.account='nosuchaccount' is not an account of this user (sacctmgr lists: " in line
    assert _ours() == []


@pytest.mark.slurm
def test_sbatch_refusing_a_job_gives_its_own_message_and_the_command(tmp_path):
    """Past the checks (a partition removed in between, a QOS limit...): submitit's FailedJobError becomes a
    SlurmError (exit 2 in fail_cleanly) with sbatch's words and the sbatch options that were refused."""
    ctx = make_ctx(tmp_path / "run", [f"run.name={NAME}", "slurm.cpu_partition=nosuchpart"])
    with pytest.raises(slurm.SlurmError) as e:
        slurm.submit_job(ctx, "select", print, kind="cpu")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"'sbatch --job-name=vip-{NAME}-s1-select --partition=nosuchpart <script in ")
    assert "failed: sbatch: error: invalid partition specified: nosuchpart" in msg
    assert Ledger(ctx.dir).entries("select") == [] and _ours() == []
    # and the array path
    with pytest.raises(slurm.SlurmError, match="--partition=nosuchpart .*invalid partition specified"):
        slurm.map_array(tmp_path / "logs", print, [1, 2], dataclasses.replace(ctx.cfg.slurm, partition="nosuchpart"),
                        f"vip-{NAME}-arr")


def test_no_sbatch_on_path_suggests_the_local_executor(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    for flags in ([], ["--dry-run"]):
        line = _one_error_line(_stage(tmp_path / "run", *flags, env={**ENV, "PATH": str(empty)}))
        assert "'sbatch' is not on PATH" in line and "--executor local" in line, line
    assert not (tmp_path / "run").exists()


@pytest.mark.slurm
def test_a_second_driver_names_the_holder_of_the_lock(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "busy")
    with submit.driver_lock(run):
        holder = json.loads((run.path / (submit.LOCK + ".json")).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        assert holder["slurm_job_id"] == ""  # a person's driver; a continuation job writes its job id
        line = _one_error_line(_stage(run.path))
    assert line.startswith(f"error: another driver is submitting jobs for run {run.path} (pid {os.getpid()} on "
                           f"{socket.gethostname()}, jobs/stage.py, since "), line
    assert not (run.path / "stage1" / "jobs.json").exists() and _ours() == []


def test_the_lock_sidecar_names_the_slurm_job(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    run = RunDir(tmp_path / "r")
    with submit.driver_lock(run):
        holder = json.loads((run.path / (submit.LOCK + ".json")).read_text())
    assert holder["slurm_job_id"] == "4242" and holder["what"] == "Slurm job 4242"
    assert not (run.path / (submit.LOCK + ".json")).exists()


def test_a_run_dir_under_tmp_is_a_warning_when_the_nodes_are_several_machines():
    two = {"node-a", "node-b"}
    for local in ("/tmp/run", "/dev/shm/x/run", "/var/tmp/r"):
        w = slurm.run_dir_warning(Path(local), two)
        assert w.startswith(f"warning: the run directory {local} is under ") and "2 hosts (node-a, node-b)" in w
    assert slurm.run_dir_warning(Path("/tmp/run"), {"localhost"}) is None  # one machine: it sees its /tmp
    assert slurm.run_dir_warning(Path("/home/u/runs/r"), two) is None
    assert slurm.run_dir_warning(Path("/tmpfoo/r"), two) is None


@pytest.mark.slurm
def test_the_test_cluster_is_one_machine_so_no_warning(tmp_path):
    assert slurm.node_hostnames() == {"localhost"}
    r = _stage(tmp_path / "run", "--dry-run")
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
