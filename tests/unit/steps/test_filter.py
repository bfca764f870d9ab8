"""The prompt-filter step (vip/steps/filter.py) on the offline toyvid backend: plan, tasks, merge, sets."""
import json

import pytest

from vip import config
from vip.config import ConfigError
from vip.prompts.instructions import INSTRUCTIONS
from vip.prompts.sets import load_prompts
from vip.steps import filter as step
from vip.store import IncompleteError, RunDir, read_h5
from vip.toyvid import world



# --- the step on the toyvid backend ------------------------------------------------------------------

@pytest.fixture
def toy_run(tmp_path):
    cfg = config.load(None, ["filter.prompts_per_task=5", "runtime.progress=false"])
    run = RunDir(tmp_path / "run")
    step.preflight(cfg, run)
    return cfg, run


def test_step_plans_scores_merges_and_reads_sets(toy_run):
    cfg, run = toy_run
    planned = step.plan(run, cfg)
    assert len(planned["prompts"]) == 324 and len(planned["tasks"]) == 65
    assert planned["tasks"][-1] == [320, 324]
    with pytest.raises(IncompleteError, match="has not finished"):
        step.prompts_for(run, "dynamic_degree")
    for i in step.missing(run, cfg):
        step.run_task(run, cfg, i)
    assert step.missing(run, cfg) == [] and not step.is_done(run, cfg)
    step.merge(run, cfg)
    assert step.is_done(run, cfg)
    dd = step.prompts_for(run, "dynamic_degree")
    assert len(dd) == 216 and all(world.parse(p).motion not in ("still", "bounce") for p in dd)
    assert step.prompts_for(run, "temporal_consistency") == dd
    static, dynamic = step.static_dynamic(run)
    assert dynamic == dd and len(static) == 108
    assert len(step.prompts_for(run, "visual_quality")) == 126
    assert len(step.prompts_for(run, "text_alignment")) == 324
    assert load_prompts(str(step.set_path(run, "visual_quality"))) == step.prompts_for(run, "visual_quality")
    arrays, attrs = read_h5(step.scores_path(run))
    assert attrs["config_sha256"] == cfg.hash() and arrays["prompts"].tolist() == planned["prompts"]
    summary = step.read_summary(run)
    assert summary["unparseable"] == {"dynamic_motion": 0, "visual_quality": 0}
    assert step.histogram_path(run).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="no prompt set for aspect"):
        step.prompts_for(run, "factual_consistency")


def test_merge_names_a_missing_task(toy_run):
    cfg, run = toy_run
    n = len(step.plan(run, cfg)["tasks"])
    for i in range(n):
        if i != 7:
            step.run_task(run, cfg, i)
    with pytest.raises(IncompleteError, match="task_00007.h5"):
        step.merge(run, cfg)
    assert step.missing(run, cfg) == [7]


def test_an_empty_set_names_its_filter_and_histogram(tmp_path):
    src = tmp_path / "still.txt"
    src.write_text("\n".join([p.text for p in world.all_prompts() if p.motion == "still"][:6]) + "\n")
    cfg = config.load(None, [f"filter.source={src}"])
    run = RunDir(tmp_path / "run")
    step.preflight(cfg, run)
    step.run_task(run, cfg, 0)
    with pytest.raises(step.EmptySetError) as e:
        step.merge(run, cfg)
    msg = str(e.value)
    assert msg.startswith("the temporal_consistency prompt set is empty: it uses the dynamic-degree set")
    assert "dynamic_motion scores of 6 prompts: 0:0 1:6 2:0 3:0 unparseable:0" in msg and "\n" not in msg
    assert msg.endswith("use a larger or more varied filter.source")  # every answer parsed: the source is to blame
    assert not isinstance(e.value, step.UnparseableAnswersError)
    # nothing merged is left behind; the shard stays done (its answers parsed, re-asking would not help)
    assert not step.is_done(run, cfg) and not step.histogram_path(run).exists()
    assert not step.summary_path(run).exists() and not step.set_path(run, "static").parent.exists()
    assert step.missing(run, cfg) == []


def test_a_changed_config_is_refused(toy_run):
    cfg, run = toy_run
    step.plan(run, cfg)
    other = config.load(None, ["filter.prompts_per_task=7"])
    with pytest.raises(ConfigError, match="another config"):
        step.run_task(run, other, 0)
    with pytest.raises(ConfigError, match="another config"):
        step.preflight(other, run)


def test_sets_are_jsonl_with_ids(toy_run):
    cfg, run = toy_run
    for i in step.missing(run, cfg):
        step.run_task(run, cfg, i)
    step.merge(run, cfg)
    rows = [json.loads(line) for line in step.set_path(run, "static").read_text().splitlines()]
    prompts = step.plan(run, cfg)["prompts"]
    assert len(rows) == 108 and all(prompts[r["id"]] == r["prompt"] for r in rows)
    arrays, _ = read_h5(step.scores_path(run))
    assert set(arrays) == {"prompts", *INSTRUCTIONS}
