"""Adaptive leave-one-out's next round, planned from the scores of the rounds so far."""
from __future__ import annotations

import numpy as np

from vip.selection import FULL
from vip.steps.context import StageContext
from vip.steps.loo.adaptive import still_in_play
from vip.steps.loo.merge import table
from vip.steps.loo.plan import _tasks, missing, plan, rounds_left, step_dir
from vip.store import atomic_write_json


def advance(ctx: StageContext) -> bool:
    """Adaptive only: once every planned task is done, plan the next round for the full model and
    the units whose place in both rankings is not settled yet. True when a round was added."""
    planned = plan(ctx)
    if not rounds_left(planned) or missing(ctx):
        return False
    a = planned["adaptive"]
    scores = table(ctx, planned)
    variants = planned["variants"]
    hi = a["rounds"][-1]["samples"][1]
    full = scores[0, :hi]
    seen = {v: scores[i, :hi][~np.isnan(scores[i, :hi]).any(-1)] for i, v in enumerate(variants) if v != FULL}
    active = still_in_play(full, seen, [v for v in a["rounds"][-1]["variants"] if v != FULL], a["k"], a["z"])
    nxt = a["ends"][len(a["rounds"])]
    first = len(planned["tasks"])
    planned["tasks"] += _tasks([FULL] + active, hi, nxt, ctx.cfg.loo.units_per_task, ctx.cfg.loo.prompts_per_task)
    a["rounds"].append({"samples": [hi, nxt], "variants": [FULL] + active,
                        "tasks": list(range(first, len(planned["tasks"])))})
    atomic_write_json(step_dir(ctx) / "tasks.json", planned)
    return True
