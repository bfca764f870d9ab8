"""Leave-one-out evaluation: V(M) and V(M - unit) for every unit, on fixed prompts and seeds.

Work is split into tasks of (a few variants) x (a chunk of samples); a task loads the
model once and switches units off in place. Each task writes one HDF5 shard; `merge`
builds loo.h5 only when every shard is present and intact.

With loo.adaptive the samples are evaluated in rounds (vip.perf.adaptive): the plan starts with
round 0 and `advance` appends the next round's tasks, for the full model and the units still in
play, once every task of the last round is done. Task indices only grow, so shards stay valid.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from vip import provenance as prov
from vip.config import ConfigError
from vip.evaluate import evaluate as score_samples
from vip.perf.adaptive import schedule, still_in_play
from vip.rewards.base import ASPECTS
from vip.selection import FULL  # noqa: F401  (loo.FULL: the name every reader of loo.h5 uses)
from vip.steps.context import StageContext
from vip.store import IncompleteError, ShardSet, atomic_path, atomic_write_json, read_h5, write_h5



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
        planned["adaptive"] = {"k": ctx.cfg.select.k, "z": lc.adaptive_z, "ends": ends,
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


def advance(ctx: StageContext) -> bool:
    """Adaptive only: once every planned task is done, plan the next round for the full model and
    the units whose place in both rankings is not settled yet. True when a round was added."""
    planned = plan(ctx)
    if not rounds_left(planned) or missing(ctx):
        return False
    a = planned["adaptive"]
    table = _table(ctx, planned)
    variants = planned["variants"]
    hi = a["rounds"][-1]["samples"][1]
    full = table[0, :hi]
    seen = {v: table[i, :hi][~np.isnan(table[i, :hi]).any(-1)] for i, v in enumerate(variants) if v != FULL}
    active = still_in_play(full, seen, [v for v in a["rounds"][-1]["variants"] if v != FULL], a["k"], a["z"])
    nxt = a["ends"][len(a["rounds"])]
    first = len(planned["tasks"])
    planned["tasks"] += _tasks([FULL] + active, hi, nxt, ctx.cfg.loo.units_per_task, ctx.cfg.loo.prompts_per_task)
    a["rounds"].append({"samples": [hi, nxt], "variants": [FULL] + active,
                        "tasks": list(range(first, len(planned["tasks"])))})
    atomic_write_json(step_dir(ctx) / "tasks.json", planned)
    return True


def missing(ctx: StageContext) -> list[int]:
    return shards(ctx).missing(range(len(plan(ctx)["tasks"])))


def evaluate(ctx: StageContext, units_off: list[str], lo: int, hi: int) -> np.ndarray:
    """Scores [hi - lo, aspects] of the model with `units_off` disabled."""
    es = ctx.eval_set
    return score_samples(ctx.model, ctx.reward, es.prompts[lo:hi], es.seeds[lo:hi], ctx.cfg.loo.batch_size,
                         units_off, timed=ctx.timed)


def _batched_engine(ctx: StageContext):
    """vip.perf.fast_loo over the stage model: gated units, several variants per batch."""
    from vip.perf.fast_loo import FastLoo, FastLooOptions

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


def provenance(ctx: StageContext, planned: dict, index: int) -> dict:
    """What determines task `index`'s shard (vip.provenance): the planned model, how it samples and
    what scores it, the samples' seeds, prompt ids and texts, and the task's place in the plan."""
    task, es = planned["tasks"][index], ctx.eval_set
    lo, hi = task["samples"]
    return {"kind": "loo", "model_sha256": planned["model_sha256"], "sampler": prov.sampler(ctx.cfg.model),
            "reward": prov.reward(ctx.cfg.reward), "seeds": es.seeds[lo:hi], "prompt_ids": es.prompt_ids[lo:hi],
            "prompts_sha256": prov.texts_sha256(es.prompts[lo:hi]), "task": index, "variants": task["variants"],
            "samples": [lo, hi]}


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


def _table(ctx: StageContext, meta: dict) -> np.ndarray:
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
    full = _table(ctx, meta)
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
