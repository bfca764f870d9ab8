"""Whether a step of a stage is done, read from its files: one table for the Slurm submitter and the
entry points' preflight (below both, beside the steps it asks)."""
from __future__ import annotations

from vip.steps import filter as prompt_filter
from vip.steps import loo, outcome, pairs, select, target
from vip.steps.context import StageContext
from vip.train import redpo_trainer


def step_done(ctx: StageContext, step: str) -> bool:
    """Whether `step` of the stage is done, from its files (the submitter and the preflight ask)."""
    run, cfg = ctx.run, ctx.cfg
    return {
        "loo": lambda: loo.is_done(ctx), "loo_round": lambda: loo.is_done(ctx) or not loo.missing(ctx),
        "select": lambda: select.is_done(ctx),
        "filter": lambda: prompt_filter.is_done(run, cfg), "target": lambda: target.is_done(ctx),
        "pairs": lambda: pairs.is_done(ctx), "curate": lambda: pairs.is_done(ctx),
        "train": lambda: redpo_trainer.is_done(run, ctx.stage, cfg), "outcome": lambda: outcome.is_done(ctx),
    }[step]()
