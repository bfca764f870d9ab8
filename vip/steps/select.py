"""The selection step: the rule (vip/selection.py) on the stage's merged leave-one-out scores, its
record and chart, and the pruned student."""
from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

from vip.plots import selection_chart
from vip.selection import Selection, choose, deltas
from vip.steps.context import StageContext
from vip.steps.loo import merged_path
from vip.store import IncompleteError, atomic_write_json, is_current, read_h5, read_json

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
    k = ctx.cfg.select.k_at(ctx.stage)
    sel = choose(deltas(arrays["scores"], variants), k)
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
        **asdict(sel), "k": k, "unit_params": params,
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
