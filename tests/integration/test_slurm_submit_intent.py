"""A driver killed while sbatch is out (between sbatch and its ledger write) never makes the next driver
submit the same work again, on the real cluster.

`sbatch` here is a script earlier on PATH that execs the real one with a delay, in two places:
  - reply: the real sbatch has submitted, the answer is held back: the job exists, the ledger does not
    know it. The next driver finds it by its tag (--comment) and adopts it;
  - request: the delay comes first, the driver is killed during it: the submission dies with the driver
    (it never reaches the controller), and the next driver submits it once.
Either way: exactly one leave-one-out array for the run in squeue / sacct, and the work ends correct
(every task's shard, merged by the select job).
"""
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers.slurm import SLURM, cancel_jobs_named, sh, wait_for
from vip import config
from vip.orchestrate import slurm
from vip.orchestrate.ledger import Ledger
from vip.steps import loo, select
from vip.steps.context import StageContext
from vip.store import RunDir

from helpers.paths import ROOT  # noqa: E402
pytestmark = [pytest.mark.slurm, pytest.mark.slow]
NAME = f"intent{os.getpid()}"
ARGS = ["model.steps=4", "prompts.eval_count=6", "select.k=2", "loo.batch_size=6",
        "loo.units=down_blocks.0.motion_modules.0,down_blocks.1.motion_modules.1,up_blocks.2.motion_modules.0,"
        "mid_block.motion_modules.0,up_blocks.1.motion_modules.2", "runtime.progress=false"]
DELAY = 20  # seconds the fake sbatch holds back: the driver is killed well inside it

FAKE = """#!/bin/bash
# sbatch, slowed down ({mode}): the real one is {real}
echo $$ > {marks}/started
if [ {mode} = request ]; then sleep {delay}; exec {real} "$@"; fi
out=$({real} "$@"); rc=$?
touch {marks}/submitted
sleep {delay}
echo "$out"
exit $rc
"""


def _driver(run_dir: Path, name: str, path: str) -> list[str]:
    return [sys.executable, str(ROOT / "jobs/stage.py"), "--stage", "1", "--executor", "slurm", "--partition", "gpu",
            "--run-dir", str(run_dir), *ARGS, *SLURM, f"run.name={name}"]


def _env(path: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PATH": path}


def _alive(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat_line.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie nobody reaped is gone all the same


def _loo_arrays(name: str) -> set[str]:
    """Every leave-one-out array of the run the controller or accounting knows (by its job name)."""
    job = f"vip-{name}-s1-loo"
    queued = {ln.split("|")[1].split("_")[0] for ln in sh("squeue", "-h", "-r", "--me", "-t", "all", "-o",
                                                          "%j|%i").splitlines() if ln.split("|")[0] == job}
    accounted = {ln.split("|")[0].split("_")[0] for ln in sh("sacct", "-n", "-X", "-P", "-S", "now-1hour",
                                                             f"--name={job}", "-o", "JobID").splitlines() if ln}
    return queued | accounted


@pytest.mark.parametrize("mode", ["reply", "request"])
def test_a_driver_killed_during_a_slow_sbatch_never_duplicates_the_array(tmp_path, mode):
    name = f"{NAME}{mode}"
    real = shutil.which("sbatch")  # before PATH changes
    bindir, marks = tmp_path / "bin", tmp_path / "marks"
    bindir.mkdir()
    marks.mkdir()
    fake = bindir / "sbatch"
    fake.write_text(FAKE.format(mode=mode, real=real, marks=marks, delay=DELAY))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    run_dir = tmp_path / "run"
    ledger = Ledger(run_dir / "stage1")
    path = f"{bindir}:{os.environ['PATH']}"
    try:
        first = subprocess.Popen(_driver(run_dir, name, path), cwd=ROOT, env=_env(path), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        wait_for(lambda: (marks / ("submitted" if mode == "reply" else "started")).exists() or first.poll() is not None,
                 120, "the first sbatch to be under way", poll=0.1)
        assert first.poll() is None, first.communicate()
        (intent,) = ledger.intents("loo")  # recorded before sbatch; no entry yet: sbatch has not answered
        assert ledger.entries("loo") == [] and intent["tag"].startswith("vip-") and intent["tasks"]
        orphan = {e.split("_")[0] for e in slurm.tagged_jobs(intent["tag"])}
        assert len(orphan) == (1 if mode == "reply" else 0), orphan  # reply: in the queue under its tag
        slow = int((marks / "started").read_text())
        assert _alive(slow)
        first.send_signal(signal.SIGKILL)  # no cleanup of any kind
        first.wait(timeout=30)
        wait_for(lambda: not _alive(slow), 5, "the slow sbatch to die with its driver", poll=0.1)
        t0 = time.monotonic()

        # the next driver, with the real sbatch: adopts (reply) or submits once (request)
        r = subprocess.run(_driver(run_dir, name, os.environ["PATH"]), cwd=ROOT, env=_env(os.environ["PATH"]),
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        took = time.monotonic() - t0
        if mode == "request":  # past the fake's delay: the killed submission never reached the controller
            time.sleep(max(0.0, DELAY + 3 - (time.monotonic() - t0)))
        arrays = _loo_arrays(name)
        assert len(arrays) == 1, f"the leave-one-out array was submitted twice: {sorted(arrays)}"
        (entry,) = ledger.entries("loo")
        assert arrays == {entry["job_id"]}
        assert ledger.intents() == []
        line = next(ln for ln in r.stdout.splitlines() if ln.split()[:3] == ["stage", "1", "loo"])
        if mode == "reply":
            assert entry["tag"] == intent["tag"] and entry.get("adopted") is True and {entry["job_id"]} == orphan
            assert f"queued {entry['job_id']} (adopted: submitted by a driver that was stopped" in line, line
        else:
            assert entry["tag"] != intent["tag"] and "adopted" not in entry
            assert f"submitted {entry['job_id']} (array" in line, line
            events = [e for e in ledger.events("loo") if e["event"] == "not_submitted"]
            assert [e["tag"] for e in events] == [intent["tag"]]
            assert took >= slurm.INTENT_GRACE_S  # it waited for a request that might still be answered
        assert sorted(entry["elements"].values()) == intent["tasks"]

        # the work ends correct: every task done once, merged by the select job
        (sel,) = ledger.entries("select")
        states = slurm.wait([entry["job_id"], sel["job_id"]], timeout=400)
        assert set(states.values()) == {"COMPLETED"}, states
        cfg = config.load(run_dir / "config.yaml")
        ctx = StageContext(RunDir(run_dir), cfg, 1)
        assert loo.missing(ctx) == [] and loo.is_done(ctx) and select.is_done(ctx)
        assert _loo_arrays(name) == {entry["job_id"]}
        assert len(ledger.entries("loo")) == 1
    finally:
        cancel_jobs_named(f"vip-{name}-")
