"""Benchmarks (not tests): print figures for docs/benchmarks.md.

    python -m vip.bench loo --config configs/toyvid.yaml [--variants 5] [section.key=value ...]

`loo` times leave-one-out evaluation as vip runs it (model loaded once, units switched
off in place, batched generation) against the loop a user would otherwise write with
diffusers (reload the model for every variant, one pipeline call per prompt), on the
same variants, prompts and seeds, and checks both give the same scores.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vip import config as vip_config
from vip.cli import fail_cleanly
from vip.models.registry import load_video_model
from vip.rewards.base import ASPECTS
from vip.steps import loo
from vip.steps.context import StageContext
from vip.store import RunDir, ShardSet


def bench_loo(cfg, n_variants: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(RunDir(tmp), cfg, 1)
        es = ctx.eval_set
        _ = ctx.model, ctx.reward
        variants = [loo.FULL] + ctx.model.units()[: n_variants - 1]
        n_clips = len(variants) * len(es.prompts)

        t0 = time.perf_counter()
        ours = []
        for v in variants:
            ours.append(loo.evaluate(ctx, [] if v == loo.FULL else [v], 0, len(es.prompts)))
        with ctx.timed("write"):
            ShardSet(Path(tmp) / "loo").write(0, {"scores": np.stack(ours)}, {})
        ours_s = time.perf_counter() - t0 + ctx.timings["load"]
        split = dict(ctx.timings)

        # baseline: what one writes by hand: reload per variant, one call per prompt
        t0 = time.perf_counter()
        base = []
        for v in variants:
            model = load_video_model(cfg.model, ctx.model_path())
            if v != loo.FULL:
                model = model.pruned([v])
            rows = []
            for p, s in zip(es.prompts, es.seeds):
                clip = model.generate([p], [s])
                sc = ctx.reward.score(clip, [p])
                rows.append([float(sc[a][0]) for a in ASPECTS])
            base.append(np.array(rows))
        base_s = time.perf_counter() - t0
        diff = float(np.abs(np.stack(ours) - np.stack(base)).max())

    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {cfg.model.device}")
    print(f"work: {len(variants)} variants x {len(es.prompts)} prompts = {n_clips} clips, "
          f"{cfg.model.steps} steps, batch {cfg.loo.batch_size}")
    print(f"vip loo:      {n_clips / ours_s:7.2f} clips/s  ({ours_s:.1f} s)")
    total = sum(split.values())
    print("  split: " + ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in split.items()))
    print(f"baseline:     {n_clips / base_s:7.2f} clips/s  ({base_s:.1f} s)  reload per variant, batch 1")
    print(f"speed-up:     {base_s / ours_s:.2f}x   max score difference {diff:.2e}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["loo"])
    ap.add_argument("--config", default="configs/toyvid.yaml")
    ap.add_argument("--variants", type=int, default=5, help="full model + this many minus one units")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()
    with fail_cleanly():
        cfg = vip_config.load(args.config, args.overrides)
        bench_loo(cfg, args.variants)


if __name__ == "__main__":
    main()
