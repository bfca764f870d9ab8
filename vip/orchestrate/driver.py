"""The stage driver: works out what a stage still needs and runs it.

Each step is idempotent and checks its inputs, so calling the driver again after a crash
or preemption redoes only what is missing (a corrupt shard counts as missing).
"""
from __future__ import annotations

from vip.config import Config, ConfigError
from vip.models.registry import check_backbone
from vip.orchestrate import local
from vip.rewards.registry import check_reward
from vip.steps import loo, select
from vip.steps.context import StageContext
from vip.store import RunDir


def preflight(cfg: Config, run: RunDir, stage: int) -> StageContext:
    """Check everything a stage needs before anything is written."""
    if stage < 1:
        raise ConfigError(f"--stage must be 1 or more, got {stage}")
    check_backbone(cfg.model.backbone)
    check_reward(cfg.reward.name)
    ctx = StageContext(run, cfg, stage)
    ctx.eval_set  # noqa: B018 - reads and checks the prompt file
    units = loo.units_to_evaluate(ctx)  # loads the model, checks loo.units
    if cfg.select.k > len(units):
        raise ConfigError(f"config key 'select.k' is {cfg.select.k} but only {len(units)} units are evaluated "
                          f"({len(ctx.model.units())} in the model); expected 1 to {len(units)}")
    run.freeze(cfg)
    return ctx


def run_loo(ctx: StageContext) -> None:
    tasks = loo.plan(ctx)["tasks"]
    todo = loo.missing(ctx)
    for i in todo:  # a task whose shard is truncated or mismatched is redone from scratch
        loo.shards(ctx).discard(i)
    local.run_tasks(
        todo,
        lambda i, advance: loo.run_task(ctx, i, advance),
        total_units=sum(len(tasks[i]["variants"]) for i in todo),
        desc=f"stage {ctx.stage} leave-one-out ({len(todo)}/{len(tasks)} tasks)",
        progress=ctx.cfg.runtime.progress,
    )


def run_stage(ctx: StageContext) -> dict:
    if not loo.is_done(ctx):
        if loo.missing(ctx):
            run_loo(ctx)
        loo.merge(ctx)
    if not select.is_done(ctx):
        select.run(ctx)
    return select.load(ctx)
