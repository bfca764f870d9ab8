"""Target detection (supplement C.2): score the pruned student and the full teacher on the
evaluation prompts; the aspect that dropped most (or every aspect past a threshold) is the
target of this stage's preference pairs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vip.curation import choose_targets
from vip.evaluate import mean_scores
from vip.rewards.base import ASPECTS
from vip.steps import loo
from vip.steps.context import StageContext
from vip.store import atomic_write_json, is_current, read_h5, read_json, write_h5


def target_path(ctx: StageContext) -> Path:
    return ctx.dir / "target.json"


def teacher_eval_path(ctx: StageContext) -> Path:
    return ctx.run.path / "teacher" / "eval.h5"


def teacher_eval_scores(ctx: StageContext) -> np.ndarray:
    """M0 on the evaluation set, computed once per run (stage 1's leave-one-out already has it)."""
    def compute() -> np.ndarray:
        merged = ctx.run.stage(1) / "loo.h5"
        if merged.is_file():
            arrays, attrs = read_h5(merged)
            if attrs.get("model_sha256") == ctx.teacher_sha256:  # stage 1's M is M0
                return arrays["scores"][[str(v) for v in arrays["variants"]].index(loo.FULL)]
        return ctx.score_eval_set(ctx.teacher)
    return cached_teacher_scores(ctx, teacher_eval_path(ctx), compute)


def cached_teacher_scores(ctx: StageContext, path: Path, compute) -> np.ndarray:
    """M0's scores on a fixed set of samples, kept at `path` for the run's config and teacher."""
    if path.is_file():
        arrays, attrs = read_h5(path)
        if attrs.get("config_sha256") == ctx.cfg.hash() and attrs.get("teacher_sha256") == ctx.teacher_sha256:
            return arrays["scores"]
    scores = compute()
    write_h5(path, {"scores": scores}, {"config_sha256": ctx.cfg.hash(), "teacher_sha256": ctx.teacher_sha256,
                                        "aspects": json.dumps(ASPECTS)})
    return scores


def run(ctx: StageContext) -> dict:
    teacher = mean_scores(teacher_eval_scores(ctx))
    student = mean_scores(ctx.score_eval_set(ctx.student))
    drop = {a: teacher[a] - student[a] for a in ASPECTS}
    record = {
        "targets": choose_targets(drop, ctx.cfg.curate.target_threshold),
        "threshold": ctx.cfg.curate.target_threshold,
        "teacher": teacher, "pruned": student, "drop": drop,
        "samples": len(ctx.eval_set.prompts), "config_sha256": ctx.cfg.hash(),
    }
    atomic_write_json(target_path(ctx), record)
    return record


def load(ctx: StageContext) -> dict | None:
    return read_json(target_path(ctx))


def is_done(ctx: StageContext) -> bool:
    return is_current(load(ctx), ctx.cfg)
