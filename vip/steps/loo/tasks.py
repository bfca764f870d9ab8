"""One leave-one-out task: its variants scored on its samples, one shard written; a preempted task
keeps the variants it finished and a requeued one skips them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from vip import provenance as prov
from vip.config import ConfigError
from vip.evaluate import evaluate as score_samples
from vip.rewards.base import ASPECTS
from vip.selection import FULL
from vip.steps.context import StageContext
from vip.steps.loo.plan import plan, provenance, shards, step_dir
from vip.store import atomic_path


def evaluate(ctx: StageContext, units_off: list[str], lo: int, hi: int) -> np.ndarray:
    """Scores [hi - lo, aspects] of the model with `units_off` disabled."""
    es = ctx.eval_set
    return score_samples(ctx.model, ctx.reward, es.prompts[lo:hi], es.seeds[lo:hi], ctx.cfg.loo.batch_size,
                         units_off, timed=ctx.timed)


def _batched_engine(ctx: StageContext):
    """vip.steps.loo.engine over the stage model: gated units, several variants per batch."""
    from vip.steps.loo.engine import FastLoo, FastLooOptions

    if not hasattr(ctx.model, "denoiser"):
        raise ConfigError(f"config key 'loo.engine': 'batched' needs a denoiser with gateable units "
                          f"(toyvid, animatediff, wan2.1); backbone {ctx.cfg.model.backbone!r} has none: use 'plain'")
    cuda = ctx.model.device.type == "cuda"
    opts = FastLooOptions(batch_clips=ctx.cfg.loo.batch_size, dtype=str(ctx.model.dtype).removeprefix("torch."),
                          channels_last=cuda, compile=ctx.cfg.loo.compile,
                          short_attention=cuda and ctx.cfg.loo.compile)
    return FastLoo(ctx.model, ctx.reward, opts, units=[v for v in plan(ctx)["variants"] if v != FULL])


def run_task(ctx: StageContext, index: int, progress=None) -> None:
    planned = plan(ctx)
    task = planned["tasks"][index]
    if planned["model_sha256"] != ctx.model_sha256:
        raise ConfigError(f"the model at {ctx.model_path()} changed since stage {ctx.stage} was planned; "
                          "its leave-one-out scores would mix two models: start a new run with --run-dir")
    lo, hi = task["samples"]
    partial = partial_dir(ctx, index)
    # a task preempted mid-way keeps the variants it finished: a requeued task skips them
    scores = [_read_partial(partial / f"{j:03d}.npy", (hi - lo, len(ASPECTS))) for j in range(len(task["variants"]))]
    todo = [j for j, s in enumerate(scores) if s is None]
    if progress and len(todo) < len(task["variants"]):
        progress(len(task["variants"]) - len(todo))

    def keep(j: int, result: np.ndarray) -> None:
        with atomic_path(partial / f"{j:03d}.npy") as tmp, open(tmp, "wb") as f:
            np.save(f, result)
        scores[j] = result
        if progress:
            progress(1)

    es = ctx.eval_set
    if todo and ctx.cfg.loo.engine == "batched":
        # groups of variants that fill about one batch: shared batches, yet a partial per group
        per_group = max(1, ctx.cfg.loo.batch_size // (hi - lo))
        with _batched_engine(ctx) as engine:
            for g in range(0, len(todo), per_group):
                group = todo[g:g + per_group]
                with ctx.timed("generate+score"):
                    got = engine.run([task["variants"][j] for j in group], es.prompts[lo:hi], es.seeds[lo:hi])
                for j, result in zip(group, got):
                    keep(j, result)
    for j in todo if ctx.cfg.loo.engine == "plain" else ():
        variant = task["variants"][j]
        keep(j, evaluate(ctx, [] if variant == FULL else [variant], lo, hi))
    with ctx.timed("write"):
        shards(ctx).write(index, {
            "scores": np.stack(scores).astype(np.float32),  # [variants, samples, aspects]
            "variants": np.array(task["variants"]),
            "sample_ids": np.arange(lo, hi),
            "prompt_ids": np.array(es.prompt_ids[lo:hi]),
            "seeds": np.array(es.seeds[lo:hi]),
        }, {"aspects": json.dumps(ASPECTS), "config_sha256": ctx.cfg.hash(), "model_sha256": ctx.model_sha256,
            "task": index, prov.ATTR: prov.encode(provenance(ctx, planned, index))})
    shutil.rmtree(partial, ignore_errors=True)  # the shard holds it all now


def partial_dir(ctx: StageContext, index: int) -> Path:
    """Per-variant results of a task not yet written as a shard (same plan, so same model)."""
    return step_dir(ctx) / "partial" / f"task_{index:05d}"


def _read_partial(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        arr = np.load(path)
    except (OSError, ValueError):
        return None  # unreadable: recompute
    return arr if arr.shape == shape else None
