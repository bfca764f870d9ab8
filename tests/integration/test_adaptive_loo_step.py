"""loo.adaptive=true in the stage: rounds of growing sample sets, planned one after another by the
driver, give exactly what the offline rule (vip.steps.loo.adaptive) gives when replayed on the exhaustive
table of the same model: the same units in play per round, the same cells scored, the same choice."""
import json

import numpy as np
import pytest

from vip import config
from vip.orchestrate import driver
from vip.orchestrate.status import stage_status
from vip.steps.loo.adaptive import adaptive_loo, from_table
from vip.report.build import write_report
from vip.steps import loo
from vip.store import IncompleteError, RunDir, read_h5

UNITS = ("down_blocks.0.motion_modules.0,down_blocks.1.motion_modules.1,mid_block.motion_modules.0,"
         "up_blocks.1.motion_modules.2,up_blocks.2.motion_modules.0")
ADAPTIVE = ["loo.adaptive=true", "loo.adaptive_first=2", "loo.adaptive_z=0.5"]  # small z: units do settle


def _ctx(tmp_path, untrained_dir, name, extra=()):
    cfg = config.load(None, ["model.steps=4", "prompts.eval_count=8",  # the shipped teacher: real score spread
                             f"loo.units={UNITS}", "loo.units_per_task=2", "loo.prompts_per_task=3",
                             "loo.batch_size=4", "select.k=1", "runtime.progress=false", *extra])
    return driver.preflight(cfg, RunDir(tmp_path / name), 1)


def test_adaptive_rounds_match_the_replay_of_the_exhaustive_table(tmp_path, untrained_dir):
    full_ctx = _ctx(tmp_path, untrained_dir, "exhaustive")
    driver.run_selection(full_ctx)
    exhaustive, _ = read_h5(loo.merged_path(full_ctx))
    variants = exhaustive["variants"].tolist()
    replay = adaptive_loo(from_table(exhaustive["scores"], variants), variants[1:], 8, k=1, z=0.5, first=2)
    assert replay.clips < replay.exhaustive_clips  # this setting does settle units early: the test means something

    ctx = _ctx(tmp_path, untrained_dir, "adaptive", ADAPTIVE)
    assert ctx.cfg.hash() != full_ctx.cfg.hash()
    planned = loo.plan(ctx)
    assert [t["samples"] for t in planned["tasks"]] == [[0, 2]] * 3  # round 1: samples 0-1, 6 variants in 3 tasks
    loo.run_task(ctx, 1)  # part of round 1, then a "preemption": the driver resumes from here
    with pytest.raises(IncompleteError, match="planned 1 of 3 rounds"):
        loo.merge(ctx)
    assert loo.advance(ctx) is False  # round 1 is not finished: nothing is planned on partial scores
    sel = driver.run_selection(ctx)

    planned = loo.read_plan(ctx.dir)
    rounds = planned["adaptive"]["rounds"]
    assert [r["samples"] for r in rounds] == [[0, 2], [2, 4], [4, 8]]
    # units in play in round i+1 = the replay's active units after round i
    assert [len(r["variants"]) - 1 for r in rounds[1:]] == [r["active"] for r in replay.rounds[:-1]]
    assert sum(len(t["variants"]) * (t["samples"][1] - t["samples"][0]) for t in planned["tasks"]) == replay.clips

    merged, _ = read_h5(loo.merged_path(ctx))
    assert merged["variants"].tolist() == variants
    assert dict(zip(variants, merged["samples_seen"].tolist())) == {loo.FULL: 8, **replay.prompts_seen}
    scored = ~np.isnan(merged["scores"]).any(-1)
    assert scored.sum(1).tolist() == merged["samples_seen"].tolist()
    for i in range(len(variants)):  # a unit is scored on a prefix of the samples
        assert scored[i, :merged["samples_seen"][i]].all()
    # every scored cell is the exhaustive run's value (other tasks and batches, same seeds)
    np.testing.assert_allclose(merged["scores"][scored], exhaustive["scores"][scored], atol=1e-5)
    assert sel["chosen"] == replay.selection.chosen
    record = json.loads((ctx.dir / "selection.json").read_text())
    assert record["chosen"] == replay.selection.chosen
    assert record["samples_seen"] == {loo.FULL: 8, **replay.prompts_seen}
    assert "samples_seen" not in json.loads((full_ctx.dir / "selection.json").read_text())  # exhaustive: all 8
    html = write_report(ctx.run.path).read_text()
    saved = round(100 * (1 - replay.clips / replay.exhaustive_clips))
    assert f"{replay.clips} of {replay.exhaustive_clips} clips ({saved}% saved)" in html

    row = dict((step, (state, detail)) for step, state, detail in stage_status(ctx.run, 1))["loo"]
    assert row[0] == "done" and row[1].startswith("adaptive round 3 of at most 3")
    assert f"{len(planned['tasks'])}/{len(planned['tasks'])} tasks" in row[1]


def test_the_adaptive_keys_change_the_hash_only_when_adaptive_is_on():
    base = config.load(None, [])
    assert config.load(None, ["loo.adaptive_z=1.5", "loo.adaptive_first=3"]).hash() == base.hash()
    assert config.load(None, ["loo.adaptive=true"]).hash() != base.hash()
    assert config.load(None, ["loo.adaptive=true", "loo.adaptive_z=1.5"]).hash() != \
        config.load(None, ["loo.adaptive=true"]).hash()
    with pytest.raises(config.ConfigError, match="'loo.adaptive_first' must be at least 1"):
        config.load(None, ["loo.adaptive_first=0"])
