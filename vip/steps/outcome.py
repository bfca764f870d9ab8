"""The end of a stage: score the ReDPO-trained student on the evaluation set, beside the full
teacher and the pruned student before training (the paper's Table B, one stage per row group)."""
from __future__ import annotations

import json
from pathlib import Path

from vip.evaluate import mean_scores
from vip.models.registry import load_video_model
from vip.steps import target
from vip.steps.context import StageContext
from vip.store import IncompleteError, atomic_write_json, is_current, read_json
from vip.train.redpo_trainer import final_path


def outcome_path(ctx: StageContext) -> Path:
    return ctx.dir / "outcome.json"


def run(ctx: StageContext) -> dict:
    tgt = target.load(ctx)
    if tgt is None:
        raise IncompleteError(f"{target.target_path(ctx)} is missing; run target detection first")
    trained_dir = final_path(ctx.run, ctx.stage)
    if not (trained_dir / "removed_units.json").is_file():
        raise IncompleteError(f"stage {ctx.stage} has no trained student at {trained_dir}; run training first")
    record = score_trained(ctx, tgt, trained_dir)
    atomic_write_json(outcome_path(ctx), record)
    return record


def score_trained(ctx: StageContext, tgt: dict, trained_dir: Path) -> dict:
    """The outcome record of the student in `trained_dir` (a trainer's final/, beside its done.json):
    its scores on the evaluation set beside the full and pruned scores of `tgt` (target.json)."""
    trained = load_video_model(ctx.cfg.model, trained_dir)
    done = json.loads((trained_dir.parent / "done.json").read_text())
    if done.get("skipped"):  # the untrained pruned student: its scores are the target step's
        redpo = dict(tgt["pruned"])
    else:
        redpo = mean_scores(ctx.score_eval_set(trained))
    return {
        "stage": ctx.stage, "targets": tgt["targets"],
        "full": tgt["teacher"], "pruned": tgt["pruned"], "redpo": redpo,
        "training": done.get("skipped") or f"{done['steps']} steps on {done['pairs']} pairs",
        "params": {"full": ctx.teacher.num_params(), "student": trained.num_params()},
        "removed_units": json.loads((trained_dir / "removed_units.json").read_text()),
        "config_sha256": ctx.cfg.hash(),
    }


def load(ctx: StageContext) -> dict | None:
    return read_json(outcome_path(ctx))


def is_done(ctx: StageContext) -> bool:
    return is_current(load(ctx), ctx.cfg)
