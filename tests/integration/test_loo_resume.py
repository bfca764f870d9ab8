"""Leave-one-out tasks, shards, merge and resume on the shipped teacher at 2 steps (its variants score
differently: every comparison below can fail)."""
import json
import os

import numpy as np
import pytest

from helpers.data import assert_variants_differ, assert_varies
from vip import config
from vip.orchestrate import driver
from vip import selection
from vip.steps import loo, select
from vip.config import ConfigError
from vip.store import IncompleteError, RunDir, read_h5, sha256_tree


@pytest.fixture
def ctx(tmp_path, scoring_dir):
    cfg = config.load(None, [f"model.path={scoring_dir}", "model.steps=2", "prompts.eval_count=4",
                             "loo.units=down_blocks.0.motion_modules.0,mid_block.motion_modules.0,"
                             "up_blocks.2.motion_modules.2",
                             "loo.units_per_task=2", "loo.prompts_per_task=2", "loo.batch_size=2",
                             "select.k=1", "runtime.progress=false"])
    return driver.preflight(cfg, RunDir(tmp_path / "run"), 1)


def test_tasks_cover_every_variant_and_sample_once(ctx):
    tasks = loo.plan(ctx)["tasks"]
    covered = [(v, s) for t in tasks for v in t["variants"] for s in range(*t["samples"])]
    assert len(covered) == len(set(covered)) == 4 * 4  # (full + 3 units) x 4 samples
    assert len(tasks) == 4  # 2 variant groups x 2 prompt chunks


def test_merge_refuses_and_names_missing_then_resume_redoes_only_that(ctx):
    tasks = loo.plan(ctx)["tasks"]
    for i in range(len(tasks)):
        loo.run_task(ctx, i)
    shard_set = loo.shards(ctx)
    # truncate task 2's shard, as a node dying mid-copy would
    data = shard_set.shard(2).read_bytes()
    shard_set.shard(2).write_bytes(data[:100])
    with pytest.raises(IncompleteError, match="task_00002.h5"):
        loo.merge(ctx)
    assert not loo.merged_path(ctx).exists()

    mtimes = {i: os.stat(shard_set.shard(i)).st_mtime_ns for i in (0, 1, 3)}
    assert loo.missing(ctx) == [2]
    driver.run_loo(ctx)
    assert loo.missing(ctx) == []
    assert {i: os.stat(shard_set.shard(i)).st_mtime_ns for i in (0, 1, 3)} == mtimes  # untouched

    merged, attrs = read_h5(loo.merge(ctx))
    assert merged["scores"].shape == (4, 4, 4)
    assert merged["variants"].tolist()[0] == loo.FULL
    assert_variants_differ(merged["scores"], what="merged leave-one-out scores")
    # merged values are exactly what a direct evaluation gives
    direct = loo.evaluate(ctx, ["mid_block.motion_modules.0"], 0, 4)
    row = merged["variants"].tolist().index("mid_block.motion_modules.0")
    np.testing.assert_allclose(merged["scores"][row], direct, atol=1e-5)
    assert attrs["config_sha256"] == ctx.cfg.hash()
    assert attrs["model_sha256"] == ctx.model_sha256 == sha256_tree(ctx.model_path())
    shard, shard_attrs = read_h5(shard_set.shard(0))
    assert shard["prompt_ids"].tolist() == ctx.eval_set.prompt_ids[0:2]
    assert shard_attrs["model_sha256"] == ctx.model_sha256


def test_a_changed_model_is_refused_not_mixed(ctx):
    loo.plan(ctx)
    loo.run_task(ctx, 0)
    ctx.model_sha256 = "0" * 64  # as if the weights on disk were replaced after planning
    with pytest.raises(ConfigError, match="changed since stage 1 was planned"):
        loo.run_task(ctx, 1)
    assert loo.missing(ctx) == [1, 2, 3]


def test_selection_from_merged_scores_and_pruned_student(ctx):
    sel = driver.run_selection(ctx)
    merged, _ = read_h5(loo.merged_path(ctx))
    variants = merged["variants"].tolist()
    d = selection.deltas(merged["scores"], variants)
    totals = sorted(v["total"] for v in d.values())
    assert totals[-1] - totals[-2] > 0.01, d  # a real choice, not the alphabetical tie-break
    assert sel["chosen"] == selection.choose(d, 1).chosen
    assert json.loads((select.pruned_path(ctx) / "removed_units.json").read_text()) == sel["chosen"]
    assert sel["params_after"] == sel["params_before"] - sel["unit_params"][sel["chosen"][0]]
    # a second call finds everything done and changes nothing
    before = select.selection_path(ctx).stat().st_mtime_ns
    driver.run_selection(ctx)
    assert select.selection_path(ctx).stat().st_mtime_ns == before


def test_a_task_stopped_mid_way_resumes_after_the_variants_it_finished(ctx, monkeypatch):
    loo.plan(ctx)
    calls = []
    real = loo.evaluate

    def counting(c, units_off, lo, hi):
        calls.append(tuple(units_off))
        return real(c, units_off, lo, hi)

    monkeypatch.setattr(loo.tasks, "evaluate", counting)  # where run_task looks it up

    class Preempted(Exception):
        pass

    def stop_after_first(n):
        raise Preempted  # as if the node went away right after the first variant

    with pytest.raises(Preempted):
        loo.run_task(ctx, 0, progress=stop_after_first)
    assert calls == [()] and not loo.shards(ctx).is_done(0)
    assert sorted(p.name for p in loo.partial_dir(ctx, 0).iterdir()) == ["000.npy"]

    calls.clear()
    loo.run_task(ctx, 0)  # the requeued task
    assert calls == [("down_blocks.0.motion_modules.0",)]  # only the variant it had not finished
    assert not loo.partial_dir(ctx, 0).exists()
    shard, _ = read_h5(loo.shards(ctx).shard(0))
    assert_varies(shard["scores"][0], what="the resumed shard's scores")
    np.testing.assert_allclose(shard["scores"][0], real(ctx, [], 0, 2), atol=1e-5)


def test_batched_engine_matches_the_plain_one_and_resumes_from_partials(tmp_path):
    def make(name, engine):  # the shipped teacher: an untrained model scores every clip at the floor
        cfg = config.load(None, ["model.steps=4", "prompts.eval_count=2",
                                 "loo.units=down_blocks.1.motion_modules.1,mid_block.motion_modules.0,"
                                 "up_blocks.2.motion_modules.2",
                                 "loo.units_per_task=4", "loo.batch_size=4", f"loo.engine={engine}",
                                 "select.k=1", "runtime.progress=false"])
        return driver.preflight(cfg, RunDir(tmp_path / name), 1)

    plain, batched = make("plain", "plain"), make("batched", "batched")
    loo.run_task(plain, 0)
    # a preempted batched task: variant 3's partial is already there, so only 0-2 are generated
    kept = loo.evaluate(plain, ["up_blocks.2.motion_modules.2"], 0, 2)
    part = loo.partial_dir(batched, 0)
    part.mkdir(parents=True)
    np.save(part / "003.npy", kept + 0.5)  # marked: if reused as-is, the shard shows +0.5
    loo.run_task(batched, 0)
    a, _ = read_h5(loo.shards(plain).shard(0))
    b, _ = read_h5(loo.shards(batched).shard(0))
    assert a["variants"].tolist() == b["variants"].tolist()
    # variants 0-2 ran in mixed batches (2 variants x 2 prompts per batch), yet score like one variant at a time
    np.testing.assert_allclose(b["scores"][:3], a["scores"][:3], atol=1e-4)
    assert np.abs(a["scores"][1] - a["scores"][0]).max() > 0.1  # removing that unit really changes the scores
    np.testing.assert_array_equal(b["scores"][3], kept + 0.5)  # the partial was reused, not recomputed
