"""loo.adaptive=true through the Slurm executor: each round is an array, and a small CPU continuation
job (loo_round<r>) plans the next round from the scores on disk and submits it; after the last round
it submits selection. The result equals the local executor's round for round."""
import json
import os

import numpy as np
import pytest

from helpers.slurm import cancel_jobs_named, make_ctx, wait_for
from vip.orchestrate import driver, submit
from vip.orchestrate.ledger import Ledger
from vip.steps import loo
from vip.store import RunDir, read_h5

pytestmark = pytest.mark.slurm
NAME = f"slurmadapt{os.getpid()}"
OVERRIDES = ["model.steps=4", "prompts.eval_count=8", "select.k=1", "loo.units_per_task=3", "loo.batch_size=4",
             "loo.units=down_blocks.0.motion_modules.0,down_blocks.1.motion_modules.1,mid_block.motion_modules.0,"
             "up_blocks.1.motion_modules.2,up_blocks.2.motion_modules.0",
             "loo.adaptive=true", "loo.adaptive_first=2", "loo.adaptive_z=0.5", f"run.name={NAME}"]


@pytest.fixture
def cancel_ours():
    yield
    cancel_jobs_named(f"vip-{NAME}")


def test_rounds_are_chained_by_continuations_and_match_the_local_run(tmp_path, cancel_ours):
    ctx = make_ctx(tmp_path / "slurm", OVERRIDES)
    actions = submit.submit_stage(ctx, 1)
    lines = [a.line() for a in actions]
    assert any(a.step == "loo" and a.verb == "submitted" for a in actions), lines
    assert [a.step for a in actions if a.verb == "submitted"].count("loo_round1") == 1, lines
    assert not any(a.step in ("select", "target") for a in actions), lines  # they wait for the last round
    later = next(a for a in actions if a.step == "select..")
    assert "round 1 of at most 3" in later.detail

    wait_for(lambda: (ctx.dir / "selection.json").is_file(), timeout=400, what="selection after 3 rounds", poll=2)
    ledger = Ledger(ctx.dir)
    assert len(ledger.entries("loo")) == 3  # one array per round
    assert [len(ledger.entries(f"loo_round{r}")) for r in (1, 2, 3)] == [1, 1, 0]  # the last round's: none
    planned = loo.read_plan(ctx.dir)
    rounds = planned["adaptive"]["rounds"]
    submitted = [sorted(e["elements"].values()) for e in ledger.entries("loo")]
    assert submitted == [r["tasks"] for r in rounds]  # each array ran exactly its round's tasks

    local = make_ctx(tmp_path / "local", OVERRIDES + ["runtime.executor=local"])
    assert local.cfg.hash() == ctx.cfg.hash()
    local_sel = driver.run_selection(driver.preflight(local.cfg, RunDir(local.run.path), 1))
    assert loo.read_plan(local.dir)["adaptive"]["rounds"] == rounds
    a, _ = read_h5(loo.merged_path(ctx))
    b, _ = read_h5(loo.merged_path(local))
    np.testing.assert_allclose(a["scores"], b["scores"], rtol=0, atol=1e-6)  # NaN where neither scored
    assert json.loads((ctx.dir / "selection.json").read_text())["chosen"] == local_sel["chosen"]
