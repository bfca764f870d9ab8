"""A shard copied in from another run is refused at merge, never merged (issue 17, item 1).

Five small stage-1 runs on the shipped toyvid teacher (an untrained model scores every clip at the
reward's floor, so its shards would not differ between runs): this run, and four that differ from it
in run.seed, the reward (VideoScore's tiny checkpoint instead of toyvid_score), model.steps, and the
prompt set (prompts.eval and filter.source: the same prompts in reverse order). Each is run up to its
pair shards. Then task 0's shard of each kind (leave-one-out, the teacher's pair cache, the student's
pairs, the prompt filter's scores) with its completion marker is copied from a foreign run into a copy
of this run, and the merge that reads it must refuse with one line naming the shard and the first
field of its provenance that differs, and write no merged file. The copied shard's values differ
from this run's, so merging it would have corrupted the result.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from helpers import tiny_rewards
from vip import config
from vip.orchestrate import driver
from vip.prompts.sets import load_prompts
from vip.steps import filter as prompt_filter
from vip.steps import loo, pairs, target
from vip.steps.context import StageContext
from vip.store import IncompleteError, RunDir, ShardSet, read_h5

from helpers.paths import ROOT  # noqa: E402

LOCAL = ["prompts.eval_count=2", "model.steps=2", "loo.units=mid_block.motion_modules.0", "loo.units_per_task=2",
         "loo.prompts_per_task=1", "loo.batch_size=2", "select.k=1", "filter.prompts_per_task=162",
         "curate.max_prompts=2", "curate.seeds_per_prompt=1", "curate.samples_per_task=1", "curate.batch_size=1",
         "reward.batch_size=2", "runtime.progress=false"]
KINDS = ("loo", "teacher", "student", "filter")
# the first field of the provenance that differs, per foreign run and shard kind. The prompt filter's
# scores depend on none of seed, reward and steps, but its plan is tied to the run's whole config (as it
# was before shards recorded provenance), so its shards name the config hash there
FIELDS = {
    "seed": dict(loo="seeds", teacher="seeds", student="seeds", filter="config_sha256"),
    "reward": dict(loo="reward.name", teacher="reward.name", student="reward.name", filter="config_sha256"),
    "steps": dict(loo="sampler.steps", teacher="sampler.steps", student="sampler.steps", filter="config_sha256"),
    "prompts": dict(loo="prompts_sha256", teacher="prompts_sha256", student="prompts_sha256",
                    filter="prompts_sha256"),
}


def _variations(tmp: Path) -> dict[str, list[str]]:
    reversed_file = tmp / "reversed.txt"
    reversed_file.write_text("\n".join(reversed(load_prompts("toyvid"))) + "\n")
    return {
        "seed": ["run.seed=7"],
        "reward": ["reward.name=videoscore", f"reward.path={tiny_rewards.videoscore_checkpoint()}", "reward.frames=4"],
        "steps": ["model.steps=3"],
        "prompts": [f"prompts.eval={reversed_file}", f"filter.source={reversed_file}"],
    }


def _build(run_dir: Path, overrides: list[str]) -> None:
    """A stage 1 up to its pair shards: leave-one-out, selection, prompt filter, target, pairs."""
    ctx = driver.preflight(config.load(None, overrides), RunDir(run_dir), 1)
    driver.run_selection(ctx)
    driver.run_filter(ctx.run, ctx.cfg)
    target.run(ctx)
    driver.run_pairs(ctx)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("provenance")
    _build(root / "local", LOCAL)
    for name, extra in _variations(root).items():
        _build(root / name, LOCAL + extra)
    return root


def _ctx(run_dir: Path) -> StageContext:
    return StageContext(RunDir(run_dir), config.load(None, LOCAL), 1)


def _shards(run_dir: Path, kind: str) -> ShardSet:
    if kind == "loo":
        return ShardSet(run_dir / "stage1" / "loo")
    if kind == "filter":
        return ShardSet(run_dir / "filter")
    if kind == "student":
        return ShardSet(run_dir / "stage1" / "pairs")
    key = pairs.read_plan(run_dir / "stage1")["teacher_key"]
    return ShardSet(run_dir / "teacher" / f"pairs-{key[:16]}")


def _values(shard: Path, kind: str) -> np.ndarray:
    arrays, _ = read_h5(shard)
    if kind == "filter":
        return np.stack([arrays["dynamic_motion"], arrays["visual_quality"]]).astype(np.float32)
    return arrays["scores"].astype(np.float32)


def _merge(run_dir: Path, kind: str) -> None:
    """Run the merge that reads `kind`'s shards, as the stage driver does (removing first what this
    run had merged already: leave-one-out and the prompt filter were merged to get to the pairs)."""
    ctx = _ctx(run_dir)
    if kind == "loo":
        loo.merged_path(ctx).unlink()
        driver.run_selection(ctx)  # no task missing (the copied shard's marker matches it): straight to merge
    elif kind == "filter":
        for p in (prompt_filter.scores_path(ctx.run), prompt_filter.summary_path(ctx.run),
                  prompt_filter.histogram_path(ctx.run), prompt_filter.step_dir(ctx.run) / "sets"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        driver.run_filter(ctx.run, ctx.cfg)
    else:
        driver.run_pairs(ctx)  # nothing missing: the teacher's cache and the student's shards are all "done"
        pairs.curate(ctx)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variation", list(FIELDS))
def test_a_shard_from_another_run_is_refused_and_nothing_merged(runs, tmp_path, variation, kind):
    here = tmp_path / "run"
    shutil.copytree(runs / "local", here)
    src, dst = _shards(runs / variation, kind), _shards(here, kind)
    ours = _values(dst.shard(0), kind)
    shutil.copy2(src.shard(0), dst.shard(0))  # the shard and its marker: "done" as far as the bytes go
    shutil.copy2(src.marker(0), dst.marker(0))
    assert dst.is_done(0)
    theirs = _values(dst.shard(0), kind)
    if kind != "filter" or variation == "prompts":  # the filter's scores do not follow seed, reward or steps
        assert ours.shape != theirs.shape or np.abs(ours - theirs).max() > 1e-3  # merging it would corrupt

    ctx = _ctx(here)
    with pytest.raises(IncompleteError) as e:
        _merge(here, kind)
    msg = str(e.value)
    field = FIELDS[variation][kind]
    assert "\n" not in msg
    assert msg.startswith(f"{dst.shard(0)} was computed for another run or config: '{field}' is "), msg
    assert "there," in msg and "in this run's plan" in msg and f"delete {dst.shard(0)}" in msg
    # nothing merged was written
    if kind == "loo":
        assert not loo.merged_path(ctx).exists()
    elif kind == "filter":
        assert not prompt_filter.scores_path(ctx.run).exists()
        assert not (prompt_filter.step_dir(ctx.run) / "sets").exists()
        assert not prompt_filter.summary_path(ctx.run).exists()
    else:
        assert not pairs.pairs_path(ctx).exists() and not pairs.report_path(ctx).exists()


def test_the_message_shows_both_values(runs, tmp_path):
    here = tmp_path / "run"
    shutil.copytree(runs / "local", here)
    src, dst = _shards(runs / "seed", "loo"), _shards(here, "loo")
    shutil.copy2(src.shard(0), dst.shard(0))
    shutil.copy2(src.marker(0), dst.marker(0))
    with pytest.raises(IncompleteError, match=r"'seeds' is \[7\] there, \[0\] in this run's plan"):
        _merge(here, "loo")


@pytest.mark.parametrize("kind", KINDS)
def test_a_shard_written_before_provenance_is_refused(runs, tmp_path, kind):
    here = tmp_path / "run"
    shutil.copytree(runs / "local", here)
    dst = _shards(here, kind)
    arrays, attrs = read_h5(dst.shard(0))
    del attrs["provenance"]
    dst.write(0, arrays, attrs)  # as an older version wrote it: same values, a valid marker, no provenance
    with h5py.File(dst.shard(0), "r") as f:
        assert "provenance" not in f.attrs
    with pytest.raises(IncompleteError) as e:
        _merge(here, kind)
    msg = str(e.value)
    assert msg.startswith(f"{dst.shard(0)} records no 'provenance'") and f"delete {dst.shard(0)}" in msg, msg


def test_local_shards_merge_and_the_cli_refuses_a_foreign_one_in_one_line(runs, tmp_path):
    """This run's own shards pass every check; through jobs/stage.py a foreign leave-one-out shard is
    one line on stderr, exit 2, and no loo.h5."""
    here = tmp_path / "run"
    shutil.copytree(runs / "local", here)
    for kind in ("loo", "filter", "teacher"):  # teacher: curate reads both sides
        _merge(here, kind)
    ctx = _ctx(here)
    assert loo.merged_path(ctx).is_file() and prompt_filter.scores_path(ctx.run).is_file()
    assert pairs.pairs_path(ctx).is_file()

    src, dst = _shards(runs / "seed", "loo"), _shards(here, "loo")
    shutil.copy2(src.shard(1), dst.shard(1))
    shutil.copy2(src.marker(1), dst.marker(1))
    loo.merged_path(ctx).unlink()
    r = subprocess.run([sys.executable, str(ROOT / "jobs" / "stage.py"), "--stage", "1", "--config",
                        str(here / "config.yaml"), "--run-dir", str(here)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {dst.shard(1)} was computed for another run or config: "
                                                   "'seeds' is [8] there, [1] in this run's plan"), r.stderr
    assert not loo.merged_path(ctx).exists()


def test_a_teacher_shard_serves_a_later_stage_with_the_same_teacher_key(runs):
    """The teacher's cache is shared by the stages of a run: its provenance holds nothing of the stage."""
    from vip import provenance as prov

    local = runs / "local"
    planned = pairs.read_plan(local / "stage1")
    later = StageContext(RunDir(local), config.load(None, LOCAL), 2)  # a stage 2 whose plan has the same key
    for i in range(len(planned["tasks"])):
        shard = _shards(local, "teacher").shard(i)
        prov.check(shard, read_h5(shard)[1], pairs.provenance(later, planned, i, "teacher", later.teacher_sha256))
