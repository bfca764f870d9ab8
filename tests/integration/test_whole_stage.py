"""Two whole V.I.P. stages on every backbone family, through jobs/stage.py as a user runs it: tiny
random weights written in each family's published layout, a tiny random reward in its published
layout (VideoScore or VideoReward), then `jobs/stage.py --stage 1 --until 2` in a subprocess:
leave-one-out, selection, prompt filter, target, pairs, curation, ReDPO training on DeepSpeed (its
own process) and the outcome, twice over; then the same command again, which must find everything
done and write nothing.

What is checked is values: the leave-one-out scores differ between units (so selection is a real
choice), the parameter drop is the removed units' parameters, a stored pair is what the teacher and
the student generate from its prompt and seed, training changed the student, stage 2 pruned stage
1's trained student further."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vip import config
from vip.models.diffusion import read_state_dict
from vip.models.registry import denoiser_dir
from vip.steps import loo
from vip.steps import pairs as pairs_step
from vip.steps.context import StageContext
from vip.store import RunDir, read_h5, sha256_tree

from helpers import tiny_backbones, tiny_rewards
from helpers.train import ROOT, train_env

pytestmark = pytest.mark.slow

STEPS = ["loo", "select", "filter", "target", "pairs+curate", "train", "outcome"]
# the leave-one-out totals of the full model and the three units must differ by more than this
# (float noise is ~1e-6; the tiny rewards move by ~1e-3 between clips)
MIN_LOO_SPREAD = 1e-4

# Tiny settings: 2 evaluation prompts, 3 units, k=1 per stage, 2 sampler steps, one epoch. Curation sees 8
# candidates per stage; alpha 3 puts the floor far below the losers, so the two gap rules decide, and with 8
# candidates they keep a few pairs (so training really trains)
COMMON = [
    "prompts.eval_count=2", "prompts.heldout_count=2", "loo.units_per_task=4", "loo.batch_size=8", "select.k=1",
    "curate.max_prompts=8", "curate.seeds_per_prompt=1", "curate.samples_per_task=8", "curate.batch_size=8",
    "curate.alpha=3.0",
    "train.epochs=1", "train.batch_size=1", "train.min_pairs=1", "train.checkpoint_every=0",
    "train.warmup_steps=0", "runtime.progress=false",
]
AD_UNITS = "loo.units=down_blocks.0.motion_modules.0,mid_block.motion_modules.0,up_blocks.1.motion_modules.1"
BACKBONES = {
    "animatediff": dict(reward="videoscore", overrides=["model.steps=2", "model.guidance=2.0", AD_UNITS]),
    # steps and guidance: the Lightning file's. reward_seed: the tiny reward's weights, drawn so that curation
    # keeps pairs in both stages (with seed 0 no candidate's target gap leads; the message lists the rules)
    "animatediff_lightning": dict(reward="videoreward", reward_seed=1, overrides=[AD_UNITS]),
    "videocrafter2": dict(reward="videoreward", overrides=[
        "model.steps=2", "model.guidance=3.0", "loo.units=input_blocks.2,middle_block,output_blocks.4"]),
    "wan2.1": dict(reward="videoscore", overrides=["model.steps=2", "model.guidance=3.0",
                                                     "loo.units=blocks.0,blocks.1,blocks.2"]),
}


@pytest.fixture
def one_thread():
    """The stage ran with OMP_NUM_THREADS=1: regenerate pairs with the same reduction order."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_inputs(root: Path, backbone: str) -> list[str]:
    """The model and reward directories; returns every override of the stage command."""
    spec = BACKBONES[backbone]
    model = tiny_backbones.WRITERS[backbone](root / "models")
    if spec["reward"] == "videoscore":
        reward = [f"reward.path={tiny_rewards.videoscore_checkpoint()}", "reward.frames=4"]
    else:
        # three head outputs (a row per aspect, as train.sh's output_dim 3): with one output, a tiny random
        # network moves all three aspects together, the target's gap is never the largest and curation
        # keeps nothing
        path = tiny_rewards.write_videoreward(root / "VideoReward", seed=spec.get("reward_seed", 0), output_dim=3)
        reward = [f"reward.path={path}", "reward.frames=2"]  # one temporal patch: half the vision tokens
    return [*model, f"reward.name={spec['reward']}", *reward, "reward.batch_size=8", *COMMON, *spec["overrides"]]


def run_stages(run_dir: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "jobs/stage.py"), "--stage", "1", "--until", "2",
           "--config", "configs/toyvid.yaml", "--run-dir", str(run_dir), *overrides]
    return subprocess.run(cmd, env=train_env(HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=600,
                          cwd=ROOT)


def snapshot(run_dir: Path) -> dict[str, tuple[int, str]]:
    return {str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def regenerated_pair(ctx: StageContext, row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row `row` of pairs.h5 generated again: the teacher and the student loaded as the step loads
    them, sampling the same batch of (prompt, seed) the step sampled it in (a batch sums in another
    order than a single sample), cast to half as the step stores it."""
    planned = pairs_step.plan(ctx)  # reads pairs/tasks.json
    cand = json.loads(pairs_step.report_path(ctx).read_text())["kept_index"][row]
    lo, hi = next(t for t in planned["tasks"] if t[0] <= cand < t[1])
    bs = ctx.cfg.curate.batch_size
    first = lo + (cand - lo) // bs * bs
    prompts, seeds = planned["prompts"][first:min(first + bs, hi)], planned["seeds"][first:min(first + bs, hi)]
    return tuple(m.sample_latents(prompts, seeds)[cand - first].half().float() for m in (ctx.teacher, ctx.student))


def check_stage(run: RunDir, cfg: config.Config, n: int) -> dict:
    d = run.stage(n)
    ctx = StageContext(run, cfg, n)
    backbone = cfg.model.backbone

    # leave-one-out: the full model and every unit still there, scores that differ between them
    merged, _ = read_h5(d / "loo.h5")
    variants = [str(v) for v in merged["variants"]]
    totals = merged["scores"].sum(-1).mean(-1)
    assert np.isfinite(merged["scores"]).all()
    assert totals.max() - totals.min() > MIN_LOO_SPREAD, (variants, totals)

    # selection: the parameter drop is the chosen units' parameters, by the record and by the models
    sel = json.loads((d / "selection.json").read_text())
    chosen = sel["chosen"]
    assert len(chosen) == 1 and chosen[0] in variants
    drop = sum(sel["unit_params"][u] for u in chosen)
    assert sel["params_before"] - sel["params_after"] == drop > 0
    start, student, teacher = (ctx.model, ctx.student, ctx.teacher)
    assert start.num_params() - student.num_params() == drop
    assert student.backbone == backbone and set(student.units()) == set(start.units()) - set(chosen)

    # curation kept pairs, and a stored pair is what the teacher and the student generate
    arrays, attrs = read_h5(pairs_step.pairs_path(ctx))
    record = json.loads(pairs_step.report_path(ctx).read_text())
    assert record["kept"] == len(arrays["prompts"]) >= 1, record["rejected"]
    assert attrs["student_sha256"] == pairs_step.student_sha256(ctx)
    lat_w, lat_l = regenerated_pair(ctx, 0)
    torch.testing.assert_close(lat_w, torch.from_numpy(arrays["latents_w"][0]).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(lat_l, torch.from_numpy(arrays["latents_l"][0]).float(), atol=1e-5, rtol=0)
    assert (lat_w - lat_l).abs().max() > 1e-3  # two different models' samples

    # training ran on those pairs and changed the student's denoiser (only its values: same tensors)
    done = json.loads((d / "train" / "done.json").read_text())
    assert not done.get("skipped") and done["pairs"] == record["kept"] and done["steps"] >= 1, done
    before = read_state_dict(d / "pruned" / denoiser_dir(backbone))
    after = read_state_dict(d / "train" / "final" / denoiser_dir(backbone))
    assert before.keys() == after.keys()
    assert all(before[k].shape == after[k].shape for k in before)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    outcome = json.loads((d / "outcome.json").read_text())
    assert outcome["params"] == {"full": teacher.num_params(), "student": student.num_params()}
    assert outcome["training"] == f"{done['steps']} steps on {done['pairs']} pairs"
    return {"chosen": chosen, "variants": variants, "unit_params": sel["unit_params"],
            "removed": json.loads((d / "train" / "final" / "removed_units.json").read_text()),
            "full_params": teacher.num_params(), "student_params": student.num_params()}


def whole_stage(tmp_path: Path, backbone: str) -> None:
    overrides = write_inputs(tmp_path, backbone)
    run_dir = tmp_path / "run"
    r = run_stages(run_dir, overrides)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    cfg = config.load(ROOT / "configs/toyvid.yaml", overrides)
    run = RunDir(run_dir)

    s1, s2 = check_stage(run, cfg, 1), check_stage(run, cfg, 2)
    # stage 2 started from stage 1's trained student and pruned it further
    plan2 = loo.read_plan(run.stage(2))
    final1 = run.stage(1) / "train" / "final"
    assert Path(plan2["model"]) == final1 and plan2["model_sha256"] == sha256_tree(final1)
    assert s1["removed"] == s1["chosen"] and s2["removed"] == s1["chosen"] + s2["chosen"]
    assert not set(s1["chosen"]) & set(s2["variants"])  # stage 1's unit is gone, not evaluated again
    assert s1["full_params"] - s2["student_params"] == \
        s1["unit_params"][s1["chosen"][0]] + s2["unit_params"][s2["chosen"][0]]
    for n in (1, 2):
        assert f"stage {n}  ReDPO" in r.stdout  # the printed outcome table

    # the same command again: every step of both stages is found done, and nothing is written
    before = snapshot(run_dir)
    again = run_stages(run_dir, overrides)
    assert again.returncode == 0, (again.stdout[-2000:], again.stderr[-4000:])
    for n in (1, 2):
        assert f"stage {n}: {', '.join(STEPS)} done already (skipped)" in again.stdout, again.stdout[-3000:]
    after = snapshot(run_dir)
    changed = sorted(f for f in before.keys() | after.keys() if before.get(f) != after.get(f))
    assert not changed, f"the second run wrote {changed}"


def test_whole_stage_animatediff(tmp_path, one_thread):
    whole_stage(tmp_path, "animatediff")


def test_whole_stage_animatediff_lightning(tmp_path, one_thread):
    whole_stage(tmp_path, "animatediff_lightning")


def test_whole_stage_videocrafter2(tmp_path, one_thread):
    whole_stage(tmp_path, "videocrafter2")


def test_whole_stage_wan(tmp_path, one_thread):
    whole_stage(tmp_path, "wan2.1")
