"""jobs/stage.py --executor slurm on the real test cluster: two small stages submitted with --wait and
advanced by continuation jobs; a second call never duplicates a queued job; after a pairs task is
cancelled, the next call submits only that task; --dry-run writes nothing; two drivers at once fail."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.slurm import SLURM, cancel_jobs_named, sh, wait_for
from helpers.stage import ARGS
from vip.orchestrate import slurm, submit
from vip.orchestrate.ledger import Ledger
from vip.rewards.base import ASPECTS
from vip.store import RunDir, read_h5

from helpers.paths import ROOT  # noqa: E402
pytestmark = pytest.mark.slurm
NAME = f"slurmstage{os.getpid()}"  # job names are vip-<run.name>-s<N>-<step>: ours only
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _cmd(run_dir, *extra, name=NAME):
    return [sys.executable, str(ROOT / "jobs/stage.py"), "--stage", "1", "--until", "2", "--executor", "slurm",
            "--partition", "gpu", "--run-dir", str(run_dir), *ARGS, *SLURM, f"run.name={name}", *extra]


def _run(cmd, timeout=120):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=ENV, timeout=timeout)


def _our_jobs(name=NAME) -> list[str]:
    """'name|array index' of every queued element of our jobs."""
    lines = sh("squeue", "-h", "-r", "--me", "-o", "%j|%K|%i").splitlines()
    return [ln.rsplit("|", 1)[0] for ln in lines if ln.startswith(f"vip-{name}-")]


@pytest.fixture
def cancel_ours():
    yield
    cancel_jobs_named(f"vip-{NAME}")


def _check_pairs(stage_dir: Path) -> None:
    """pairs.h5 obeys the target rule: the preferred video wins in the target, by more than elsewhere."""
    arrays, attrs = read_h5(stage_dir / "pairs.h5")
    record = json.loads((stage_dir / "curation.json").read_text())
    targets = json.loads(attrs["targets"])
    assert targets == json.loads((stage_dir / "target.json").read_text())["targets"] == record["targets"]
    assert len(arrays["prompts"]) == record["kept"] > 0
    t = [ASPECTS.index(a) for a in targets]
    gap = arrays["scores_w"] - arrays["scores_l"]
    assert (gap[:, t] > 0).all()
    others = [i for i in range(len(ASPECTS)) if i not in t]
    assert (gap[:, t].min(1) > gap[:, others].max(1)).all()
    for a in targets:
        assert (arrays["scores_l"][:, ASPECTS.index(a)] >= record["floors"][a] - 1e-6).all()


def test_dry_run_prints_the_job_scripts_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "dry"
    r = _run(_cmd(run_dir, "--dry-run", name=NAME + "dry"))
    assert r.returncode == 0, r.stderr
    assert not run_dir.exists()  # no config, no plan, no log folder, no lock
    out = r.stdout
    assert out.count("#!/bin/bash") == 6  # loo, select, filter, filter_merge, target, continue
    assert "#SBATCH --array=0-1%2" in out and "#SBATCH --partition=gpu" in out and "#SBATCH --partition=cpu" in out
    assert f"#SBATCH --job-name=vip-{NAME}dry-s1-loo" in out and "#SBATCH --gpus-per-node=1" in out
    assert "#SBATCH --dependency='afterany:<s1-loo>'" in out
    assert "#SBATCH --dependency='afterany:<s1-target>:<run-filter_merge>'" in out
    assert "nothing was submitted or written" in out
    assert _our_jobs(NAME + "dry") == []


def test_a_second_driver_at_once_stops_with_one_line(tmp_path):
    run = RunDir(tmp_path / "busy")
    with submit.driver_lock(run):  # the first driver, submitting
        r = _run(_cmd(run.path, name=NAME + "busy"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: another driver is submitting jobs for run {run.path} (pid "
                                                   f"{os.getpid()}"), r.stderr
    assert not (run.path / "stage1" / "jobs.json").exists() and _our_jobs(NAME + "busy") == []


def test_two_stages_on_slurm_and_a_cancelled_pairs_task_is_all_that_is_resubmitted(tmp_path, cancel_ours):
    run_dir = tmp_path / "run"
    s1, s2, per_run = Ledger(run_dir / "stage1"), Ledger(run_dir / "stage2"), Ledger(run_dir)
    waiter = subprocess.Popen(_cmd(run_dir, "--wait"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, env=ENV)
    try:
        wait_for(lambda: s1.entries("continue"), 120, "the first submission")
        assert waiter.poll() is None
        # a second driver while stage 1 runs: nothing new, nothing duplicated
        before = (s1.path.read_bytes(), per_run.path.read_bytes())
        r = _run(_cmd(run_dir))
        assert r.returncode == 0, r.stderr
        assert "nothing new to submit" in r.stdout, r.stdout
        assert (s1.path.read_bytes(), per_run.path.read_bytes()) == before
        queued = _our_jobs()
        assert len(queued) == len(set(queued)) > 0, queued

        # the continuation plans and submits the pairs; one of its tasks is cancelled (a preemption without requeue)
        pairs_id = wait_for(lambda: s1.entries("pairs") and s1.entries("pairs")[0]["job_id"], 240, "the pairs array")
        task1 = f"{pairs_id}_1"
        wait_for(lambda: slurm.job_states([task1])[task1] == "RUNNING", 60, "pairs task 1 running", poll=0.2)
        sh("scancel", task1)
        _, err = waiter.communicate(timeout=180)
    finally:
        if waiter.poll() is None:
            waiter.kill()
    assert waiter.returncode == 1, err
    assert f"stage 1 pairs task 1: job {pairs_id}_1 CANCELLED" in err and "log: " in err, err

    # the same command again: only that task, and the later steps made to wait for it
    slurm.wait([s1.entries("continue")[-1]["job_id"]], timeout=60)
    counts = {step: len(s1.entries(step)) for step in s1.steps()}
    filter_entries = per_run.read()
    r = _run(_cmd(run_dir, "--wait"), timeout=420)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    pairs_entries = s1.entries("pairs")
    assert len(pairs_entries) == 2 and list(pairs_entries[1]["elements"].values()) == [1]
    assert any(ln.split()[:3] == ["stage", "1", "pairs"] and f"submitted {pairs_entries[1]['job_id']} (array, tasks 1)"
               in ln for ln in r.stdout.splitlines()), r.stdout
    for step in ("loo", "select", "target", "continue"):
        assert len(s1.entries(step)) == counts[step], step
    assert per_run.read() == filter_entries  # the prompt filter was done: nothing for it
    for stage in (1, 2):
        assert (run_dir / f"stage{stage}" / "outcome.json").is_file()
        _check_pairs(run_dir / f"stage{stage}")
    assert s2.entries("loo") and not s2.entries("next")  # stage 2 came from stage 1's `next` job
    assert "stage 2  ReDPO" in r.stdout  # the outcome table

    # after the run: nothing to submit, and --status shows the jobs
    before = (s1.path.read_bytes(), s2.path.read_bytes(), per_run.path.read_bytes())
    r = _run(_cmd(run_dir))
    assert r.returncode == 0 and "nothing to submit: done" in r.stdout, r.stdout + r.stderr
    assert (s1.path.read_bytes(), s2.path.read_bytes(), per_run.path.read_bytes()) == before
    r = _run(_cmd(run_dir, "--status"))
    assert r.returncode == 0, r.stderr
    row = next(ln for ln in r.stdout.splitlines() if ln.startswith("pairs "))
    assert row.split()[1] == "done" and f"{pairs_id}[0-1] 1 COMPLETED, 1 CANCELLED" in row
    assert f"{pairs_entries[1]['job_id']}[1] COMPLETED" in row and "logs/stage1/pairs/" in row
