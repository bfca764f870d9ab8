"""Leave-one-out of a tiny stage through the Slurm executor: same merged scores as the local executor,
and the ledger keeps a second submission from duplicating queued tasks."""
import numpy as np
import pytest

from helpers.data import assert_variants_differ
from helpers.slurm import held_job, make_ctx, sh
from vip.orchestrate import local, slurm
from vip.orchestrate.ledger import Ledger
from vip.steps import loo
from vip.store import read_h5

pytestmark = pytest.mark.slurm

UNITS = "loo.units=down_blocks.0.motion_modules.0,mid_block.motion_modules.0"


def test_loo_on_slurm_merges_to_the_local_result_and_never_duplicates(tmp_path, scoring_dir):
    overrides = [f"model.path={scoring_dir}", "model.steps=2", "prompts.eval_count=3", UNITS,
                 "loo.units_per_task=1", "loo.batch_size=3", "select.k=1"]
    ctx = make_ctx(tmp_path / "slurm run", overrides)
    n = len(loo.plan(ctx)["tasks"])
    assert n == 3  # full model + 2 units, one variant per task

    hold = held_job()  # keeps the array pending while the second submission looks at it
    try:
        ids = slurm.submit_array(ctx, "loo", depends_on=[hold])
        assert len(ids) == 1
        ledger = Ledger(ctx.dir)
        elements = ledger.elements("loo")
        assert sorted(elements.values()) == [0, 1, 2]
        assert set(slurm.job_states(elements).values()) == {"PENDING"}
        assert slurm.queued_ids(ledger, "loo") == ids  # what a dependent job waits for
        assert slurm.submit_array(ctx, "loo") == []  # all three are queued: nothing new
        assert slurm.submit_array(ctx, "loo", indices=[0, 2]) == []
        assert len(ledger.entries("loo")) == 1
        assert sh("squeue", "-h", "-j", ids[0], "-o", "%E").startswith(f"afterany:{hold}")
    finally:
        sh("scontrol", "release", hold)
    states = slurm.wait(ids, timeout=180)
    assert set(states.values()) == {"COMPLETED"}, states
    assert loo.missing(ctx) == []
    assert slurm.submit_array(ctx, "loo") == []  # done: nothing to submit

    # a shard lost after the fact: only that task goes again, although the ledger knows the old job
    loo.shards(ctx).discard(1)
    again = slurm.submit_array(ctx, "loo")
    assert len(again) == 1 and list(Ledger(ctx.dir).entries("loo")[-1]["elements"].values()) == [1]
    slurm.wait(again, timeout=180)
    merged, attrs = read_h5(loo.merge(ctx))

    # the same stage with the local executor
    local_ctx = make_ctx(tmp_path / "local run", overrides + ["runtime.executor=local"])
    assert local_ctx.cfg.hash() == ctx.cfg.hash()  # the executor and slurm settings are not science
    todo = loo.missing(local_ctx)
    local.run_tasks(todo, lambda i, advance: loo.run_task(local_ctx, i, advance), total_units=n, desc="loo",
                    progress=False)
    expected, _ = read_h5(loo.merge(local_ctx))
    assert merged["variants"].tolist() == expected["variants"].tolist()
    assert_variants_differ(expected["scores"], what="local leave-one-out scores")  # so the comparison can fail
    np.testing.assert_allclose(merged["scores"], expected["scores"], rtol=0, atol=1e-6)
    assert attrs["config_sha256"] == ctx.cfg.hash()
    # per-task logs under the run directory
    logs = ctx.run.path / "logs" / "stage1" / "loo"
    assert len(list(logs.glob("*_log.out"))) == 4 and list(logs.glob("*_submission.sh"))
