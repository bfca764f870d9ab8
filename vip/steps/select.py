"""Unit selection (paper, supplement C.1): remove the k units whose removal harms least,
taken from the intersection of the top of two rankings, by total score and by temporal
consistency, so that a unit whose removal inflates dynamic degree while breaking
consistency is not chosen."""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vip.config import ConfigError
from vip.plots import selection_chart
from vip.rewards.base import ASPECTS
from vip.steps.context import StageContext
from vip.steps.loo import FULL, merged_path
from vip.store import IncompleteError, atomic_write_json, is_current, read_h5, read_json

TC = "temporal_consistency"


@dataclass
class Selection:
    chosen: list[str]
    n: int  # the smallest top-n whose intersection holds k units
    by_total: list[str]
    by_tc: list[str]
    delta: dict[str, dict[str, float]]  # unit -> aspect -> V(M) - V(M - unit), and "total"


def deltas(scores: np.ndarray, variants: list[str]) -> dict[str, dict[str, float]]:
    """Δ_i per aspect = V(M) - V(M - i), averaged over samples; positive = removal hurts.

    A unit that adaptive leave-one-out settled early has NaN on later samples: its Δ pairs it with
    the full model on the samples it saw (the full model sees them all)."""
    full = scores[variants.index(FULL)]
    out = {}
    for i, v in enumerate(variants):
        if v == FULL:
            continue
        seen = ~np.isnan(scores[i]).any(-1)
        d = full[seen].mean(0) - scores[i][seen].mean(0)
        out[v] = {a: float(d[j]) for j, a in enumerate(ASPECTS)}
        out[v]["total"] = float(d.sum())
    return out


def rank(values: dict[str, float]) -> list[str]:
    """Least harm first; ties broken by name so the order never depends on dict order."""
    return sorted(values, key=lambda u: (values[u], u))


def choose(delta: dict[str, dict[str, float]], k: int) -> Selection:
    units = list(delta)
    if not 1 <= k <= len(units):
        raise ConfigError(f"config key 'select.k' is {k} but the model has {len(units)} prunable units left; "
                          f"expected 1 to {len(units)}")
    by_total = rank({u: delta[u]["total"] for u in units})
    by_tc = rank({u: delta[u][TC] for u in units})
    for n in range(k, len(units) + 1):
        common = set(by_total[:n]) & set(by_tc[:n])
        if len(common) >= k:
            # at the smallest n the intersection may hold k+1: keep the best by total Δ
            chosen = [u for u in by_total if u in common][:k]
            return Selection(chosen, n, by_total, by_tc, delta)
    raise AssertionError("unreachable: at n = len(units) the intersection is every unit")


def chart_path(ctx: StageContext) -> Path:
    return ctx.dir / "selection.png"


def selection_path(ctx: StageContext) -> Path:
    return ctx.dir / "selection.json"


def pruned_path(ctx: StageContext) -> Path:
    return ctx.pruned_path()


def run(ctx: StageContext) -> Selection:
    if not merged_path(ctx).is_file():
        raise IncompleteError(f"selection needs {merged_path(ctx)}; run leave-one-out evaluation and merge first")
    arrays, attrs = read_h5(merged_path(ctx))
    variants = [str(v) for v in arrays["variants"]]
    sel = choose(deltas(arrays["scores"], variants), ctx.cfg.select.k)
    params = dict(zip(variants, arrays["unit_params"].tolist()))
    student = ctx.model.pruned(sel.chosen)
    # the pruned student is saved first: selection.json is the step's completion mark
    tmp = pruned_path(ctx).with_name("pruned.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    student.save(tmp)
    if pruned_path(ctx).exists():
        shutil.rmtree(pruned_path(ctx))
    tmp.replace(pruned_path(ctx))
    seen = dict(zip(variants, arrays["samples_seen"].tolist())) if "samples_seen" in arrays else {}
    record = {
        **asdict(sel), "k": ctx.cfg.select.k, "unit_params": params,
        # adaptive leave-one-out: samples each variant was scored on (the full model: all of them)
        **({"samples_seen": seen} if len(set(seen.values())) > 1 else {}),
        "params_before": int(attrs["model_params"]), "params_after": student.num_params(),
        "config_sha256": ctx.cfg.hash(),
    }
    selection_chart(record, chart_path(ctx), title=f"Stage {ctx.stage} leave-one-out: Δ per unit "
                                                   f"(removed: top {sel.n} of both rankings)")
    atomic_write_json(selection_path(ctx), record)
    return sel


def load(ctx: StageContext) -> dict | None:
    return read_json(selection_path(ctx))


def is_done(ctx: StageContext) -> bool:
    return is_current(load(ctx), ctx.cfg) and pruned_path(ctx).is_dir()
