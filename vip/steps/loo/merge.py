"""loo.h5 from every planned shard: refused while a task is missing, a round unplanned or a shard's
provenance differs from the plan."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vip import provenance as prov
from vip.rewards.base import ASPECTS
from vip.steps.context import StageContext
from vip.steps.loo.plan import merged_path, plan, provenance, rounds_left, shards, step_dir
from vip.store import IncompleteError, read_h5, write_h5


def table(ctx: StageContext, meta: dict) -> np.ndarray:
    """scores[variant, sample, aspect] from every planned shard; NaN where no task covers a cell.
    A shard whose provenance is not what the plan expects is refused, never merged."""
    variants = meta["variants"]
    full = np.full((len(variants), meta["samples"], len(ASPECTS)), np.nan, dtype=np.float32)
    for i, (arrays, attrs) in enumerate(shards(ctx).read_all(list(range(len(meta["tasks"]))))):
        prov.check(shards(ctx).shard(i), attrs, provenance(ctx, meta, i))
        rows = [variants.index(v) for v in arrays["variants"]]
        full[np.ix_(rows, arrays["sample_ids"])] = arrays["scores"]
    return full


def merge(ctx: StageContext) -> Path:
    """loo.h5 = scores[variant, sample, aspect] over all tasks; refuses if any task is missing.

    Adaptive: cells of units settled in an earlier round stay NaN (select.deltas pairs each unit
    with the full model on the samples it saw); every planned cell must be there."""
    meta = plan(ctx)
    if rounds_left(meta):
        raise IncompleteError(f"adaptive leave-one-out has planned {len(meta['adaptive']['rounds'])} of "
                              f"{len(meta['adaptive']['ends'])} rounds in {step_dir(ctx)}; run the step again")
    variants = meta["variants"]
    es = ctx.eval_set
    full = table(ctx, meta)
    planned_cells = np.zeros(full.shape[:2], dtype=bool)
    for task in meta["tasks"]:
        planned_cells[[variants.index(v) for v in task["variants"]], slice(*task["samples"])] = True
    if np.isnan(full[planned_cells]).any():  # every planned (variant, sample) cell must be covered by some shard
        raise IncompleteError(f"merged leave-one-out scores have gaps in {step_dir(ctx)}; re-run the step")
    params = ctx.model.unit_params()
    write_h5(merged_path(ctx), {
        "scores": full,
        "variants": np.array(variants),
        "prompts": np.array(es.prompts),
        "prompt_ids": np.array(es.prompt_ids),
        "seeds": np.array(es.seeds),
        "unit_params": np.array([params.get(v, 0) for v in variants]),
        "samples_seen": planned_cells.sum(1),  # < samples only for units adaptive evaluation settled early
    }, {"aspects": json.dumps(ASPECTS), "config_sha256": ctx.cfg.hash(), "model": meta["model"],
        "model_sha256": meta["model_sha256"], "model_params": ctx.model.num_params()})
    return merged_path(ctx)


def is_done(ctx: StageContext) -> bool:
    p = merged_path(ctx)
    if not p.is_file():
        return False
    try:
        _, attrs = read_h5(p)
    except OSError:
        return False
    return attrs.get("config_sha256") == ctx.cfg.hash()
