"""Packed mode on the real cluster: one job of 3 ranks works through a leave-one-out step over more than
one node; a preempted packed job is requeued and skips what is done; a killed one, submitted again,
recomputes only the unfinished task; the merged scores equal the local executor's bit for bit. And the
rendered sbatch/packed.sbatch runs `jobs/step.py loo --packed` under a real srun."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pytest

from helpers.data import assert_variants_differ
from helpers.slurm import make_ctx, restart_count, sh, wait_for
from vip.orchestrate import local, render, slurm
from vip.orchestrate.stepjobs import ARRAY_STEPS, ArrayStep
from vip.orchestrate.ledger import Ledger
from vip.steps import loo
from vip.store import read_h5

cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.slurm

UNITS = ("loo.units=down_blocks.0.motion_modules.0,mid_block.motion_modules.0,up_blocks.0.motion_modules.0,"
         "down_blocks.1.motion_modules.0")
SLOW = 4  # the task that dawdles on its first two attempts (to be preempted, then killed, there)
LOO = ARRAY_STEPS["loo"]


def _overrides(model_dir):
    return [f"model.path={model_dir}", "model.steps=2", "prompts.eval_count=3", UNITS, "loo.units_per_task=1",
            "loo.batch_size=3", "select.k=1", "slurm.packed=true", "slurm.packed_ranks=3", "slurm.max_requeues=2"]


def _traced_run(ctx, i):
    """The real leave-one-out task, leaving a trace of every attempt (rank, node, restart)."""
    run = Path(ctx.run.path)
    attempt = len(list(run.glob(f"trace_{i}_*")))
    (run / f"trace_{i}_{attempt}").write_text(json.dumps({
        "rank": int(os.environ["SLURM_PROCID"]), "node": os.environ.get("SLURMD_NODENAME"),
        "restart": restart_count(), "job": os.environ.get("SLURM_JOB_ID")}))
    if i == SLOW and attempt < 2:
        time.sleep(300)
    LOO.run(ctx, i)


SPEC = ArrayStep(LOO.missing, _traced_run, LOO.done, count=LOO.count)


def _traces(run: Path) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = {}
    for p in sorted(run.glob("trace_*"), key=lambda p: int(p.name.split("_")[2])):
        out.setdefault(int(p.name.split("_")[1]), []).append(json.loads(p.read_text()))
    return out


def test_packed_loo_survives_preemption_and_a_kill_and_merges_to_the_local_result(tmp_path, scoring_dir):
    ctx = make_ctx(tmp_path / "packed", _overrides(scoring_dir))
    run = ctx.run.path
    assert len(loo.plan(ctx)["tasks"]) == 5  # full model + 4 units, one variant per task

    (job,) = slurm.submit_packed(ctx, "loo", spec=SPEC)
    ledger = Ledger(ctx.dir)
    assert slurm.submit_packed(ctx, "loo", spec=SPEC) == []  # all 5 tasks are queued in that job
    (entry,) = ledger.entries("loo")
    assert (entry["kind"], entry["tasks"], entry["ranks"]) == ("packed", [0, 1, 2, 3, 4], 3)
    # rank 1 of 3 has tasks 1 and 4: the others finish while task 4 dawdles
    wait_for(lambda: not loo.missing(ctx)[:-1] and (run / f"trace_{SLOW}_0").exists(), 150,
             "tasks 0-3 done and task 4 running")
    first = _traces(run)
    assert {t: [a["rank"] for a in first[t]] for t in range(4)} == {0: [0], 1: [1], 2: [2], 3: [0]}
    assert first[SLOW][0]["rank"] == 1
    assert len({a["node"] for t in range(5) for a in first[t]}) >= 2  # 3 one-GPU ranks, 2 GPUs per node
    mtimes = {t: loo.shards(ctx).marker(t).stat().st_mtime_ns for t in range(4)}

    # preemption (submitit's signal): rank 0, idle by now, checkpoints and requeues the whole job
    sh("scancel", "--signal=USR2", job)
    wait_for(lambda: (run / f"trace_{SLOW}_1").exists(), 120, "the requeued job running task 4 again")
    again = _traces(run)
    assert again[SLOW][1]["restart"] == 1 and again[SLOW][1]["job"] == job
    assert all(len(again[t]) == 1 for t in range(4))  # the requeued ranks skipped the finished tasks
    assert ("checkpoint", job) in {(e["event"], e["job_id"]) for e in ledger.events("loo")}

    # a kill (no requeue), then the same call as before: a new packed job for task 4 only
    sh("scancel", job)
    assert slurm.wait([job], timeout=60)[job] == "CANCELLED"
    assert loo.missing(ctx) == [SLOW]
    (job2,) = slurm.submit_packed(ctx, "loo", spec=SPEC)
    assert (ledger.entries("loo")[-1]["tasks"], ledger.entries("loo")[-1]["ranks"]) == ([SLOW], 1)
    assert slurm.wait([job2], timeout=150) == {job2: "COMPLETED"}
    final = _traces(run)
    assert [len(final[t]) for t in range(5)] == [1, 1, 1, 1, 3]  # only task 4 was ever recomputed
    assert {t: loo.shards(ctx).marker(t).stat().st_mtime_ns for t in range(4)} == mtimes
    records = slurm.packed_results(ledger, "loo", job2)
    assert [(r["task"], r["skipped"], r["rank"]) for r in records] == [(SLOW, False, 0)]
    merged, _ = read_h5(loo.merge(ctx))

    # the same stage with the local executor, task after task in this process
    local_ctx = make_ctx(tmp_path / "local", _overrides(scoring_dir) + ["runtime.executor=local"])
    todo = loo.missing(local_ctx)
    local.run_tasks(todo, lambda i, advance: loo.run_task(local_ctx, i, advance), total_units=5, desc="loo",
                    progress=False)
    expected, _ = read_h5(loo.merge(local_ctx))
    assert merged["variants"].tolist() == expected["variants"].tolist()
    assert_variants_differ(expected["scores"], what="local leave-one-out scores")  # so the comparison can fail
    assert np.array_equal(merged["scores"], expected["scores"])  # bit for bit
    logs = slurm.log_dir(ctx, "loo")
    assert {p.name for p in logs.glob(f"{job}_*_log.out")} == {f"{job}_{r}_log.out" for r in range(3)}


def test_rendered_packed_script_runs_step_py_on_every_srun_rank(tmp_path, untrained_dir):
    ctx = make_ctx(tmp_path / "run dir", _overrides(untrained_dir)[:-3] + [
        "loo.units=down_blocks.0.motion_modules.0,mid_block.motion_modules.0", "slurm.packed=true",
        "slurm.packed_ranks=2"])
    loo.plan(ctx)  # 3 tasks
    loo.run_task(ctx, 1)  # done before the job: every rank must skip it
    before = loo.shards(ctx).marker(1).stat().st_mtime_ns
    written = render.render(ctx.cfg, ctx.run, 1, ["loo"], {"loo": 3}, python=sys.executable, repo=render.REPO)
    text = written[0].read_text()
    assert "#SBATCH --ntasks=2" in text and "#SBATCH --gpus-per-task=1" in text
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    job = subprocess.run(["sbatch", "--parsable", str(written[0])], capture_output=True, text=True, env=env,
                         check=True).stdout.strip().split(";")[0]
    assert slurm.wait([job], timeout=150) == {job: "COMPLETED"}
    assert loo.missing(ctx) == []
    assert loo.shards(ctx).marker(1).stat().st_mtime_ns == before
    log = (ctx.run.path / "logs/stage1/loo" / f"vip-toyvid-s1-loo-{job}.out").read_text()
    # rank r of 2 runs tasks r, r+2: rank 0 tasks 0 and 2, rank 1 task 1, which it finds done
    assert "loo: rank 0 of 2 (slurm) ran tasks [0, 2], 0 already done" in log
    assert "loo: rank 1 of 2 (slurm) ran tasks [], 1 already done" in log
