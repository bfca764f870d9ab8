"""The dry run's cost model: what the jobs it would submit cost in tasks, clips, GPU-hours and shard bytes,
from the documented constants or from what an earlier stage measured (sacct elapsed, shard markers).

    stage_costs(cfg, stage, todo, ...) -> [StepCost]: the arithmetic (no files, no Slurm)
    cost_lines(ctx, sink)              -> the lines a dry run prints after its summary
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from vip.config import Config, TrainConfig
from vip.orchestrate import slurm
from vip.orchestrate.ledger import Ledger, id_key, latest_elements
from vip.orchestrate.stepjobs import STEPS
from vip.steps import loo, pairs
from vip.steps.context import StageContext
from vip.store import RunDir, read_json
from vip.train import redpo_trainer
from vip.train.data import Order
from vip.train.metrics import read_metrics

TOYVID_CLIPS_PER_S = 1.2  # docs/benchmarks.md "Leave-one-out evaluation on toyvid (CPU)": one CPU thread
SCORE_BYTES = 4  # float32 per aspect and clip
SAMPLE_ID_BYTES = 24  # sample id, prompt id, seed (int64 each) per sample of a leave-one-out shard
LOO_SHARD_BYTES = 8 * 1024  # HDF5 overhead of one shard (a toyvid loo shard: 9,648 B for 36 clips of one variant)
PAIRS_SHARD_BYTES = 4 * 1024
# docs/benchmarks.md: the full trainer (jobs/train_redpo.py) on one H100, and a ReDPO step on one CPU thread
TRAIN_STEP_S_GPU = 0.529
TRAIN_STEP_S_CPU = 7.42


@dataclass
class StepCost:
    """What one step would cost: its tasks, the clips they generate, device-hours, shard bytes."""

    stage: int
    step: str
    tasks: int
    clips: int = 0
    clip_s: float = 0.0  # seconds per clip on one device
    gpus: int = 1  # devices per task (0 = a CPU job: no GPU-hours); training: all of its GPUs
    bytes: int = 0
    steps: int = 0  # training: optimizer steps
    step_s: float = 0.0  # training: seconds per optimizer step (all ranks at once)
    pairs: int = 0  # training: the pairs it is expected to train on

    @property
    def hours(self) -> float:
        """Wall-clock hours of the work (for an array: summed over its tasks)."""
        return (self.steps * self.step_s if self.steps else self.clips * self.clip_s) / 3600

    @property
    def gpu_hours(self) -> float:
        return self.hours * max(self.gpus, 0)

    def line(self) -> str:
        where = f"stage {self.stage}" if self.stage else "run"
        gpu = f"{self.gpu_hours:8.3f} GPU-h" if self.gpus else "   (CPU job)"
        clips = f"{self.clips:6d} clips" if self.clips else f"{self.steps:6d} steps" if self.steps else " " * 12
        return f"# {where:<8} {self.step:<13} {self.tasks:4d} task(s) {clips}  {gpu}  {human_bytes(self.bytes):>9}"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def loo_task_clips(n_variants: int, n_samples: int, units_per_task: int, prompts_per_task: int) -> list[int]:
    """Clips of every leave-one-out task, in plan order (loo.plan: variant chunks x sample chunks)."""
    per = prompts_per_task or n_samples
    return [min(units_per_task, n_variants - v) * (min(lo + per, n_samples) - lo)
            for v in range(0, n_variants, units_per_task) for lo in range(0, n_samples, per)]


def loo_bytes(clips: int, samples: int, shards: int) -> int:
    """Leave-one-out shards: a float32 per aspect and clip, ids per sample, HDF5 overhead per shard."""
    from vip.rewards.base import ASPECTS
    return clips * SCORE_BYTES * len(ASPECTS) + samples * SAMPLE_ID_BYTES + shards * LOO_SHARD_BYTES


def pairs_bytes(rows: int, latent_numel: int, shards: int) -> int:
    """Pair shards, teacher and student side: fp16 latents, scores and ids per row, overhead per shard."""
    from vip.rewards.base import ASPECTS
    per_row = latent_numel * 2 + SCORE_BYTES * len(ASPECTS) + 16
    return 2 * (rows * per_row + shards * PAIRS_SHARD_BYTES)


def measured(run: RunDir, before: int) -> dict:
    """From the last finished stage before `before` (its loo.h5 merged): seconds per clip (sacct elapsed
    of its leave-one-out array tasks over their clips) and bytes per clip of its loo and pairs shards.
    Keys present only when known; `from` names the stage."""
    out: dict = {}
    for n in range(before - 1, 0, -1):
        d = run.stage(n)
        planned = loo.read_plan(d)
        if planned is None or not (d / "loo.h5").is_file():
            continue
        out["from"] = n
        clips = [len(t["variants"]) * (t["samples"][1] - t["samples"][0]) for t in planned["tasks"]]
        marks = [_marker_bytes(d / "loo" / "done" / f"task_{i:05d}") for i in range(len(clips))]
        if all(m is not None for m in marks) and sum(clips):
            out["loo_bytes_per_clip"] = sum(marks) / sum(clips)
        runs = [(tasks, secs) for tasks, secs in _elapsed(Ledger(d), "loo") if all(i < len(clips) for i in tasks)]
        n_clips = sum(clips[i] for tasks, _ in runs for i in tasks)
        if n_clips:
            out["clip_s"] = sum(secs for _, secs in runs) / n_clips
        pp = pairs.read_plan(d)
        if pp is not None:
            rows = len(pp["prompts"])
            sizes = [_marker_bytes(m) for m in (d / "pairs" / "done").glob("task_*")] if (d / "pairs" / "done").is_dir() \
                else []
            if rows and sizes and len(sizes) == len(pp["tasks"]) and all(x is not None for x in sizes):
                out["pairs_bytes_per_row"] = 2 * sum(sizes) / rows  # the teacher side is as large
        break
    return out


def measured_train(run: RunDir, tc: TrainConfig, before: int) -> dict:
    """From the stages before `before`: seconds per optimizer step of the last stage that trained
    (metrics.jsonl's samples_per_s at its last step, over the pairs one step takes on all ranks), and the
    fraction of candidate pairs the last curated stage kept. Keys present only when known."""
    out: dict = {}
    for n in range(before - 1, 0, -1):
        d = run.stage(n)
        if "kept_fraction" not in out:
            cur = read_json(d / "curation.json")
            if cur and cur.get("candidates"):
                out["kept_fraction"], out["kept_from"] = cur["kept"] / cur["candidates"], n
        if "train_step_s" not in out:
            step_s = _step_seconds(run, tc, n)
            if step_s:
                out["train_step_s"], out["train_from"] = step_s, n
        if "kept_fraction" in out and "train_step_s" in out:
            break
    return out


def _step_seconds(run: RunDir, tc: TrainConfig, stage: int) -> float | None:
    """The run's config is the same in every stage (one hash), so tc gives that stage's batch too."""
    done = read_json(redpo_trainer.train_dir(run, stage) / "done.json")
    if not done or not done.get("steps") or done.get("skipped"):
        return None
    metrics = read_metrics(redpo_trainer.train_dir(run, stage))
    rate = metrics[-1].get("samples_per_s") if metrics else None
    if not rate:
        return None
    world = int(done["world_size"])
    batch = min(tc.batch_size, int(done["pairs"]) // world)
    return batch * tc.grad_accum * world / rate  # samples_per_s counts pairs over all ranks, since (re)start


def _marker_bytes(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _elapsed(ledger: Ledger, step: str) -> list[tuple[list[int], float]]:
    """(tasks, device-seconds) of every COMPLETED latest job element (sacct ElapsedRaw): an array task's
    elapsed time, or a packed job's elapsed time x its ranks for all its tasks; [] without accounting."""
    latest = {t: (e, entry) for t, (e, entry) in latest_elements(ledger, step).items() if t is not None}
    if not latest:
        return []
    bases = sorted({e.split("_")[0] for e, _ in latest.values()}, key=id_key)
    try:
        text = slurm._run(["sacct", "-n", "-X", "-P", "-j", ",".join(bases), "-o", "JobID,State,ElapsedRaw"])
    except slurm.SlurmError:
        return []
    secs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3 and parts[1] == "COMPLETED" and parts[2].isdigit():
            secs[parts[0]] = float(parts[2])
    groups: dict[str, list[int]] = {}
    ranks: dict[str, int] = {}
    for t, (e, entry) in latest.items():
        if e in secs:
            groups.setdefault(e, []).append(t)
            ranks[e] = int(entry.get("ranks", 1)) if entry.get("kind") == "packed" else 1
    return [(sorted(tasks), secs[e] * ranks[e]) for e, tasks in groups.items()]


def train_steps(tc: TrainConfig, n_pairs: int, world: int) -> int:
    """Optimizer steps the trainer takes on n_pairs over `world` ranks (redpo_trainer.train's arithmetic:
    per-rank batch min(batch_size, pairs // world), whole global micro-batches, grad_accum per step);
    0 when it would skip (fewer than train.min_pairs) or refuse (fewer pairs than ranks)."""
    if n_pairs < tc.min_pairs:
        return 0
    batch = min(tc.batch_size, n_pairs // world)
    if batch == 0:
        return 0
    return tc.epochs * (Order(n_pairs, batch, world, 0).micro_steps_per_epoch // tc.grad_accum)


def expected_pairs(cfg: Config, known: dict, pairs_rows: int | None = None, kept: int | None = None) -> int:
    """Pairs a stage's training will see: this stage's curation when it is done (kept), else its candidate
    rows (the pairs plan, or the bound max_prompts x seeds_per_prompt) times the fraction an earlier stage
    kept (known['kept_fraction']), else all of them (an upper bound)."""
    if kept is not None:
        return kept
    rows = pairs_rows if pairs_rows is not None else cfg.curate.max_prompts * cfg.curate.seeds_per_prompt
    return round(rows * known.get("kept_fraction", 1.0))


def stage_costs(cfg: Config, stage: int, todo: dict[str, list[int]], n_variants: int, n_samples: int,
                latent_numel: int, known: dict, pairs_rows: int | None = None,
                kept_pairs: int | None = None) -> list[StepCost]:
    """The arithmetic of the estimate, for one stage (no files, no Slurm).

    todo: array step -> the tasks that would be submitted; single steps (target, outcome, ...) -> [None].
    known: measured() of an earlier stage (clip_s, loo_bytes_per_clip, pairs_bytes_per_row, train_step_s,
    kept_fraction), else the constants: TOYVID_CLIPS_PER_S, TRAIN_STEP_S_GPU / _CPU and the per-sample
    byte estimates above.
    pairs_rows: rows of the pairs plan (None: not planned yet; max_prompts x seeds_per_prompt is the bound).
    kept_pairs: pairs this stage's curation kept (None: not curated yet)."""
    clip_s = known.get("clip_s", 1 / TOYVID_CLIPS_PER_S)
    array_gpus = max(1, cfg.slurm.array_gpus)
    out = []
    for step, tasks in todo.items():
        c = StepCost(stage, step, len(tasks), clip_s=clip_s, gpus=0)
        if step == "loo":
            if cfg.loo.adaptive:  # later rounds depend on scores: the exhaustive count bounds it
                c.step, c.clips, samples = "loo (at most)", n_variants * n_samples, n_samples
            else:
                per_task = loo_task_clips(n_variants, n_samples, cfg.loo.units_per_task, cfg.loo.prompts_per_task)
                c.clips = sum(per_task[i] for i in tasks)
                per = cfg.loo.prompts_per_task or n_samples
                chunks = -(-n_samples // per)  # task i covers sample chunk i % chunks
                samples = sum(min(per, n_samples - (i % chunks) * per) for i in tasks)
            c.gpus = array_gpus
            c.bytes = round(known["loo_bytes_per_clip"] * c.clips) if "loo_bytes_per_clip" in known \
                else loo_bytes(c.clips, samples, len(tasks))
        elif step == "pairs":
            rows = pairs_rows if pairs_rows is not None else cfg.curate.max_prompts * cfg.curate.seeds_per_prompt
            per = cfg.curate.samples_per_task
            n_tasks = -(-rows // per)
            idx = tasks if tasks and tasks[0] is not None else list(range(n_tasks))
            task_rows = sum(min(per, rows - i * per) for i in idx)
            c.tasks, c.clips, c.gpus = len(idx), 2 * task_rows, array_gpus  # teacher and student videos
            c.bytes = round(known["pairs_bytes_per_row"] * task_rows) if "pairs_bytes_per_row" in known \
                else pairs_bytes(task_rows, latent_numel, len(idx))
        elif step in ("target", "outcome"):
            c.clips = (2 if step == "target" else 1) * n_samples  # teacher + pruned student / trained student
            c.gpus = max(1, cfg.slurm.array_gpus)
        elif step == "train":  # nodes x GPUs, one rank per GPU, for the trainer's steps
            c.tasks = cfg.slurm.nodes * max(1, cfg.slurm.gpus_per_node)
            c.gpus = 0 if not cfg.slurm.gpus_per_node else c.tasks
            c.clip_s = 0.0
            c.pairs = expected_pairs(cfg, known, pairs_rows, kept_pairs)
            c.steps = train_steps(cfg.train, c.pairs, c.tasks)
            c.step_s = known.get("train_step_s", TRAIN_STEP_S_GPU if cfg.slurm.gpus_per_node else TRAIN_STEP_S_CPU)
        out.append(c)
    return out


def cost_lines(ctx: StageContext, sink) -> list[str]:
    """The cost estimate of what a dry run would submit, per step (printed after the summary)."""
    known = {**measured(ctx.run, ctx.stage), **measured_train(ctx.run, ctx.cfg.train, ctx.stage)}
    lines = ["# ---- estimated cost (" + (
        f"{known['clip_s']:.2f} s per clip measured from stage {known['from']}'s leave-one-out jobs (sacct)"
        if "clip_s" in known else f"{1 / TOYVID_CLIPS_PER_S:.2f} s per clip: toyvid on one CPU thread, "
                                  f"{TOYVID_CLIPS_PER_S} clips/s, docs/benchmarks.md") + "; storage: shard bytes " + (
        f"of stage {known['from']}" if "loo_bytes_per_clip" in known else "estimated per sample") + ")"]
    by_stage: dict[int, dict[str, list]] = {}
    for a in sink.actions:
        if a.verb == "would submit" and a.step in STEPS:  # not the continuations
            by_stage.setdefault(a.stage, {})[a.step] = sink.todo.get((a.stage, a.step), [None])
        if a.verb == "later" and a.step.endswith(".."):  # submitted by a continuation: estimated all the same
            for step in sink.later[a.stage]:
                by_stage.setdefault(a.stage, {})[step] = [None]
    gpu_h, total_bytes = 0.0, 0
    kept_note: dict[int, str] = {}
    for n, todo in sorted(by_stage.items()):
        sctx = StageContext(ctx.run, ctx.cfg, n) if n != ctx.stage else ctx
        if n == 0:  # the prompt filter: LLM calls, no clips
            costs = [StepCost(0, step, len(t), gpus=0) for step, t in todo.items()]
        else:
            try:
                n_variants = 1 + len(loo.units_to_evaluate(sctx))
                latent = math.prod(sctx.model.latent_shape)
            except Exception:  # a later stage's model does not exist yet: this stage's figures
                n_variants = 1 + len(loo.units_to_evaluate(ctx)) - sum(ctx.cfg.select.k_at(m) for m in range(ctx.stage, n))
                latent = math.prod(ctx.model.latent_shape)
            pp = pairs.read_plan(sctx.dir)
            cur = read_json(sctx.dir / "curation.json")
            costs = stage_costs(ctx.cfg, n, todo, n_variants, len(ctx.eval_set.prompts), latent, known,
                                len(pp["prompts"]) if pp else None, cur["kept"] if cur else None)
            kept_note[n] = "curated" if cur else "planned" if pp else "bound"
        for c in costs:
            later = todo.get("pairs") == [None] and c.step in ("pairs", "curate", "train", "outcome")
            note = ("  (upper bound, submitted later)" if later and c.step == "pairs"
                    else "  (submitted later)" if later and c.step != "train" else "")
            if c.step == "train":
                note = "  " + train_note(c, known, kept_note[c.stage]) + (", submitted later" if later else "")
            lines.append(c.line() + note)
            gpu_h += c.gpu_hours
            total_bytes += c.bytes
    lines.append(f"# total{'':<39}{gpu_h:8.3f} GPU-h  {human_bytes(total_bytes):>9}")
    return lines


def train_note(c: StepCost, known: dict, pairs_from: str) -> str:
    """Where a training estimate's figures come from, in words."""
    if pairs_from == "curated":
        where = "kept by this stage's curation"
    elif "kept_fraction" in known:
        where = (f"{'planned' if pairs_from == 'planned' else 'max_prompts x seeds_per_prompt'} candidates x "
                 f"{known['kept_fraction']:.2f} kept in stage {known['kept_from']}")
    else:
        where = f"upper bound: every {'planned' if pairs_from == 'planned' else 'possible'} candidate kept"
    speed = (f"{c.step_s:.3f} s/step measured in stage {known['train_from']}" if "train_step_s" in known
             else f"{c.step_s:.3f} s/step from docs/benchmarks.md")
    if not c.steps:
        return f"(({c.pairs} pairs, {where}: training would be skipped or refused)"[1:]
    return f"({c.pairs} pairs, {where}; {speed}; x {c.tasks} rank(s))"
