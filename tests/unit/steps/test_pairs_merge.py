"""The pairs merge (the curate step) refuses while a shard is missing or damaged: one line naming the
shard file and the folder it should be in, and nothing merged written (no pairs.h5, no curation.json).
The shards are made by the pairs step itself (pairs.run_task) on a tiny plan of two one-sample
tasks; put back, the same shards merge, so the refusal is about the shard and nothing else."""
import shutil

import pytest
import torch

from vip import config
from vip.orchestrate.stepjobs import run_step
from vip.orchestrate.submit import step_job
from vip.steps import pairs
from vip.steps.context import StageContext
from vip.store import IncompleteError, RunDir, atomic_write_json


@pytest.fixture(scope="module")
def stage(tmp_path_factory, untrained_dir):
    """A stage-1 run with a pruned student, a pairs plan of 2 tasks and every pair shard written."""
    torch.set_num_threads(1)
    cfg = config.load(None, [f"model.path={untrained_dir}", "model.steps=2", "curate.samples_per_task=1",
                             "curate.batch_size=1", "runtime.progress=false", "runtime.threads=1"])
    run = RunDir(tmp_path_factory.mktemp("pairs") / "run")
    run.freeze(cfg)
    ctx = StageContext(run, cfg, 1)
    ctx.model.pruned(ctx.model.units()[:1]).save(ctx.pruned_path())
    # the plan pairs.plan writes from target.json and the filtered prompts, written here directly
    atomic_write_json(pairs.step_dir(ctx) / "tasks.json", {
        "targets": ["visual_quality"], "prompts": ["a red circle moving left on a black background",
                    "a blue square staying still on a gray background"],
        "seeds": [1_000_000, 1_000_001], "prompt_ids": [0, 1], "tasks": [[0, 1], [1, 2]], "teacher_key": "0" * 64,
        "student": str(ctx.pruned_path()), "student_sha256": pairs.student_sha256(ctx)})
    for task in (0, 1):
        pairs.run_task(ctx, task)
    return run, cfg


def _ctx(stage) -> StageContext:
    run, cfg = stage
    return StageContext(run, cfg, 1)


def _nothing_merged(ctx) -> None:
    assert not pairs.pairs_path(ctx).exists() and not pairs.report_path(ctx).exists()


def _side(ctx, side: str):
    return pairs.teacher_shards(ctx, pairs.plan(ctx)) if side == "teacher" else pairs.student_shards(ctx)


@pytest.mark.parametrize("side,task,damage", [("student", 1, "deleted"), ("teacher", 0, "deleted"),
                                              ("student", 0, "truncated"), ("teacher", 1, "no marker")])
def test_the_merge_names_the_missing_shard_and_writes_nothing(stage, tmp_path, capsys, side, task, damage):
    ctx = _ctx(stage)
    shards = _side(ctx, side)
    shard, marker = shards.shard(task), shards.marker(task)
    keep = tmp_path / "kept"
    keep.mkdir()
    shutil.copy2(shard, keep / "shard")
    shutil.copy2(marker, keep / "marker")
    try:
        if damage == "deleted":
            shard.unlink()
        elif damage == "truncated":  # a task killed while writing: its marker no longer matches
            shard.write_bytes(shard.read_bytes()[:200])
        else:  # a task killed between the shard and its marker
            marker.unlink()
        with pytest.raises(IncompleteError) as e:
            run_step("curate", ctx)  # what jobs/step.py curate and the Slurm curate job run
        msg = str(e.value)
        assert "\n" not in msg
        assert msg.startswith(f"1 of 2 tasks missing or corrupt in {shards.dir}: {shard.name};"), msg
        _nothing_merged(ctx)
        # the job's own wrapper: one line on stderr, exit status 2
        with pytest.raises(SystemExit) as done:
            step_job("curate", ctx)
        assert done.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and shard.name in err[0] and str(shards.dir) in err[0]
        _nothing_merged(ctx)
    finally:
        shutil.copy2(keep / "shard", shard)
        shutil.copy2(keep / "marker", marker)


def test_with_every_shard_back_the_same_shards_merge(stage):
    """Run last: the shards the refusals above were about are mergeable once complete."""
    ctx = _ctx(stage)
    assert run_step("curate", ctx).startswith("stage 1 curate: kept ")
    assert pairs.pairs_path(ctx).is_file() and pairs.load(ctx)["candidates"] == 2
    for p in (pairs.pairs_path(ctx), pairs.report_path(ctx), ctx.dir / "curation.png"):
        p.unlink(missing_ok=True)


def test_curation_never_takes_a_heldout_prompt(monkeypatch):
    from types import SimpleNamespace

    from vip.prompts.sets import EvalSet
    from vip.steps import pairs as pairs_step
    filtered = {"visual_quality": ["a", "b", "c"], "dynamic_degree": ["c", "d", "e"]}
    monkeypatch.setattr(pairs_step.prompt_filter, "prompts_for", lambda run, aspect: filtered[aspect])
    ctx = SimpleNamespace(run=None, cfg=SimpleNamespace(curate=SimpleNamespace(max_prompts=3)), heldout_set=None)
    targets = ["visual_quality", "dynamic_degree"]
    assert pairs_step.curation_prompts(ctx, targets) == ["a", "b", "c"]
    ctx.heldout_set = EvalSet(["b", "d", "b"], [7, 8, 9], [0, 1, 0])
    assert pairs_step.curation_prompts(ctx, targets) == ["a", "c", "e"]
