"""Preference-pair generation and curation (supplement C.2).

For the target-filtered prompts, every (prompt, seed) gets a teacher video (preferred) and a
pruned-student video (unpreferred), both scored. Work fans out like leave-one-out: task i
covers a slice of samples and writes one shard for the student; the teacher's shard for the
same slice lives under <run>/teacher/, keyed by what determines it (prompts, seeds, sampler,
teacher weights), so a later stage with the same target reuses it instead of paying twice.
`curate` merges, applies the rules of vip/curation.py and writes pairs.h5 for training.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from vip import provenance as prov
from vip.config import ConfigError
from vip.curation import curate_with_fallback
from vip.models.base import VideoModel
from vip.models.diffusion import weights_file
from vip.models.registry import denoiser_dir
from vip.plots import curation_chart
from vip.rewards.base import ASPECTS, as_matrix
from vip.rewards.registry import aspect_sources
from vip.steps import filter as prompt_filter
from vip.steps import target
from vip.steps.context import StageContext
from vip.store import IncompleteError, ShardSet, atomic_write_json, is_current, read_h5, read_json, sha256_file, write_h5


def step_dir(ctx: StageContext) -> Path:
    return ctx.dir / "pairs"


def pairs_path(ctx: StageContext) -> Path:
    return ctx.dir / "pairs.h5"


def report_path(ctx: StageContext) -> Path:
    return ctx.dir / "curation.json"


def read_plan(stage_dir: Path) -> dict | None:
    path = stage_dir / "pairs" / "tasks.json"
    return json.loads(path.read_text()) if path.is_file() else None


def curation_prompts(ctx: StageContext, targets: list[str]) -> list[str]:
    """The union of the targets' filtered sets, in order, without repeats and without the held-out prompts;
    the first max_prompts."""
    # the held-out prompts score the outcome: curation never trains on them
    seen, prompts = set(ctx.heldout_set.prompts if ctx.heldout_set else ()), []
    for aspect in targets:
        for p in prompt_filter.prompts_for(ctx.run, aspect):
            if p not in seen:
                seen.add(p)
                prompts.append(p)
    if not prompts:
        raise IncompleteError(f"the prompt filter kept no prompts for target(s) {', '.join(targets)}; "
                              f"see {ctx.run.path / 'filter'} for the score histograms")
    n = ctx.cfg.curate.max_prompts
    return prompts[:n] if n else prompts


def plan(ctx: StageContext) -> dict:
    planned = read_plan(ctx.dir)
    if planned is not None:
        return planned
    tgt = target.load(ctx)
    if tgt is None:
        raise IncompleteError(f"pair generation needs {target.target_path(ctx)}; run target detection first")
    c = ctx.cfg.curate
    prompts = curation_prompts(ctx, tgt["targets"])
    # seeds far from the evaluation seeds, so pairs never reuse an evaluation sample's noise
    rows = [(p, ctx.cfg.run.seed + 1_000_000 + i * c.seeds_per_prompt + s, i)
            for i, p in enumerate(prompts) for s in range(c.seeds_per_prompt)]
    n = len(rows)
    tasks = [[lo, min(lo + c.samples_per_task, n)] for lo in range(0, n, c.samples_per_task)]
    key = hashlib.sha256(json.dumps({
        "prompts": [r[0] for r in rows], "seeds": [r[1] for r in rows], "tasks": tasks,
        "steps": ctx.cfg.model.steps, "guidance": ctx.cfg.model.guidance, "teacher": ctx.teacher_sha256,
        "reward": ctx.cfg.reward.name,
    }).encode()).hexdigest()
    planned = {
        "targets": tgt["targets"], "prompts": [r[0] for r in rows], "seeds": [r[1] for r in rows],
        "prompt_ids": [r[2] for r in rows], "tasks": tasks, "teacher_key": key,
        "student": str(ctx.pruned_path()), "student_sha256": student_sha256(ctx),
    }
    atomic_write_json(step_dir(ctx) / "tasks.json", planned)
    return planned


def student_sha256(ctx: StageContext) -> str:
    return denoiser_sha256(ctx.pruned_path(), ctx.cfg.model.backbone)


def denoiser_sha256(directory: Path, backbone: str) -> str:
    """Content hash of a saved model's denoiser weights, in the family's own folder (unet/,
    transformer/): the hash of its one safetensors file (so hashes recorded before sharding was
    handled stay valid), or of the index and every shard it names."""
    folder = Path(directory) / denoiser_dir(backbone)
    name = weights_file(folder)
    if not name.endswith(".index.json"):
        return sha256_file(folder / name)
    shards = sorted(set(json.loads((folder / name).read_text())["weight_map"].values()))
    h = hashlib.sha256()
    for f in [name, *shards]:
        h.update(f.encode() + b"\0" + sha256_file(folder / f).encode())
    return h.hexdigest()


def teacher_shards(ctx: StageContext, planned: dict) -> ShardSet:
    return ShardSet(ctx.run.path / "teacher" / f"pairs-{planned['teacher_key'][:16]}")


def student_shards(ctx: StageContext) -> ShardSet:
    return ShardSet(step_dir(ctx))


def missing(ctx: StageContext) -> list[int]:
    planned = plan(ctx)
    n = range(len(planned["tasks"]))
    return sorted(set(student_shards(ctx).missing(n)) | set(teacher_shards(ctx, planned).missing(n)))


def _generate(ctx: StageContext, model: VideoModel, prompts: list[str], seeds: list[int], progress) -> dict:
    bs = ctx.cfg.curate.batch_size
    latents, scores = [], []
    for b in range(0, len(prompts), bs):
        p, s = prompts[b:b + bs], seeds[b:b + bs]
        with ctx.timed("generate"):
            lat = model.sample_latents(p, s)
        with ctx.timed("score"):
            scores.append(as_matrix(ctx.reward.score(model.decode(lat), p)))
        latents.append(lat.cpu().half().numpy())  # what training consumes, half the bytes
        if progress:
            progress(len(p))
    return {"latents": np.concatenate(latents), "scores": np.concatenate(scores)}


def run_task(ctx: StageContext, index: int, progress=None) -> None:
    planned = plan(ctx)
    if planned["student_sha256"] != student_sha256(ctx):
        raise ConfigError(f"the pruned student at {ctx.pruned_path()} changed since pairs were planned; "
                          "start a new run with --run-dir")
    lo, hi = planned["tasks"][index]
    prompts, seeds = planned["prompts"][lo:hi], planned["seeds"][lo:hi]
    ids = {"sample_ids": np.arange(lo, hi), "seeds": np.array(seeds)}
    attrs = {"aspects": json.dumps(ASPECTS), "task": index}
    for side, shards, model, sha in (("teacher", teacher_shards(ctx, planned), lambda: ctx.teacher, ctx.teacher_sha256),
                                     ("student", student_shards(ctx), lambda: ctx.student, planned["student_sha256"])):
        if shards.is_done(index):  # a teacher slice from an earlier stage, or a student slice before preemption
            if progress:
                progress(hi - lo)
            continue
        shards.discard(index)
        out = _generate(ctx, model(), prompts, seeds, progress)
        with ctx.timed("write"):
            shards.write(index, {**out, **ids}, {**attrs, "side": side, "model_sha256": sha,
                                                 prov.ATTR: prov.encode(provenance(ctx, planned, index, side, sha))})


def provenance(ctx: StageContext, planned: dict, index: int, side: str, sha: str) -> dict:
    """What determines task `index`'s shard of one side (vip.provenance): that side's weights, how it
    samples and what scores it, the seeds, prompt ids and texts, and the task's place in the plan. Nothing
    of the stage: a teacher shard serves every stage whose plan has the same teacher key."""
    lo, hi = planned["tasks"][index]
    return {"kind": "pairs", "side": side, "model_sha256": sha, "sampler": prov.sampler(ctx.cfg.model),
            "reward": prov.reward(ctx.cfg.reward), "seeds": planned["seeds"][lo:hi],
            "prompt_ids": planned["prompt_ids"][lo:hi], "prompts_sha256": prov.texts_sha256(planned["prompts"][lo:hi]),
            "task": index, "samples": [lo, hi]}


def _read_side(ctx: StageContext, shards: ShardSet, planned: dict, side: str, sha: str) -> dict[str, np.ndarray]:
    """One side's latents and scores; a shard whose provenance is not what the plan expects is refused."""
    parts = shards.read_all(list(range(len(planned["tasks"]))))
    for i, (arrays, attrs) in enumerate(parts):
        prov.check(shards.shard(i), attrs, provenance(ctx, planned, i, side, sha))
        lo, hi = planned["tasks"][i]
        if list(arrays["sample_ids"]) != list(range(lo, hi)):
            raise IncompleteError(f"{shards.shard(i)} holds samples other than {lo}..{hi - 1}; re-run the step")
    return {k: np.concatenate([a[k] for a, _ in parts]) for k in ("latents", "scores")}


def curate(ctx: StageContext) -> dict:
    """Merge both sides (every shard must be present), apply the rules, drop exact duplicates,
    write pairs.h5 (what training reads) and curation.json (what was kept and why not)."""
    planned = plan(ctx)
    teacher = _read_side(ctx, teacher_shards(ctx, planned), planned, "teacher", ctx.teacher_sha256)
    student = _read_side(ctx, student_shards(ctx), planned, "student", planned["student_sha256"])
    tgt = target.load(ctx)  # the drops order the fallback targets (none known: no fallback)
    alpha, drop = ctx.cfg.curate.alpha, tgt["drop"] if tgt else {}
    min_pairs = ctx.cfg.train.min_pairs if ctx.cfg.curate.fallback else 0
    targets, result, tried = curate_with_fallback(teacher["scores"], student["scores"], planned["targets"], drop,
                                                  alpha, min_pairs, aspect_sources(ctx.cfg.reward.name))
    keep = np.flatnonzero(result.keep)
    # exact duplicates (a prompt listed twice in the source gives the same pair twice) are kept once
    seen, unique = set(), []
    for i in keep:
        h = hashlib.sha256(teacher["latents"][i].tobytes() + student["latents"][i].tobytes()).digest()
        if h not in seen:
            seen.add(h)
            unique.append(i)
    keep = np.array(unique, dtype=np.int64)  # may be empty: the stage then skips training (train.min_pairs)
    prompts = np.array(planned["prompts"])
    write_h5(pairs_path(ctx), {
        "latents_w": teacher["latents"][keep], "latents_l": student["latents"][keep],
        "scores_w": teacher["scores"][keep], "scores_l": student["scores"][keep],
        "prompts": prompts[keep], "prompt_ids": np.array(planned["prompt_ids"])[keep],
        "seeds": np.array(planned["seeds"])[keep],
    }, {"aspects": json.dumps(ASPECTS), "targets": json.dumps(targets), "config_sha256": ctx.cfg.hash(),
        "stage": ctx.stage, "student_sha256": planned["student_sha256"], "teacher_sha256": ctx.teacher_sha256})
    record = {
        "targets": targets, "primary_targets": planned["targets"], "tried": tried,
        "alpha": alpha, "candidates": len(teacher["scores"]), "kept": int(len(keep)),
        "duplicates": int(result.kept - len(keep)), "rejected": result.rejected, "floors": result.floors,
        "candidate_scores": {"preferred": teacher["scores"].tolist(), "unpreferred": student["scores"].tolist()},
        "kept_index": keep.tolist(), "config_sha256": ctx.cfg.hash(),
    }
    atomic_write_json(report_path(ctx), record)
    curation_chart(record, ctx.dir / "curation.png", title=f"Stage {ctx.stage} curation")
    return record


def load(ctx: StageContext) -> dict | None:
    return read_json(report_path(ctx))


def is_done(ctx: StageContext) -> bool:
    if not (is_current(load(ctx), ctx.cfg) and pairs_path(ctx).is_file()):
        return False
    try:
        read_h5(pairs_path(ctx))
    except OSError:
        return False
    return True
