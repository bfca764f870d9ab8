"""A leave-one-out array element fails on the real cluster; the merge job that depends on the array
(afterany) still runs, reports the missing task in one line naming its shard, exits non-zero and
writes nothing merged. Both ways a stage is submitted: the driver's executor (submitit ArrayTask +
the select StepJob, as submit_stage chains them) and the rendered sbatch scripts (submit.sh).

The other tasks' shards are computed here, in this process, by the step itself (loo.run_task): on the
cluster they are done and skip, so the jobs cost seconds, and only task 1 is missing."""
import shutil
import stat
import subprocess
import sys

import cloudpickle
import pytest

from helpers.slurm import make_ctx, sh
from vip.orchestrate import render, slurm, submit
from vip.orchestrate.ledger import Ledger
from vip.steps import loo, select
from vip.steps.context import StageContext
from vip.store import RunDir

cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.slurm

UNITS = "loo.units=down_blocks.0.motion_modules.0,mid_block.motion_modules.0"
FAILING = 1  # the element that fails: the full model's task is 0, one task per unit after it


@pytest.fixture(scope="module")
def stage(tmp_path_factory, untrained_dir):
    """A stage-1 run whose leave-one-out plan has 3 tasks, every one done but task 1."""
    ctx = make_ctx(tmp_path_factory.mktemp("dep") / "run", [
        f"model.path={untrained_dir}", "model.steps=2", "prompts.eval_count=2", UNITS, "loo.units_per_task=1",
        "loo.batch_size=2", "select.k=1", "slurm.max_requeues=0"])
    assert len(loo.plan(ctx)["tasks"]) == 3
    for task in (0, 2):
        loo.run_task(ctx, task)
    assert loo.missing(ctx) == [FAILING]
    return ctx


def _copy(stage, dest) -> StageContext:
    shutil.copytree(stage.run.path, dest)
    return StageContext(RunDir(dest), stage.cfg, 1)


def _run_or_fail(ctx, task):
    if task == FAILING:
        raise RuntimeError("CUDA error: an illegal memory access was encountered (a stand-in for a GPU fault)")
    loo.run_task(ctx, task)


SPEC = slurm.ArrayStep(loo.missing, _run_or_fail, lambda ctx, task: loo.shards(ctx).is_done(task))


def _exit_codes(job: str) -> dict[str, str]:
    return dict(ln.split("|")[:2] for ln in sh("sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,ExitCode")
                .splitlines())


def _after(first: list[str], then: str) -> None:
    """`then` started only once every element of `first` had ended (sacct Start and End)."""
    def times(job):
        return [ln.split("|") for ln in sh("sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,Start,End").splitlines()]
    ends = [end for j in first for _, _, end in times(j)]
    (_, start, _), = times(then)
    assert start >= max(ends), (start, ends)  # ISO timestamps compare as text


def _one_error_line(text: str, ctx) -> str:
    shard = loo.shards(ctx).shard(FAILING)
    errors = [ln for ln in text.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, text[-3000:]
    assert errors[0] == (f"error: 1 of 3 tasks missing or corrupt in {loo.shards(ctx).dir}: {shard.name}; "
                         "re-run the step to recompute them"), errors
    assert "Traceback" not in text, text[-3000:]
    return errors[0]


def _nothing_merged(ctx) -> None:
    assert not loo.merged_path(ctx).exists() and not select.is_done(ctx)
    assert not ctx.pruned_path().exists()


def test_driver_merge_job_after_a_failed_element_names_the_missing_task(stage, tmp_path):
    ctx = _copy(stage, tmp_path / "run")
    (array,) = slurm.submit_array(ctx, "loo", indices=[0, 1, 2], spec=SPEC)
    sink = submit.Submitter()
    (merge,) = sink.job(ctx, "select", "cpu", [array])  # as submit_stage chains select after the loo array
    assert sh("squeue", "-h", "-j", merge, "-o", "%E").startswith(f"afterany:{array}")
    states = slurm.wait([array, merge], timeout=240)
    assert states == {f"{array}_0": "COMPLETED", f"{array}_1": "FAILED", f"{array}_2": "COMPLETED",
                      merge: "FAILED"}, states
    assert _exit_codes(merge)[merge] == "2:0"  # fail_cleanly's exit status for bad input, not a crash
    _after([array], merge)
    logs = slurm.log_dir(ctx, "loo")
    assert "CUDA error" in (logs / f"{array}_{FAILING}_0_log.err").read_text()  # the element failed
    entry = Ledger(ctx.dir).entries("select")[0]
    _one_error_line(submit.log_path(entry, merge, failed=True).read_text(), ctx)
    _nothing_merged(ctx)


STUB = r"""#!/bin/bash
# stands in for python in the loo array: task 1 fails, the others (done already) succeed; select runs for real
task=""; prev=""
for a in "$@"; do [ "$prev" = "--task" ] && task="$a"; prev="$a"; done
if [ "$2" = loo ]; then
  [ "$task" = 1 ] && { echo "CUDA error: an illegal memory access was encountered (stand-in)" >&2; exit 1; }
  exit 0
fi
exec @PYTHON@ "$@"
"""


def test_rendered_select_after_a_failed_element_names_the_missing_task(stage, tmp_path):
    ctx = _copy(stage, tmp_path / "run")
    stub = tmp_path / "python"
    stub.write_text(STUB.replace("@PYTHON@", sys.executable))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    from helpers.train import ROOT, train_env

    written = render.render(ctx.cfg, ctx.run, 1, ["loo", "select"], {"loo": 3}, python=str(stub), repo=ROOT)
    out = subprocess.run(["bash", str(written[-1])], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         env=train_env())
    assert out.returncode == 0, out.stderr
    ids = dict(line.split(": ", 1) for line in out.stdout.splitlines())
    array, merge = ids["loo"], ids["select"]
    states = slurm.wait([array, merge], timeout=240)
    assert states == {f"{array}_0": "COMPLETED", f"{array}_1": "FAILED", f"{array}_2": "COMPLETED",
                      merge: "FAILED"}, states
    assert _exit_codes(merge)[merge] == "2:0"  # jobs/step.py's exit status, through the script's `run`
    _after([array], merge)
    name = render.job_name(ctx.cfg, 1, "select")
    _one_error_line((ctx.run.path / "logs/stage1/select" / f"{name}-{merge}.out").read_text(), ctx)
    _nothing_merged(ctx)
