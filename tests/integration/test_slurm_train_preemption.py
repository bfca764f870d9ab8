"""A training job preempted on the real cluster requeues itself and resumes from its checkpoint, on
both ways a stage submits training:

  - the driver (runtime.executor=slurm): submit.train_job as a submitit StepJob of kind train; the
    trainer exits 75 after the signal and StepJob's requeue (`scontrol requeue`) runs it again;
  - the rendered sbatch/train.sbatch submitted with plain sbatch: srun exits 75 and the script's
    `rc -eq 75` branch requeues the job.

The signal is USR1 to the job's steps, what `--signal=USR1@<delay>` (both ways ask for it) makes
Slurm send before the time limit or on preemption. Each job must really restart (Restarts=1 in
scontrol, a REQUEUED record in sacct, SLURM_RESTART_COUNT=1 on the node), resume rather than start
over (the metrics written before the cut survive unchanged, timing fields included), and end with a
student equal bit for bit to an uninterrupted local run's.
"""
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers.slurm import SLURM, sh, wait_for
from helpers.train import ROOT, make_train_run, train_cmd, train_env
from vip import config
from vip.orchestrate import render, slurm, submit
from vip.orchestrate.ledger import Ledger
from vip.steps import pairs
from vip.steps.context import StageContext
from vip.store import atomic_write_json
from vip.train.metrics import read_metrics
from vip.train.redpo_trainer import final_path, train_dir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# 8 pairs, 2 per step, 2 epochs: 8 steps, about a second each on one CPU thread; one task, one fake GPU
OVERRIDES = [*SLURM, "slurm.nodes=1", "slurm.gpus_per_node=1", "slurm.max_requeues=2", "train.epochs=2"]
STEPS = 8
KEYS = ["loss", "dpo", "sft", "grad_norm", "lr", "rewards/margins", "samples"]


def _weights(run) -> dict[str, torch.Tensor]:
    return load_file(final_path(run, 1) / "unet" / "diffusion_pytorch_model.safetensors")


class Reference:
    """The same training, uninterrupted, in one local process, started at once and read when needed:
    it trains on the second core while the first test's job runs on the cluster."""

    def __init__(self, run):
        self.run = run
        self.proc = subprocess.Popen(train_cmd(run), env=train_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.value = None

    def result(self) -> tuple[list[dict], dict[str, torch.Tensor]]:
        if self.value is None:
            _, err = self.proc.communicate(timeout=600)
            assert self.proc.returncode == 0, err[-3000:]
            metrics = read_metrics(train_dir(self.run, 1))
            assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
            self.value = metrics, _weights(self.run)
        return self.value


@pytest.fixture(scope="module")
def reference(tmp_path_factory, untrained_dir):
    ref = Reference(make_train_run(tmp_path_factory.mktemp("ref") / "run", untrained_dir, overrides=OVERRIDES))
    yield ref
    if ref.proc.poll() is None:
        ref.proc.kill()
        ref.proc.wait()


def _cut_and_resume(run, job: str, requeued) -> tuple[int, list[str]]:
    """Signal the running job after two steps; once `requeued()` says the job asked to be requeued, keep
    the metrics lines written so far; wait for the job to end. Returns (step it stopped at, those lines)."""
    metrics = train_dir(run, 1) / "metrics.jsonl"
    wait_for(lambda: len(read_metrics(train_dir(run, 1))) >= 2, 400, "two training steps", poll=0.5)
    assert slurm.job_states([job])[job] == "RUNNING"
    sh("scancel", "--signal=USR1", job)  # to the job's steps (srun, then the trainer), not the batch shell
    wait_for(requeued, 180, "the job to ask for its requeue", poll=0.2)
    before = metrics.read_text().splitlines()
    cut = len(before)
    assert 2 <= cut < STEPS, f"stopped at step {cut} of {STEPS}"
    states = slurm.wait([job], timeout=600)
    assert states == {job: "COMPLETED"}, states
    return cut, before


def _restarted_once(job: str) -> None:
    """The controller and accounting agree that the job ran twice: once requeued, once to the end."""
    show = sh("scontrol", "show", "job", "-o", job)
    assert " Restarts=1 " in f" {show} ", show
    runs = sh("sacct", "-n", "-X", "-D", "-P", "-j", job, "-o", "JobID,State").splitlines()
    assert [r.split("|")[1].split(" ")[0] for r in runs] == ["REQUEUED", "COMPLETED"], runs


def _resumed_and_equal(run, cut: int, before: list[str], reference) -> None:
    ref_metrics, ref_weights = reference.result()
    after = (train_dir(run, 1) / "metrics.jsonl").read_text().splitlines()
    assert after[:cut] == before  # resumed: the lines of the first run kept as written (samples_per_s too)
    ckpts = sorted(p.name for p in (train_dir(run, 1) / "ckpt").glob("step*"))
    assert ckpts == [f"step{cut:07d}", f"step{STEPS:07d}"], ckpts  # the signal's checkpoint, then the last
    metrics = read_metrics(train_dir(run, 1))
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    assert [[m[k] for k in KEYS] for m in metrics] == [[m[k] for k in KEYS] for m in ref_metrics]  # exact
    weights = _weights(run)
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)  # bit for bit
    assert json.loads((train_dir(run, 1) / "done.json").read_text())["steps"] == STEPS


def test_driver_training_job_requeues_itself_after_exit_75_and_resumes(tmp_path, untrained_dir, reference,
                                                                         monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # sbatch exports it: the same reduction order as the reference
    run = make_train_run(tmp_path / "run", untrained_dir, overrides=OVERRIDES)
    cfg = config.load(run.path / "config.yaml")
    ctx = StageContext(run, cfg, 1)
    atomic_write_json(pairs.report_path(ctx), {"config_sha256": cfg.hash()})  # curated: train_job's input check
    (job,) = submit.Submitter().job(ctx, "train", "train", [], submit.train_job)  # what submit_stage does
    ledger = Ledger(ctx.dir)

    def requeued():
        return any(e["event"] == "requeue" for e in ledger.events("train"))

    cut, before = _cut_and_resume(run, job, requeued)
    _restarted_once(job)
    events = sorted((e["event"], e["restart"]) for e in ledger.events("train"))
    # StepJob: the trainer returned 75 on the first run (requeue, SLURM_RESTART_COUNT=0); the second run
    # saw SLURM_RESTART_COUNT=1 (restarted)
    assert events == [("requeue", 0), ("restarted", 1)], events
    assert ledger.requeues("train") == {job: 1}
    assert len(ledger.entries("train")) == 1  # requeued, not submitted again
    _resumed_and_equal(run, cut, before, reference)


def test_rendered_train_sbatch_requeues_on_exit_75_and_resumes(tmp_path, untrained_dir, reference):
    run = make_train_run(tmp_path / "run", untrained_dir, overrides=OVERRIDES)
    cfg = config.load(run.path / "config.yaml")
    written = render.render(cfg, run, 1, ["train"], {}, python=sys.executable, repo=ROOT)
    assert "#SBATCH --signal=USR1@" in (run.path / "sbatch/stage1/train.sbatch").read_text()
    out = subprocess.run(["bash", str(written[-1])], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env=train_env())  # OMP_NUM_THREADS=1, as the reference
    assert out.returncode == 0, out.stderr
    job = dict(line.split(": ", 1) for line in out.stdout.splitlines())["train"]
    log = run.path / "logs/stage1/train" / f"{render.job_name(cfg, 1, 'train')}-{job}.out"

    def requeued():
        return log.is_file() and "asked to resume (exit 75): requeueing" in log.read_text()

    cut, before = _cut_and_resume(run, job, requeued)
    _restarted_once(job)
    text = log.read_text()
    assert f"vip: training saved a checkpoint and asked to resume (exit 75): requeueing {job} " \
           "(restart 1 of at most 2)" in text, text[-3000:]
    assert "restart 0 of at most 2" in text and "restart 1 of at most 2" in text  # SLURM_RESTART_COUNT 0, then 1
    _resumed_and_equal(run, cut, before, reference)
