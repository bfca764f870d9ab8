"""A whole V.I.P. stage on a real backbone family: a tiny AnimateDiff written in the published
layout (SD1.5 directory + MotionAdapter directory), through the same driver, steps and DeepSpeed
trainer as toyvid. What toyvid cannot show: a real VAE between latents and clips, an epsilon-
prediction DDIM, a pruned AnimateDiff saved and reloaded between steps and stages."""
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from vip import config
from vip.models.registry import load_video_model
from vip.orchestrate import driver
from vip.steps.context import StageContext
from vip.steps.pairs import pairs_path, student_sha256
from vip.store import RunDir, read_h5, write_h5

from helpers.tiny_backbones import tiny_adapter, write_sd15
from helpers.train import ROOT, train_env

UNITS = ["down_blocks.0.motion_modules.0", "mid_block.motion_modules.0", "up_blocks.1.motion_modules.1"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("ad")
    write_sd15(root / "sd15", seed=0)
    tiny_adapter(mid=True, heads=2, groups=16, seed=None).save_pretrained(root / "adapter")  # drawn after the SD1.5
    return root


def _cfg(weights, *extra):
    return config.load(ROOT / "configs/toyvid.yaml", [
        "model.backbone=animatediff", f"model.path={weights / 'sd15'}", f"model.adapter={weights / 'adapter'}",
        "model.steps=2", "model.guidance=1.0", "model.frames=4", "model.height=32", "model.width=32",
        "prompts.eval_count=3", f"loo.units={','.join(UNITS)}", "loo.units_per_task=2", "loo.batch_size=4",
        "select.k=2", "curate.max_prompts=2", "curate.seeds_per_prompt=1", "curate.samples_per_task=2",
        "curate.batch_size=2", "train.epochs=1", "train.batch_size=2", "train.min_pairs=1", "train.w_sft=10",
        "train.checkpoint_every=0", "runtime.progress=false", *extra])


def test_a_stage_prunes_saves_and_reloads_an_animatediff_student(weights, tmp_path):
    cfg = _cfg(weights)
    run = RunDir(tmp_path / "run")
    ctx = driver.preflight(cfg, run, 1)
    driver.run_stage(ctx)

    scores, _ = read_h5(ctx.dir / "loo.h5")
    variants = scores["variants"].tolist()
    assert variants[0] == "<full>" and sorted(variants[1:]) == sorted(UNITS) and scores["scores"].shape == (4, 3, 4)
    sel = json.loads((ctx.dir / "selection.json").read_text())
    removed = sel["chosen"]
    assert len(removed) == 2 and set(removed) <= set(UNITS)
    assert sel["params_before"] - sel["params_after"] == sum(sel["unit_params"][u] for u in removed)

    full = load_video_model(cfg.model, weights / "sd15")
    pruned = load_video_model(cfg.model, ctx.pruned_path())
    assert pruned.backbone == "animatediff"
    assert set(pruned.units()) == set(full.units()) - set(removed)
    unit_params = dict(zip(variants, scores["unit_params"].tolist()))
    assert full.num_params() - pruned.num_params() == sum(unit_params[u] for u in removed) > 0
    # the pruned student generates exactly what the full model does with those units switched off
    with full.disabled(removed):
        want = full.sample_latents(["a red circle moves left"], [7])
    assert torch.equal(pruned.sample_latents(["a red circle moves left"], [7]), want)

    outcome = json.loads((ctx.dir / "outcome.json").read_text())
    assert outcome["params"] == {"full": full.num_params(), "student": pruned.num_params()}
    assert sorted(outcome["removed_units"]) == sorted(removed)


def test_deepspeed_trains_an_animatediff_student_on_vae_latents(weights, tmp_path):
    cfg = _cfg(weights)
    run = RunDir(tmp_path / "run")
    run.freeze(cfg)
    ctx = StageContext(run, cfg, 1)
    student = ctx.model.pruned(UNITS[:2])
    student.save(ctx.pruned_path())
    # pairs in curation's layout: teacher latents preferred, student latents unpreferred
    prompts = ["a red circle moves left", "a blue square moves up"] * 2
    seeds = [1, 2, 3, 4]
    write_h5(pairs_path(ctx), {
        "latents_w": ctx.model.sample_latents(prompts, seeds).half().numpy(),
        "latents_l": student.sample_latents(prompts, seeds).half().numpy(),
        "prompts": np.array(prompts),
    }, {"config_sha256": cfg.hash(), "student_sha256": student_sha256(ctx), "targets": json.dumps(["visual_quality"])})

    r = subprocess.run([sys.executable, str(ROOT / "jobs/train_redpo.py"), "--run-dir", str(run.path), "--stage", "1",
                        "--no-progress"], env=train_env(), capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    metrics = [json.loads(line) for line in (ctx.dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and all(np.isfinite(m["loss"]) for m in metrics)  # 4 pairs / batch 2, 1 epoch
    trained = load_video_model(cfg.model, ctx.dir / "train" / "final")
    assert trained.backbone == "animatediff" and trained.units() == student.units()
    before = dict(student.trainable_module().named_parameters())
    changed = [n for n, p in trained.trainable_module().named_parameters() if not torch.equal(p, before[n])]
    assert changed  # the student learned
    with h5py.File(pairs_path(ctx)) as f:
        assert f["latents_w"].shape[1:] == (4, 4, 16, 16)  # VAE latents: 4 channels at 1/2 size (tiny VAE)
