"""The leave-one-out plan: which task scores which variants on which samples, written once to
loo/tasks.json so re-runs and array tasks agree on what task i is; and what determines each task's shard."""
from __future__ import annotations

import json
from pathlib import Path

from vip import provenance as prov
from vip.selection import FULL
from vip.steps.context import StageContext
from vip.steps.loo.adaptive import schedule
from vip.store import ShardSet, atomic_write_json


def step_dir(ctx: StageContext) -> Path:
    return ctx.dir / "loo"


def shards(ctx: StageContext) -> ShardSet:
    return ShardSet(step_dir(ctx))


def merged_path(ctx: StageContext) -> Path:
    return ctx.dir / "loo.h5"


def _chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def units_to_evaluate(ctx: StageContext) -> list[str]:
    wanted = ctx.cfg.loo.units
    if wanted:  # units an earlier stage removed are simply gone; any other unknown name is an error
        removed = set(getattr(ctx.model, "removed", []))
        ctx.model.check_units([u for u in wanted if u not in removed])
        return [u for u in ctx.model.units() if u in wanted]
    return ctx.model.units()


def read_plan(stage_dir: Path) -> dict | None:
    """The stage's written plan, or None before planning (reads files only)."""
    path = stage_dir / "loo" / "tasks.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _tasks(variants: list[str], lo: int, hi: int, units_per_task: int, prompts_per_task: int) -> list[dict]:
    per = prompts_per_task or hi - lo
    return [{"variants": vs, "samples": [a, min(a + per, hi)]}
            for vs in _chunks(variants, units_per_task) for a in range(lo, hi, per)]


def plan(ctx: StageContext) -> dict:
    """The plan {model, model_sha256, variants, samples, tasks[, adaptive]}, written once to
    loo/tasks.json and read back on every later call, so re-runs and array tasks agree on what task i is."""
    planned = read_plan(ctx.dir)
    if planned is not None:
        return planned

    lc = ctx.cfg.loo
    variants = [FULL] + units_to_evaluate(ctx)
    n = len(ctx.eval_set.prompts)
    planned = {"model": str(ctx.model_path()), "model_sha256": ctx.model_sha256, "variants": variants, "samples": n}
    if lc.adaptive:
        ends = schedule(n, lc.adaptive_first)
        planned["tasks"] = _tasks(variants, 0, ends[0], lc.units_per_task, lc.prompts_per_task)
        planned["adaptive"] = {"k": ctx.cfg.select.k_at(ctx.stage), "z": lc.adaptive_z, "ends": ends,
                               "rounds": [{"samples": [0, ends[0]], "variants": variants,
                                           "tasks": list(range(len(planned["tasks"])))}]}
    else:
        planned["tasks"] = _tasks(variants, 0, n, lc.units_per_task, lc.prompts_per_task)
    atomic_write_json(step_dir(ctx) / "tasks.json", planned)
    return planned


def rounds_left(planned: dict) -> int:
    """Adaptive rounds not yet planned (0 when exhaustive or when the last round is planned)."""
    if "adaptive" not in planned:
        return 0
    a = planned["adaptive"]
    return len(a["ends"]) - len(a["rounds"])


def missing(ctx: StageContext) -> list[int]:
    return shards(ctx).missing(range(len(plan(ctx)["tasks"])))


def provenance(ctx: StageContext, planned: dict, index: int) -> dict:
    """What determines task `index`'s shard (vip.provenance): the planned model, how it samples and
    what scores it, the samples' seeds, prompt ids and texts, and the task's place in the plan."""
    task, es = planned["tasks"][index], ctx.eval_set
    lo, hi = task["samples"]
    return {"kind": "loo", "model_sha256": planned["model_sha256"], "sampler": prov.sampler(ctx.cfg.model),
            "reward": prov.reward(ctx.cfg.reward), "seeds": es.seeds[lo:hi], "prompt_ids": es.prompt_ids[lo:hi],
            "prompts_sha256": prov.texts_sha256(es.prompts[lo:hi]), "task": index, "variants": task["variants"],
            "samples": [lo, hi]}
