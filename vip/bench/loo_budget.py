"""`python -m vip.bench loo-budget`: how much cheaper leave-one-out evaluation can be and still choose the
units the exhaustive evaluation chooses (issue 21, item 3).

Per table (a model and a run.seed) the exhaustive reference is the config's sampler at model.steps (toyvid:
10 DDIM steps) on every evaluation prompt (prompts.eval_count, 36). Cheaper settings, each compared with it:

* fewer sampler steps, with the model's own scheduler or another one built from its config (DPM-Solver++,
  UniPC: `SAMPLERS`);
* fewer prompts: the first n of the evaluation set, which is what prompts.eval_count=n evaluates (the same
  prompts and seeds: sample i is prompt i with seed run.seed + i);
* adaptive rounds (vip.steps.loo.adaptive) replayed on the table with from_table, at z and first round size;
* the reward on the first frames only (toyvid_score reads every frame of the clip and has no reward.frames;
  this is the clip cut before scoring, generation unchanged, so it saves no clip-steps);
* and every combination of these.

Per setting: whether it chooses the same units (as a set) as the reference, Kendall's tau (tau-b) of the
total-Δ and of the temporal-consistency-Δ values against the reference's, over the units, and its cost in
clip-steps (clips generated x sampler steps; adaptive counts the clips it evaluates) relative to the reference.

Models: the config's model (stage 1), then that model pruned by its reference choice on the first seed (a
stand-in for stage 2's M: untrained, no ReDPO), then that one pruned by its own choice (stage 3), as many as
--stages. Every (model, seed, sampler, steps, variant) is one task of the process pool (one torch thread
each); tasks run by priority (the first seed's references first: they name the next model), and with
--budget-s no task is started after that many seconds, so a setting whose tables are incomplete is left out.
"""
from __future__ import annotations

import heapq
import itertools
import math
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from multiprocessing import get_context

import numpy as np

from vip.selection import FULL, TC, choose, deltas
from vip.steps.loo.adaptive import adaptive_loo, from_table

# sampler name -> diffusers scheduler class built from the model's scheduler config (None: the model's own)
SAMPLERS = {"ddim": None, "dpm++": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler"}


@dataclass(frozen=True, order=True)
class Gen:
    """How one table's clips are made and scored: sampler, steps, frames the reward reads (0 = all)."""
    sampler: str
    steps: int
    frames: int = 0

    @property
    def name(self) -> str:
        return f"{self.sampler}-{self.steps}" + (f"/f{self.frames}" if self.frames else "")


# (generation, priority tier): lower tiers run first; with --budget-s the last tiers may be cut
DEFAULT_GENS = [("ddim", 6, 2), ("ddim", 4, 2), ("ddim", 3, 3), ("dpm++", 4, 3), ("unipc", 4, 3), ("dpm++", 3, 4),
                ("unipc", 3, 4), ("dpm++", 6, 5)]
PROMPT_COUNTS = (12, 18, 24)
ADAPTIVE = tuple((z, first) for z in (2.0, 3.0) for first in (4, 8))
PREFIX_FRAMES = 4  # the reference clips also scored on their first 4 frames


# ---------------------------------------------------------------- analysis (pure numpy)

def kendall_tau(a, b) -> float:
    """Kendall's tau-b of two equally long sequences (ties in either count as neither concordant nor
    discordant, as scipy.stats.kendalltau's default); NaN when either is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"kendall_tau of {a.shape} and {b.shape}")
    i, j = np.triu_indices(len(a), 1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n_a, n_b = int((da != 0).sum()), int((db != 0).sum())
    if n_a == 0 or n_b == 0:
        return float("nan")
    return float((da * db).sum() / math.sqrt(n_a * n_b))


def settle(scores: np.ndarray, variants: list[str], k: int, n_prompts: int, adaptive: tuple[float, int] | None):
    """The choice on the first n_prompts samples of a table, exhaustive or adaptive:
    (chosen units, delta, clips evaluated)."""
    table = scores[:, :n_prompts]
    if adaptive is None:
        sel = choose(deltas(table, variants), k)
        return sel.chosen, sel.delta, len(variants) * n_prompts
    z, first = adaptive
    r = adaptive_loo(from_table(table, variants), [v for v in variants if v != FULL], n_prompts, k, z=z, first=first)
    return r.selection.chosen, r.selection.delta, r.clips


def compare(ref_delta: dict, delta: dict, ref_chosen: list[str], chosen: list[str]) -> dict:
    """Same units (as a set), and Kendall's tau of the total-Δ and TC-Δ values over the reference's units."""
    units = list(ref_delta)
    return {"same": set(chosen) == set(ref_chosen),
            "tau_total": kendall_tau([ref_delta[u]["total"] for u in units], [delta[u]["total"] for u in units]),
            "tau_tc": kendall_tau([ref_delta[u][TC] for u in units], [delta[u][TC] for u in units])}


def settings(gens: list[Gen], n_all: int, prompt_counts=PROMPT_COUNTS, adaptive=ADAPTIVE) -> list[dict]:
    """Every combination: generation x prompts (fewer, and all) x (exhaustive, adaptive z/first)."""
    counts = sorted({n for n in prompt_counts if n < n_all} | {n_all})
    return [{"gen": g, "prompts": n, "adaptive": a} for g in gens for n in counts for a in (None, *adaptive)]


def setting_name(s: dict) -> str:
    a = s["adaptive"]
    return f"{s['gen'].name} p{s['prompts']}" + (f" adaptive z={a[0]:g} first={a[1]}" if a else "")


def analyse(tables: dict, ref: Gen, k: int, prompt_counts=PROMPT_COUNTS, adaptive=ADAPTIVE) -> dict:
    """tables: (model, seed) -> {"variants": [...], "scores": {Gen: [variants, samples, aspects]}}.

    Returns {"per_table": [...], "summary": [...]} : per (table, setting) its choice, agreement, taus and
    relative cost; per setting the tables it was measured on, how many chose the same units, the mean taus
    and the mean / max relative cost. Settings are those whose generation some table holds."""
    per_table, gens = [], sorted({g for t in tables.values() for g in t["scores"]})
    for key, t in tables.items():
        variants, full_scores = t["variants"], t["scores"][ref]
        n_all = full_scores.shape[1]
        ref_chosen, ref_delta, ref_clips = settle(full_scores, variants, k, n_all, None)
        ref_cost = ref_clips * ref.steps
        for s in settings(gens, n_all, prompt_counts, adaptive):
            if s["gen"] not in t["scores"]:
                continue
            chosen, delta, clips = settle(t["scores"][s["gen"]], variants, k, s["prompts"], s["adaptive"])
            steps = s["gen"].steps
            per_table.append({"model": key[0], "seed": key[1], "setting": setting_name(s), **s, "gen": s["gen"].name,
                              "chosen": chosen, "reference": ref_chosen, **compare(ref_delta, delta, ref_chosen, chosen),
                              "clips": clips, "clip_steps": clips * steps, "cost": clips * steps / ref_cost})
    summary = []
    for name, rows in itertools.groupby(sorted(per_table, key=lambda r: r["setting"]), key=lambda r: r["setting"]):
        rows = list(rows)
        summary.append({"setting": name, "gen": rows[0]["gen"], "prompts": rows[0]["prompts"],
                        "adaptive": rows[0]["adaptive"], "tables": len(rows), "same": sum(r["same"] for r in rows),
                        "tau_total": float(np.nanmean([r["tau_total"] for r in rows])),
                        "tau_tc": float(np.nanmean([r["tau_tc"] for r in rows])),
                        "cost": float(np.mean([r["cost"] for r in rows])),
                        "max_cost": float(np.max([r["cost"] for r in rows])),
                        "differ_on": [f"{r['model']}/seed {r['seed']}" for r in rows if not r["same"]]})
    summary.sort(key=lambda r: (r["cost"], r["setting"]))
    return {"per_table": per_table, "summary": summary}


def cheapest(summary: list[dict], n_tables: int, most_cost: float = 1 / 3) -> dict | None:
    """The cheapest setting (by max cost over tables) measured on every table that chose the same units on
    all of them, at a cost of at most most_cost; None if there is none."""
    ok = [r for r in summary if r["tables"] == n_tables and r["same"] == n_tables and r["max_cost"] <= most_cost + 1e-12]
    return min(ok, key=lambda r: (r["max_cost"], -r["tau_total"], r["setting"])) if ok else None


# ---------------------------------------------------------------- generation (process pool)

_W: dict = {}


def _init_worker(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def _scheduler(base, sampler: str):
    import diffusers
    name = SAMPLERS[sampler]
    return base if name is None else getattr(diffusers, name).from_config(base.config)


def run_task(task: dict) -> dict:
    """One (model, seed, sampler, steps, variant): scores [prompts, aspects] on that run's eval prompts and
    seeds; for the reference generation also on the first PREFIX_FRAMES frames. Models, the reward and the
    evaluation sets are loaded once per process."""
    import torch

    from vip import config as vip_config
    from vip.evaluate import evaluate
    from vip.models.registry import base_model_path, load_video_model
    from vip.prompts.sets import eval_set
    from vip.rewards.base import as_matrix
    from vip.rewards.registry import load_reward

    if "cfg" not in _W:
        cfg = vip_config.load(task["config"], task["overrides"])
        _W.update(cfg=cfg, models={}, sets={}, reward=load_reward(cfg.reward))
        _W["base"] = load_video_model(cfg.model, base_model_path(cfg.model))
        _W["base_scheduler"] = _W["base"].scheduler
    cfg = _W["cfg"]
    removed = tuple(task["removed"])
    if removed not in _W["models"]:
        _W["models"][removed] = _W["base"].pruned(list(removed)) if removed else _W["base"]
    model = _W["models"][removed]
    if task["seed"] not in _W["sets"]:
        p = cfg.prompts
        _W["sets"][task["seed"]] = eval_set(p.eval, p.eval_count, p.seeds_per_prompt, task["seed"])
    es = _W["sets"][task["seed"]]
    model.scheduler = _scheduler(_W["base_scheduler"], task["sampler"])
    model.meta["steps"] = task["steps"]
    times: dict[str, float] = {"generate": 0.0, "score": 0.0}

    def timed(what):
        from contextlib import contextmanager

        @contextmanager
        def cm():
            t0 = time.perf_counter()
            yield
            times[what] += time.perf_counter() - t0
        return cm()
    unit = task["unit"]
    with torch.no_grad():
        scores, clips = evaluate(model, _W["reward"], es.prompts, es.seeds, cfg.loo.batch_size,
                                 [] if unit is None else [unit], timed=timed, keep_clips=True)
        out = {"scores": scores, "times": times}
        if task.get("prefix"):  # the same clips, cut to their first frames before scoring
            out["prefix"] = as_matrix(_W["reward"].score(clips[:, :task["prefix"]], es.prompts))
    return out


class _Serial:
    """An executor that runs each task at submission (workers=0: tests, one process)."""

    def submit(self, fn, *args):
        f = Future()
        f.set_result(fn(*args))
        return f

    def shutdown(self):
        pass


def study(config: str = "configs/toyvid.yaml", overrides: list[str] = (), seeds=(0, 1, 2), workers: int = 0,
          stages: int = 3, gens=None, units: list[str] | None = None, k: int | None = None,
          budget_s: float = 0.0, prompt_counts=PROMPT_COUNTS, adaptive=ADAPTIVE, prefix_frames: int = PREFIX_FRAMES,
          reuse: dict | None = None, log=print) -> dict:
    """Generate every table (parallel over `workers` processes; 0 = in this process) and analyse them.

    gens: [(sampler, steps, tier)] besides the reference (the config's sampler at model.steps, tier 0/1).
    units: the stage-1 units to evaluate (None = all of the model's); k: units chosen (None = select.k).
    reuse: an earlier dump's "raw" tables (same config): every row they hold for the same model (the same
    units removed), seed and generation is taken from there instead of generated again."""
    from vip import config as vip_config
    from vip.models.registry import base_model_path, load_video_model

    cfg = vip_config.load(config, list(overrides))
    k = k or cfg.select.k_at(1)
    ref = Gen("ddim", cfg.model.steps)
    gen_tiers = [(Gen(s, n), tier) for s, n, tier in (DEFAULT_GENS if gens is None else gens) if Gen(s, n) != ref]
    stage_units = {1: list(units) if units else load_video_model(cfg.model, base_model_path(cfg.model)).units()}
    removed = {1: []}
    seeds = list(seeds)
    t0 = time.monotonic()
    heap, seq, inflight, results = [], itertools.count(), {}, {}
    expected: dict[tuple, int] = {}  # (stage, seed, gen) -> variants
    cut = 0

    names = {1: "M1 (the teacher)", 2: "M2 stand-in (untrained)", 3: "M3 stand-in (untrained)"}
    reused = []

    def from_reuse(stage, seed, g, v):
        t = (reuse or {}).get(f"{names.get(stage, f'M{stage}')}|{seed}")
        name = FULL if v is None else v
        if not t or list(t["removed"]) != list(removed[stage]) or g.name not in t["scores"] or name not in t["variants"]:
            return None
        i = t["variants"].index(name)
        r = {"scores": np.asarray(t["scores"][g.name][i], dtype=np.float32), "times": {"generate": 0.0, "score": 0.0}}
        pre = replace(g, frames=prefix_frames).name
        if g == ref and prefix_frames:
            if pre not in t["scores"]:
                return None
            r["prefix"] = np.asarray(t["scores"][pre][i], dtype=np.float32)
        return r

    def add_stage(stage: int) -> None:
        variants = [None] + stage_units[stage]
        for seed in seeds:
            for g, tier in [(ref, 0 if seed == seeds[0] else 1)] + gen_tiers:
                expected[(stage, seed, g)] = len(variants)
                for v in variants:
                    old = from_reuse(stage, seed, g, v)
                    if old is not None:
                        results[(stage, seed, g, v)] = old
                        reused.append((stage, seed, g, v))
                        continue
                    task = {"config": config, "overrides": list(overrides), "seed": seed, "removed": removed[stage],
                            "sampler": g.sampler, "steps": g.steps, "unit": v,
                            "prefix": prefix_frames if g == ref and prefix_frames else 0}
                    # tier, then stage (earlier models first within a tier), then longest first
                    heapq.heappush(heap, (tier, stage, -g.steps, next(seq), (stage, seed, g, v), task))
        on_done((stage, seeds[0], ref, None))  # every reference row reused: the next model now

    def table(stage, seed, g, field="scores"):
        return np.stack([results[(stage, seed, g, v)][field] for v in [None] + stage_units[stage]])

    def on_done(key) -> None:
        stage, seed, g, _ = key
        done = sum(1 for v in [None] + stage_units[stage] if (stage, seed, g, v) in results)
        if (g == ref and seed == seeds[0] and done == expected[(stage, seed, g)] and stage < stages
                and stage + 1 not in stage_units):
            variants = [FULL] + stage_units[stage]
            chosen = choose(deltas(table(stage, seed, g), variants), k).chosen
            left = [u for u in stage_units[stage] if u not in chosen]
            if len(left) >= k:
                removed[stage + 1] = removed[stage] + chosen
                stage_units[stage + 1] = left
                log(f"[{time.monotonic() - t0:6.1f} s] stage {stage} model, seed {seed}: exhaustive choice {chosen}; "
                    f"stage {stage + 1} stand-in = it minus those ({len(left)} units)")
                add_stage(stage + 1)

    add_stage(1)
    ex = (ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=(1,))
          if workers else _Serial())
    n_workers = max(1, workers)
    busy = {"generate": 0.0, "score": 0.0}
    try:
        while heap or inflight:
            while heap and len(inflight) < n_workers:
                if budget_s and time.monotonic() - t0 > budget_s:
                    cut += len(heap)
                    heap.clear()
                    break
                *_, key, task = heapq.heappop(heap)
                inflight[ex.submit(run_task, task)] = key
            if not inflight:
                break
            done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            for f in done:
                key = inflight.pop(f)
                results[key] = f.result()
                for w in busy:
                    busy[w] += results[key]["times"][w]
                on_done(key)
                if len(results) % 50 == 0:
                    log(f"[{time.monotonic() - t0:6.1f} s] {len(results)} tasks done, {len(heap)} queued")
    finally:
        ex.shutdown()
    wall = time.monotonic() - t0

    tables, raw = {}, {}
    for stage in sorted(stage_units):
        for seed in seeds:
            scores = {}
            for g in [ref] + [g for g, _ in gen_tiers]:
                if all((stage, seed, g, v) in results for v in [None] + stage_units[stage]):
                    scores[g] = table(stage, seed, g)
                    if g == ref and prefix_frames:
                        scores[replace(g, frames=prefix_frames)] = table(stage, seed, g, "prefix")
            if ref in scores:
                key = (names.get(stage, f"M{stage}"), seed)
                tables[key] = {"variants": [FULL] + stage_units[stage], "scores": scores}
                raw[f"{key[0]}|{key[1]}"] = {"removed": removed[stage], "variants": tables[key]["variants"],
                                              "scores": {g.name: s.tolist() for g, s in scores.items()}}
    out = analyse(tables, ref, k, prompt_counts, adaptive)
    out.update(reference=ref.name, k=k, seeds=seeds, tables=[f"{m}/seed {s}" for m, s in tables], wall_s=wall,
               workers=workers, tasks_done=len(results) - len(reused), tasks_reused=len(reused), tasks_cut=cut, busy_s=busy, raw=raw,
               removed={names.get(s, f"M{s}"): r for s, r in removed.items()},
               cheapest_third=cheapest(out["summary"], len(tables)), cheapest_any=cheapest(out["summary"], len(tables), 1.0))
    return out


def from_raw(raw: dict, reference: str, k: int, prompt_counts=PROMPT_COUNTS, adaptive=ADAPTIVE) -> dict:
    """The analysis again from a --json dump's "raw" tables (no generation)."""
    def gen(name):
        g, _, f = name.partition("/f")
        s, n = g.rsplit("-", 1)
        return Gen(s, int(n), int(f) if f else 0)
    tables = {tuple(key.split("|")[0:1]) + (int(key.split("|")[1]),):
              {"variants": t["variants"], "scores": {gen(n): np.asarray(s, dtype=np.float32) for n, s in t["scores"].items()}}
              for key, t in raw.items()}
    out = analyse(tables, gen(reference), k, prompt_counts, adaptive)
    out.update(cheapest_third=cheapest(out["summary"], len(tables)), cheapest_any=cheapest(out["summary"], len(tables), 1.0))
    return out


def format_summary(out: dict) -> str:
    lines = ["| setting | tables | same choice | mean tau total | mean tau TC | cost (mean) | cost (max) | differs on |",
             "|---|---|---|---|---|---|---|---|"]
    for r in out["summary"]:
        lines.append(f"| {r['setting']} | {r['tables']} | {r['same']}/{r['tables']} | {r['tau_total']:.3f} | "
                     f"{r['tau_tc']:.3f} | {r['cost']:.3f} | {r['max_cost']:.3f} | {', '.join(r['differ_on'])} |")
    for what, most in (("cheapest_third", "1/3"), ("cheapest_any", "any cost")):
        c = out.get(what)
        lines.append(f"cheapest setting with the same choice on every table, cost <= {most}: "
                     + (f"{c['setting']} (cost {c['cost']:.3f}, max {c['max_cost']:.3f}; tau total {c['tau_total']:.3f}, "
                        f"TC {c['tau_tc']:.3f})" if c else "none"))
    return "\n".join(lines)
