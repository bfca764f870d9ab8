"""The fanned-out steps (leave-one-out, pair generation, prompt filtering) as task lists, for the
executors that spread them: Slurm arrays (vip.orchestrate.slurm) and packed jobs (vip.orchestrate.packed).

    spec = ARRAY_STEPS["loo"]
    spec.count(ctx) -> tasks in the plan (writes the plan if missing); spec.missing(ctx) -> those not done
    spec.run(ctx, i); spec.done(ctx, i)

No Slurm here: a packed rank started by mpirun on a machine without Slurm uses it too.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vip.steps.context import StageContext


@dataclass(frozen=True)
class ArrayStep:
    """How a fanned-out step's task runs: missing(ctx) -> [task], run(ctx, task), done(ctx, task)."""

    missing: Callable[[StageContext], list[int]]
    run: Callable[[StageContext, int], Any]
    done: Callable[[StageContext, int], bool]
    kind: str = "array"  # "cpu_array" for steps that need no GPU (prompt filtering calls an API)
    count: Callable[[StageContext], int] | None = None  # tasks in the plan (packed mode shares them out)


def _loo_missing(ctx):
    from vip.steps import loo
    return loo.missing(ctx)


def _loo_run(ctx, i):
    from vip.steps import loo
    loo.run_task(ctx, i)


def _loo_done(ctx, i):
    from vip.steps import loo
    return loo.shards(ctx).is_done(i)


def _loo_count(ctx):
    from vip.steps import loo
    return len(loo.plan(ctx)["tasks"])


def _pairs_missing(ctx):
    from vip.steps import pairs
    return pairs.missing(ctx)


def _pairs_run(ctx, i):
    from vip.steps import pairs
    pairs.run_task(ctx, i)


def _pairs_done(ctx, i):
    return i not in _pairs_missing(ctx)


def _pairs_count(ctx):
    from vip.steps import pairs
    return len(pairs.plan(ctx)["tasks"])


def _filter_missing(ctx):  # once per run: ctx.stage is 0
    from vip.steps import filter as prompt_filter
    return prompt_filter.missing(ctx.run, ctx.cfg)


def _filter_run(ctx, i):
    from vip.steps import filter as prompt_filter
    prompt_filter.run_task(ctx.run, ctx.cfg, i)


def _filter_done(ctx, i):
    from vip.steps import filter as prompt_filter
    return prompt_filter.shards(ctx.run).is_done(i)


def _filter_count(ctx):
    from vip.steps import filter as prompt_filter
    return len(prompt_filter.plan(ctx.run, ctx.cfg)["tasks"])


ARRAY_STEPS: dict[str, ArrayStep] = {
    "loo": ArrayStep(_loo_missing, _loo_run, _loo_done, count=_loo_count),
    "pairs": ArrayStep(_pairs_missing, _pairs_run, _pairs_done, count=_pairs_count),
    "filter": ArrayStep(_filter_missing, _filter_run, _filter_done, kind="cpu_array", count=_filter_count),
}
