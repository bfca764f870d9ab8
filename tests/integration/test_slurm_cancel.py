"""A user's plain `scancel` of a training job on the real cluster stops it: the job ends CANCELLED and is
never requeued (one run in accounting, Restarts=0), the trainer saved a checkpoint on the way out, and
running the driver's training submission again resumes from that checkpoint and finishes.

Preemption and the time limit still requeue: they reach the trainer as USR1 (`--signal=USR1@<delay>`):
here a real time limit (a 1-minute job) requeues it; tests/integration/test_slurm_train_preemption.py
sends the preemption's USR1. A plain scancel reaches the trainer as SIGTERM (docs/decisions.md). Both ways
a stage submits training are covered: the driver's submitit job and the rendered train.sbatch.
"""
import json
import subprocess
import sys
import time

import pytest

from helpers.slurm import SLURM, sh, wait_for
from helpers.train import ROOT, make_train_run, train_env
from vip import config
from vip.orchestrate import render, slurm, submit
from vip.orchestrate.ledger import Ledger
from vip.steps import pairs
from vip.steps.context import StageContext
from vip.store import atomic_write_json
from vip.train.metrics import read_metrics
from vip.train.redpo_trainer import train_dir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# 8 pairs, 2 per step, 3 epochs: 12 steps of about a second; one task, one fake GPU; requeues allowed,
# so a requeue after the cancel would happen if anything asked for one
OVERRIDES = [*SLURM, "slurm.nodes=1", "slurm.gpus_per_node=1", "slurm.max_requeues=3", "train.epochs=3"]
STEPS = 12


def _lines(run) -> int:
    path = train_dir(run, 1) / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _cancel_late_in_a_step(run, job: str) -> None:
    """A plain scancel, late in the fourth step: the trainer finishes the step and saves within the
    cluster's KillWait (5 s here) even when the machine is loaded and a step takes seconds."""
    wait_for(lambda: _lines(run) >= 2, 400, "two training steps", poll=0.5)
    wait_for(lambda: _lines(run) >= 3, 120, "the third training step", poll=0.02)
    t3 = time.monotonic()
    wait_for(lambda: _lines(run) >= 4, 120, "the fourth training step", poll=0.02)
    step_s = time.monotonic() - t3
    time.sleep(0.7 * step_s)
    assert slurm.job_states([job])[job] == "RUNNING"
    sh("scancel", job)  # what a user types: SIGTERM to the batch shell and every step


def _cancelled_not_requeued(job: str) -> None:
    """CANCELLED, and it stays so: the controller never requeued it and accounting holds one run."""
    assert slurm.wait([job], timeout=120) == {job: "CANCELLED"}
    time.sleep(8)  # a requeue (scontrol requeue, then pending) would show by now: requeue to running took ~12 s
    assert slurm.job_states([job])[job] == "CANCELLED"
    show = sh("scontrol", "show", "job", "-o", job)
    assert " Restarts=0 " in f" {show} " and "JobState=CANCELLED" in show, show
    runs = sh("sacct", "-n", "-X", "-D", "-P", "-j", job, "-o", "JobID,State").splitlines()
    assert [r.split("|")[1].split(" ")[0] for r in runs] == ["CANCELLED"], runs


def _checkpoint_at_the_cut(run) -> tuple[int, list[str]]:
    """The trainer saved on SIGTERM: the last checkpoint is the last logged step. Returns it and the lines."""
    lines = (train_dir(run, 1) / "metrics.jsonl").read_text().splitlines()
    cut = len(lines)
    assert 4 <= cut < STEPS, f"stopped at step {cut} of {STEPS}"
    ckpts = sorted(p.name for p in (train_dir(run, 1) / "ckpt").glob("step*"))
    assert ckpts == [f"step{cut:07d}"], f"{ckpts}: no checkpoint on SIGTERM (killed after KillWait?)"
    assert not (train_dir(run, 1) / "done.json").exists()
    return cut, lines


def test_scancel_of_the_driver_training_job_stops_it_and_the_driver_resumes(tmp_path, untrained_dir, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = make_train_run(tmp_path / "run", untrained_dir, overrides=OVERRIDES)
    cfg = config.load(run.path / "config.yaml")
    ctx = StageContext(run, cfg, 1)
    atomic_write_json(pairs.report_path(ctx), {"config_sha256": cfg.hash()})  # curated: train_job's input check
    ledger = Ledger(ctx.dir)
    (job,) = submit.Submitter().job(ctx, "train", "train", [], submit.train_job)  # what submit_stage does
    _cancel_late_in_a_step(run, job)
    _cancelled_not_requeued(job)
    cut, before = _checkpoint_at_the_cut(run)
    events = [(e["event"], e["job_id"]) for e in ledger.events("train")]
    assert events == [("stopped", job)], events  # train_job on rank 0; no requeue, no restart
    err = (submit.log_path(ledger.entries("train")[0], job, failed=True)).read_text()
    assert "error: stage 1 training stopped by SIGTERM (scancel) after saving a checkpoint; not requeued" in err, \
        err[-2000:]

    # the driver again (its training submission): a new job, resumed from the checkpoint, to the end
    sink = submit.Submitter()
    (again,) = sink.job(ctx, "train", "train", [], submit.train_job)
    assert again != job and [a.verb for a in sink.actions] == ["submitted"]
    assert slurm.wait([again], timeout=600) == {again: "COMPLETED"}
    after = (train_dir(run, 1) / "metrics.jsonl").read_text().splitlines()
    assert after[:cut] == before  # resumed: the first job's lines kept as written, timing fields included
    assert [m["step"] for m in read_metrics(train_dir(run, 1))] == list(range(1, STEPS + 1))
    assert sorted(p.name for p in (train_dir(run, 1) / "ckpt").glob("step*")) == [f"step{cut:07d}",
                                                                                  f"step{STEPS:07d}"]
    assert json.loads((train_dir(run, 1) / "done.json").read_text())["steps"] == STEPS
    assert [e["job_id"] for e in ledger.entries("train")] == [job, again]


def test_scancel_of_the_rendered_train_sbatch_stops_it(tmp_path, untrained_dir):
    run = make_train_run(tmp_path / "run", untrained_dir, overrides=OVERRIDES)
    cfg = config.load(run.path / "config.yaml")
    written = render.render(cfg, run, 1, ["train"], {}, python=sys.executable, repo=ROOT)
    out = subprocess.run(["bash", str(written[-1])], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env=train_env())
    assert out.returncode == 0, out.stderr
    job = dict(line.split(": ", 1) for line in out.stdout.splitlines())["train"]
    _cancel_late_in_a_step(run, job)
    _cancelled_not_requeued(job)
    cut, _ = _checkpoint_at_the_cut(run)
    log = (run.path / "logs/stage1/train" / f"{render.job_name(cfg, 1, 'train')}-{job}.out").read_text()
    assert "vip: TERM (scancel or the end of the job)" in log and "not requeueing" in log, log[-3000:]
    assert f"vip: stage 1 training stopped (SIGTERM) at step {cut} of {STEPS}, checkpoint saved" in log, log[-3000:]
    assert "requeueing " + job not in log and "restart 1 of" not in log


def test_the_time_limit_still_requeues_training(tmp_path, untrained_dir, monkeypatch):
    """The other side: the time limit's signal (`--signal=USR1@60` on a 3-minute job, sent by Slurm
    itself) makes the trainer save and the job requeue itself; the first run ends REQUEUED, not TIMEOUT.
    (Slurm may send the signal up to 60 s before it is due: with USR1@30 on a 1-minute job it could come
    before a loaded machine had even imported torch, and the test failed in CI and here.)"""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run = make_train_run(tmp_path / "run", untrained_dir,
                         overrides=[*OVERRIDES, "slurm.time=3", "slurm.signal_delay_s=60", "train.epochs=200"])
    cfg = config.load(run.path / "config.yaml")
    ctx = StageContext(run, cfg, 1)
    atomic_write_json(pairs.report_path(ctx), {"config_sha256": cfg.hash()})
    ledger = Ledger(ctx.dir)
    (job,) = submit.Submitter().job(ctx, "train", "train", [], submit.train_job)
    wait_for(lambda: any(e["event"] == "requeue" for e in ledger.events("train")), 240,
             "the time limit's signal to requeue the job", poll=0.5)
    wait_for(lambda: " Restarts=1 " in f" {sh('scontrol', 'show', 'job', '-o', job)} ", 60, "the requeue")
    sh("scancel", job)  # enough: the requeued run is not needed
    slurm.wait([job], timeout=120)
    runs = sh("sacct", "-n", "-X", "-D", "-P", "-j", job, "-o", "JobID,State").splitlines()
    assert [r.split("|")[1].split(" ")[0] for r in runs][0] == "REQUEUED", runs
    out = submit.log_path(ledger.entries("train")[0], job).read_text()
    assert "interrupted (preemption or time limit) at step" in out and "exit 75 to be requeued" in out, out[-2000:]
    assert sorted((train_dir(run, 1) / "ckpt").glob("step*")), "no checkpoint before the requeue"
