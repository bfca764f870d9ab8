"""One step (or one task of an array step) of one stage, as `jobs/step.py` and the Slurm jobs run it.

Every step checks its inputs first and raises IncompleteError naming what is missing; a step that is
already done says so and does nothing. Returns one line saying what happened.
"""
from __future__ import annotations

from vip.config import ConfigError
from vip.steps import filter as prompt_filter
from vip.steps import loo, outcome, pairs, select, target
from vip.steps.context import StageContext
from vip.store import IncompleteError
from vip.train import redpo_trainer

STEPS = ("loo", "select", "target", "pairs", "curate", "outcome")


def run_step(step: str, ctx: StageContext, task: int | None = None) -> str:
    s = f"stage {ctx.stage} {step}"
    if task is not None and step not in ("loo", "pairs"):
        raise ConfigError(f"--task is for the array steps loo and pairs, not {step}")
    if step == "loo":
        if loo.is_done(ctx):
            return f"{s}: already merged ({loo.merged_path(ctx)})"
        if task is None:
            from vip.orchestrate import driver

            driver.run_loo(ctx)
            return f"{s}: every task done"
        _check_task(task, len(loo.plan(ctx)["tasks"]), s)
        if loo.shards(ctx).is_done(task):
            return f"{s} task {task}: already done"
        loo.shards(ctx).discard(task)  # a truncated or mismatched shard is redone from scratch
        loo.run_task(ctx, task)
        return f"{s} task {task}: done"
    if step == "select":
        if select.is_done(ctx):
            return f"{s}: already done ({select.selection_path(ctx)})"
        if not loo.is_done(ctx):
            loo.merge(ctx)  # refuses, naming the missing shards, unless every task is done
        return f"{s}: merged {loo.merged_path(ctx)}, chose {', '.join(select.run(ctx).chosen)}"
    if step == "target":
        if target.is_done(ctx):
            return f"{s}: already done ({target.target_path(ctx)})"
        if not select.is_done(ctx):
            raise IncompleteError(f"target detection needs stage {ctx.stage}'s selection "
                                  f"({select.selection_path(ctx)}); run the select step first")
        return f"{s}: target(s) {', '.join(target.run(ctx)['targets'])}"
    if step == "pairs":
        if pairs.is_done(ctx):
            return f"{s}: already curated ({pairs.pairs_path(ctx)})"
        check_pair_inputs(ctx)
        if task is None:
            from vip.orchestrate import driver

            driver.run_pairs(ctx)
            return f"{s}: every task done"
        _check_task(task, len(pairs.plan(ctx)["tasks"]), s)
        if task not in pairs.missing(ctx):
            return f"{s} task {task}: already done"
        pairs.run_task(ctx, task)  # each side's shard is checked (and redone if bad) inside
        return f"{s} task {task}: done"
    if step == "curate":
        if pairs.is_done(ctx):
            return f"{s}: already done ({pairs.pairs_path(ctx)})"
        if pairs.read_plan(ctx.dir) is None:
            raise IncompleteError(f"curation needs the pair shards of stage {ctx.stage} ({pairs.step_dir(ctx)}); "
                                  "run the pairs step first")
        record = pairs.curate(ctx)  # refuses, naming the missing shards, unless every task is done
        return f"{s}: kept {record['kept']} of {record['candidates']} pairs -> {pairs.pairs_path(ctx)}"
    if step == "outcome":
        if outcome.is_done(ctx):
            return f"{s}: already done ({outcome.outcome_path(ctx)})"
        if not redpo_trainer.is_done(ctx.run, ctx.stage, ctx.cfg):
            raise IncompleteError(f"the outcome needs stage {ctx.stage}'s trained student "
                                  f"({redpo_trainer.final_path(ctx.run, ctx.stage)}); run training first")
        return f"{s}: ReDPO total {outcome.run(ctx)['redpo']['total']:.3f}"
    raise ConfigError(f"unknown step {step!r}; expected one of {', '.join(STEPS)}")


def check_pair_inputs(ctx: StageContext) -> None:
    """Pairs are planned from target.json and the run's filtered prompt sets."""
    if not target.is_done(ctx):
        raise IncompleteError(f"pair generation needs {target.target_path(ctx)}; run the target step first")
    if not prompt_filter.is_done(ctx.run, ctx.cfg):
        raise IncompleteError(f"pair generation needs the run's filtered prompts "
                              f"({prompt_filter.scores_path(ctx.run)}); run jobs/filter_prompts.py first")


def check_train_inputs(ctx: StageContext) -> None:
    if not pairs.is_done(ctx):
        raise IncompleteError(f"training needs stage {ctx.stage}'s curated pairs ({pairs.pairs_path(ctx)}); "
                              "run the curate step first")


def _check_task(task: int, n: int, what: str) -> None:
    if not 0 <= task < n:
        raise ConfigError(f"--task {task} is out of range: {what} has {n} tasks (0 to {n - 1})")
