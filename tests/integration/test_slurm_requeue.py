"""Preemption and requeue on the real cluster: array tasks checkpoint and resume (submitit), a
requeued task whose work is done skips it, the ledger shows every restart, and max_requeues holds."""
import os
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

from helpers.slurm import make_ctx, restart_count, sh, wait_for
from vip.orchestrate import slurm
from vip.orchestrate.ledger import Ledger

cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.slurm


def _missing(ctx):
    return [i for i in range(2) if not _done(ctx, i)]


def _done(ctx, i):
    return (Path(ctx.run.path) / f"done_{i}").exists()


def _work(ctx, i):
    """Task 1 dawdles on its first run (to be preempted there); every run leaves a trace."""
    run = Path(ctx.run.path)
    (run / f"started_{i}_{restart_count()}").write_text(os.environ.get("SLURMD_NODENAME", ""))
    if i == 1 and restart_count() == 0:
        time.sleep(120)
    (run / f"done_{i}").write_text("ok")


SPEC = slurm.ArrayStep(_missing, _work, _done)


def test_preempted_task_resumes_and_a_finished_one_skips(tmp_path):
    ctx = make_ctx(tmp_path / "run", ["slurm.max_requeues=2"])
    (array_id,) = slurm.submit_array(ctx, "toy", spec=SPEC)
    e0, e1 = f"{array_id}_0", f"{array_id}_1"
    wait_for(lambda: (tmp_path / "run/started_1_0").exists() and (tmp_path / "run/done_0").exists(), 90,
             "task 1 running and task 0 done")
    wait_for(lambda: slurm.job_states([e0])[e0] == "COMPLETED", 30, "task 0 completed")
    # the preemption signal submitit listens for: it calls checkpoint() and requeues the task
    sh("scancel", "--signal=USR2", e1)
    # and a finished task requeued by hand runs again, finds its work done and skips it
    sh("scontrol", "requeue", e0)
    states = slurm.wait([array_id], timeout=150)
    assert states == {e0: "COMPLETED", e1: "COMPLETED"}, states
    assert (tmp_path / "run/started_1_1").exists() and (tmp_path / "run/done_1").exists()
    assert not (tmp_path / "run/started_0_1").exists()  # the rerun of task 0 did no work
    ledger = Ledger(ctx.dir)
    assert ledger.requeues("toy") == {e0: 1, e1: 1}
    events = [(e["event"], e["job_id"], e["restart"]) for e in ledger.events("toy")]
    assert ("checkpoint", e1, 0) in events and ("restarted", e1, 1) in events and ("restarted", e0, 1) in events
    folder = slurm.log_dir(ctx, "toy")
    r0 = submitit.SlurmJob(folder=folder, job_id=e0).result()
    r1 = submitit.SlurmJob(folder=folder, job_id=e1).result()
    assert r0["skipped"] is True and r0["restart"] == 1
    assert r1["skipped"] is False and r1["restart"] == 1


def test_a_task_past_max_requeues_fails_instead_of_requeueing(tmp_path):
    ctx = make_ctx(tmp_path / "run", ["slurm.max_requeues=0"])
    (array_id,) = slurm.submit_array(ctx, "toy", spec=SPEC, indices=[1])
    elem = next(iter(Ledger(ctx.dir).elements("toy")))
    wait_for(lambda: (tmp_path / "run/started_1_0").exists(), 90, "task 1 running")
    sh("scancel", "--signal=USR2", elem)
    states = slurm.wait([array_id], timeout=90)
    assert states[elem] == "FAILED", states
    assert [e["event"] for e in Ledger(ctx.dir).events("toy")] == ["gave_up"]
    assert not (tmp_path / "run/done_1").exists()
    assert slurm.submit_array(ctx, "toy", spec=SPEC, indices=[1]) != []  # over, so a new call may resubmit it
    sh("scancel", *Ledger(ctx.dir).elements("toy"))
