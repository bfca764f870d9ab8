"""The end of a stage: score the ReDPO-trained student beside the full teacher and the pruned student
before training (the paper's Table B, one stage per row group).

With prompts.heldout set, all three are scored on the held-out prompts and seeds, which neither
leave-one-out (which chose the units, and so flatters the pruned student on its own prompts) nor curation
saw; `scored_on` says which set, and `on_eval` keeps the evaluation-set figures beside them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vip import provenance as prov
from vip.evaluate import mean_scores
from vip.models.registry import load_video_model
from vip.steps import pairs, target
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
    trained = load_video_model(ctx.cfg.model, trained_dir)
    record = score_trained(ctx, tgt, trained_dir, trained)
    draw_samples(ctx, trained)
    atomic_write_json(outcome_path(ctx), record)
    return record


def samples_path(ctx: StageContext) -> Path:
    return ctx.dir / "samples.png"


def draw_samples(ctx: StageContext, trained, n: int = 2) -> Path:
    """The first n outcome samples (held-out when set) of the teacher, the pruned and the trained student, same
    prompt and seed, one row each: what the table's numbers look like (report.html shows it)."""
    from vip.plots import frame_grid

    samples = ctx.heldout_set or ctx.eval_set
    prompts, seeds = samples.prompts[:n], samples.seeds[:n]
    models = {"teacher": ctx.teacher, "pruned": ctx.student, "ReDPO": trained}
    clips = {name: m.generate(prompts, seeds).float().cpu() for name, m in models.items()}
    rows = [clips[name][i] for i in range(len(prompts)) for name in models]
    labels = [f"{name}\n{p}\nseed {s}" for p, s in zip(prompts, seeds) for name in models]
    return frame_grid(torch.stack(rows), labels, samples_path(ctx))


def score_trained(ctx: StageContext, tgt: dict, trained_dir: Path, trained=None) -> dict:
    """The outcome record of the student in `trained_dir` (a trainer's final/, beside its done.json; `trained`
    when it is loaded already): its scores beside the full and pruned ones, on the held-out set when there is
    one (else those of `tgt`, target.json, on the evaluation set)."""
    trained = trained or load_video_model(ctx.cfg.model, trained_dir)
    done = json.loads((trained_dir.parent / "done.json").read_text())
    skipped = bool(done.get("skipped"))  # the untrained pruned student: its scores are the pruned ones
    on_eval = {"full": tgt["teacher"], "pruned": tgt["pruned"],
               "redpo": dict(tgt["pruned"]) if skipped else mean_scores(ctx.score_eval_set(trained))}
    hs = ctx.heldout_set
    if hs is None:
        scores, scored_on = on_eval, {"set": "eval", "spec": ctx.cfg.prompts.eval, "samples": len(ctx.eval_set.prompts)}
    else:
        pruned = mean_scores(ctx.score_set(ctx.student, hs))
        scores = {"full": mean_scores(teacher_heldout_scores(ctx)), "pruned": pruned,
                  "redpo": dict(pruned) if skipped else mean_scores(ctx.score_set(trained, hs))}
        scored_on = {"set": "heldout", "spec": ctx.cfg.prompts.heldout, "samples": len(hs.prompts),
                     "prompts": len(set(hs.prompts)), "seeds": [min(hs.seeds), max(hs.seeds)],
                     "prompts_sha256": prov.texts_sha256(hs.prompts)}
    record = {
        "stage": ctx.stage, "targets": trained_targets(ctx, tgt), **scores, "scored_on": scored_on,
        "training": done.get("skipped") or f"{done['steps']} steps on {done['pairs']} pairs",
        "params": {"full": ctx.teacher.num_params(), "student": trained.num_params()},
        "removed_units": json.loads((trained_dir / "removed_units.json").read_text()),
        "config_sha256": ctx.cfg.hash(),
    }
    if hs is not None:
        record["on_eval"] = on_eval
    return record


def trained_targets(ctx: StageContext, tgt: dict) -> list[str]:
    """The aspects the pairs were curated for: target.json's, or curation's fallback (curate.fallback)."""
    cur = pairs.load(ctx)
    return cur["targets"] if cur else tgt["targets"]


def teacher_heldout_path(ctx: StageContext) -> Path:
    return ctx.run.path / "teacher" / "heldout.h5"


def teacher_heldout_scores(ctx: StageContext) -> np.ndarray:
    """M0 on the held-out set, computed once per run (every stage compares against the same teacher)."""
    return target.cached_teacher_scores(ctx, teacher_heldout_path(ctx),
                                        lambda: ctx.score_set(ctx.teacher, ctx.heldout_set))


def scored_on_line(outcome: dict) -> str:
    """Which prompts the outcome's figures are from: the held-out set, or (before it existed, or unset)
    the evaluation set that chose the units."""
    on = outcome.get("scored_on") or {"set": "eval"}
    if on["set"] == "heldout":
        return (f"scored on held-out prompts (prompts.heldout={on['spec']}: {on['samples']} samples of {on['prompts']} "
                "prompts and seeds that neither leave-one-out nor curation saw)")
    return ("scored on the evaluation prompts that chose the units (set prompts.heldout for prompts the stage "
            "never saw)")


def load(ctx: StageContext) -> dict | None:
    return read_json(outcome_path(ctx))


def is_done(ctx: StageContext) -> bool:
    return is_current(load(ctx), ctx.cfg)
