"""One description of a step's jobs, read by every driver: the local one (driver.run_stage), the Slurm
submitter and its dry run (submit, dryrun), the sbatch renderer (render), `--wait` and `--status` (watch),
jobs/step.py and the preflight.

    STEPS["pairs"]: kind, what it runs, the steps it waits for, per run or per stage, done(ctx), and
                    for a fanned-out step its tasks (ArrayStep: missing, run, done, count) and the tasks a
                    submission would cover without writing (todo)
    ARRAY_STEPS:    the fanned-out steps' ArrayStep (what slurm.ArrayTask, slurm.PackedJob and packed.run_rank run)
    run_step(step, ctx, task) -> one line: what jobs/step.py and a single step's Slurm job run

STEPS is in submission order; a step's `after` names earlier steps only. No Slurm here: a packed rank
started by mpirun on a machine without Slurm uses it too.
"""
from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vip.cli import fail_cleanly
from vip.config import ConfigError
from vip.orchestrate import local
from vip.orchestrate.ledger import ledger_for
from vip.orchestrate.status import curation_summary
from vip.steps import filter as prompt_filter
from vip.steps import loo, outcome, pairs, select, target
from vip.steps.context import StageContext
from vip.store import IncompleteError
from vip.train import redpo_trainer

KINDS = ("array", "cpu_array", "packed", "cpu_packed", "gpu", "cpu", "train")  # the resources of a job


def job_name(cfg, stage: int, step: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"vip-{cfg.run.name}-s{stage}-{step}")[:100]


def packed_ranks(slurm, tasks: int | None = None) -> int:
    """Ranks of a packed job: slurm.packed_ranks (0 = nodes x GPUs per node), never more than its tasks."""
    ranks = slurm.packed_ranks or slurm.nodes * max(1, slurm.gpus_per_node)
    return max(1, min(ranks, tasks)) if tasks is not None else ranks


@dataclass(frozen=True)
class ArrayStep:
    """How a fanned-out step's task runs: missing(ctx) -> [task], run(ctx, task), done(ctx, task)."""

    missing: Callable[[StageContext], list[int]]
    run: Callable[[StageContext, int], Any]
    done: Callable[[StageContext, int], bool]
    kind: str = "array"  # "cpu_array" for steps that need no GPU (prompt filtering calls an API)
    count: Callable[[StageContext], int] | None = None  # tasks in the plan (packed mode shares them out)


@dataclass(frozen=True)
class StepJobs:
    """One step's jobs: what to submit, after which steps, with which resources, and when it is done."""

    name: str
    kind: str  # array (a GPU per task), cpu_array, gpu (one GPU task), cpu (small job), train (nodes x GPUs)
    what: str  # what its job runs, in one line (dry-run headers)
    done: Callable[[StageContext], bool]  # from files; per-run steps get stage 0
    after: tuple[str, ...] = ()  # the steps its job waits for (afterany)
    per_run: bool = False  # once per run (<run>/jobs.json), not per stage
    job: Callable[[StageContext], Any] | None = None  # a single step: what its job runs (picklable)
    tasks: ArrayStep | None = None  # a fanned-out step: how its tasks run
    todo: Callable[[StageContext], list[int]] | None = None  # the tasks a submission covers, writing nothing
    read_plan: Callable[[StageContext], dict | None] | None = None  # its written plan (progress bars)
    planned_from_after: bool = False  # planned from what `after` writes: submitted by a continuation
    row: str = ""  # the --status / --wait row it shows in (default: its own)
    local: Callable[[StageContext], Any] | None = None  # the local driver's work (None: done with the row's)
    local_name: str = ""  # the local driver's name for it (default: its own)
    step: Callable[[StageContext, int | None], str] | None = None  # jobs/step.py <step>: one line

    @property
    def is_array(self) -> bool:
        return self.tasks is not None

    def task_done(self, ctx: StageContext, task: int | None) -> bool:
        """Whether the work of one job element (a task of a fanned-out step, or the step) is done."""
        return self.done(ctx) or (task is not None and self.tasks is not None and self.tasks.done(ctx, task))


# ----------------------------------------------------------------------------- what runs on the nodes

def step_job(step: str, ctx: StageContext) -> None:
    """A single step on a node (select, target, curate, outcome): one line, or one error line and exit 2."""
    with fail_cleanly():
        print(run_step(step, ctx), flush=True)


def filter_merge_job(ctx: StageContext) -> None:
    with fail_cleanly():
        if prompt_filter.is_done(ctx.run, ctx.cfg):
            print("prompt filter: already merged", flush=True)
            return
        print(f"prompt filter: merged -> {prompt_filter.merge(ctx.run, ctx.cfg)}", flush=True)


def train_job(ctx: StageContext) -> int:
    """Every rank: ReDPO training in this process (RANK, WORLD_SIZE, ... set by the slurm layer).
    Returns 75 after USR1 / USR2 (preemption, time limit) and a checkpoint: the slurm layer then
    requeues the job. After SIGTERM (a user's scancel) and a checkpoint: one error line, exit 2, no
    requeue; the driver run again resumes from that checkpoint."""
    with fail_cleanly():
        if redpo_trainer.is_done(ctx.run, ctx.stage, ctx.cfg):
            print(f"stage {ctx.stage} train: already done", flush=True)
            return 0
        check_train_inputs(ctx)
        code = redpo_trainer.train(ctx.run, ctx.cfg, ctx.stage, progress=False)
        if code == redpo_trainer.EXIT_STOPPED:
            if os.environ.get("RANK", "0") == "0":
                ledger_for(ctx).record_event("train", {
                    "event": "stopped", "job_id": os.environ.get("SLURM_JOB_ID", "local"), "signal": "TERM",
                    "restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0)})
            raise IncompleteError(f"stage {ctx.stage} training stopped by SIGTERM (scancel) after saving a "
                                  "checkpoint; not requeued: run the same jobs/stage.py command again to resume")
        return code


# ----------------------------------------------------------------------------- one step (jobs/step.py)

def run_step(step: str, ctx: StageContext, task: int | None = None) -> str:
    """One step (or one task of loo / pairs) of one stage. Every step checks its inputs first and raises
    IncompleteError naming what is missing; a step already done says so and does nothing."""
    spec = STEPS.get(step)
    if spec is None or spec.step is None:
        raise ConfigError(f"unknown step {step!r}; expected one of {', '.join(STEP_CHOICES)}")
    if task is not None and not spec.is_array:
        raise ConfigError(f"--task is for the array steps loo and pairs, not {step}")
    return spec.step(ctx, task)


def _loo_step(ctx: StageContext, task: int | None) -> str:
    s = f"stage {ctx.stage} loo"
    if loo.is_done(ctx):
        return f"{s}: already merged ({loo.merged_path(ctx)})"
    if task is None:
        local.run_loo(ctx)
        return f"{s}: every task done"
    _check_task(task, len(loo.plan(ctx)["tasks"]), s)
    if loo.shards(ctx).is_done(task):
        return f"{s} task {task}: already done"
    loo.shards(ctx).discard(task)  # a truncated or mismatched shard is redone from scratch
    loo.run_task(ctx, task)
    return f"{s} task {task}: done"


def _select_step(ctx: StageContext, task=None) -> str:
    s = f"stage {ctx.stage} select"
    if select.is_done(ctx):
        return f"{s}: already done ({select.selection_path(ctx)})"
    if not loo.is_done(ctx):
        loo.merge(ctx)  # refuses, naming the missing shards, unless every task is done
    return f"{s}: merged {loo.merged_path(ctx)}, chose {', '.join(select.run(ctx).chosen)}"


def _target_step(ctx: StageContext, task=None) -> str:
    s = f"stage {ctx.stage} target"
    if target.is_done(ctx):
        return f"{s}: already done ({target.target_path(ctx)})"
    if not select.is_done(ctx):
        raise IncompleteError(f"target detection needs stage {ctx.stage}'s selection "
                              f"({select.selection_path(ctx)}); run the select step first")
    return f"{s}: target(s) {', '.join(target.run(ctx)['targets'])}"


def _pairs_step(ctx: StageContext, task: int | None) -> str:
    s = f"stage {ctx.stage} pairs"
    if pairs.is_done(ctx):
        return f"{s}: already curated ({pairs.pairs_path(ctx)})"
    check_pair_inputs(ctx)
    if task is None:
        local.run_pairs(ctx)
        return f"{s}: every task done"
    _check_task(task, len(pairs.plan(ctx)["tasks"]), s)
    if task not in pairs.missing(ctx):
        return f"{s} task {task}: already done"
    pairs.run_task(ctx, task)  # each side's shard is checked (and redone if bad) inside
    return f"{s} task {task}: done"


def _curate_step(ctx: StageContext, task=None) -> str:
    s = f"stage {ctx.stage} curate"
    if pairs.is_done(ctx):
        return f"{s}: already done ({pairs.pairs_path(ctx)})"
    if pairs.read_plan(ctx.dir) is None:
        raise IncompleteError(f"curation needs the pair shards of stage {ctx.stage} ({pairs.step_dir(ctx)}); "
                              "run the pairs step first")
    record = pairs.curate(ctx)  # refuses, naming the missing shards, unless every task is done
    return f"{s}: kept {record['kept']} of {record['candidates']} pairs -> {pairs.pairs_path(ctx)}"


def _outcome_step(ctx: StageContext, task=None) -> str:
    s = f"stage {ctx.stage} outcome"
    if outcome.is_done(ctx):
        return f"{s}: already done ({outcome.outcome_path(ctx)})"
    if not redpo_trainer.is_done(ctx.run, ctx.stage, ctx.cfg):
        raise IncompleteError(f"the outcome needs stage {ctx.stage}'s trained student "
                              f"({redpo_trainer.final_path(ctx.run, ctx.stage)}); run training first")
    return f"{s}: ReDPO total {outcome.run(ctx)['redpo']['total']:.3f}"


def check_pair_inputs(ctx: StageContext) -> None:
    """Pairs are planned from target.json and the run's filtered prompt sets."""
    if not target.is_done(ctx):
        raise IncompleteError(f"pair generation needs {target.target_path(ctx)}; run the target step first")
    if not prompt_filter.is_done(ctx.run, ctx.cfg):
        raise IncompleteError(f"pair generation needs the run's filtered prompts "
                              f"({prompt_filter.scores_path(ctx.run)}); run jobs/filter_prompts.py first")


def check_train_inputs(ctx: StageContext) -> None:
    if not pairs.is_done(ctx):
        raise IncompleteError(f"training needs stage {ctx.stage}'s curated pairs ({pairs.pairs_path(ctx)}); "
                              "run the curate step first")


def _check_task(task: int, n: int, what: str) -> None:
    if not 0 <= task < n:
        raise ConfigError(f"--task {task} is out of range: {what} has {n} tasks (0 to {n - 1})")


# ----------------------------------------------------------------------------- tasks, without writing

def _loo_todo(ctx: StageContext) -> list[int]:
    """The tasks a submission would cover, from the written plan or computed like the plan."""
    planned = loo.read_plan(ctx.dir)
    if planned is not None:
        return loo.shards(ctx).missing(range(len(planned["tasks"])))
    cfg, n = ctx.cfg, len(ctx.eval_set.prompts)
    variants = 1 + len(loo.units_to_evaluate(ctx))
    if cfg.loo.adaptive:  # the first round only
        from vip.steps.loo.adaptive import schedule

        n = schedule(n, cfg.loo.adaptive_first)[0]
    per = cfg.loo.prompts_per_task or n
    return list(range(math.ceil(variants / cfg.loo.units_per_task) * math.ceil(n / per)))


def _filter_todo(ctx: StageContext) -> list[int]:
    planned = prompt_filter.read_plan(ctx.run)
    if planned is not None:
        return prompt_filter.shards(ctx.run).missing(range(len(planned["tasks"])))
    from vip.prompts.sets import load_prompts

    n = len(load_prompts(ctx.cfg.filter.source, key="filter.source"))
    return list(range(math.ceil(n / ctx.cfg.filter.prompts_per_task)))


def _pairs_todo(ctx: StageContext) -> list[int]:
    if pairs.read_plan(ctx.dir) is not None:
        return pairs.missing(ctx)
    rows = len(pairs.curation_prompts(ctx, target.load(ctx)["targets"])) * ctx.cfg.curate.seeds_per_prompt
    return list(range(math.ceil(rows / ctx.cfg.curate.samples_per_task)))


def _pairs_task_done(ctx: StageContext, i: int) -> bool:
    return pairs.read_plan(ctx.dir) is not None and i not in pairs.missing(ctx)


def _run_pairs_and_curate(ctx: StageContext) -> None:
    if pairs.missing(ctx):
        local.run_pairs(ctx)
    record = pairs.curate(ctx)
    print(f"\nstage {ctx.stage}: curation\n{curation_summary(record)}\n", flush=True)


LOO = ArrayStep(loo.missing, lambda ctx, i: loo.run_task(ctx, i), lambda ctx, i: loo.shards(ctx).is_done(i),
                count=lambda ctx: len(loo.plan(ctx)["tasks"]))
PAIRS = ArrayStep(pairs.missing, lambda ctx, i: pairs.run_task(ctx, i), _pairs_task_done,
                  count=lambda ctx: len(pairs.plan(ctx)["tasks"]))
FILTER = ArrayStep(lambda ctx: prompt_filter.missing(ctx.run, ctx.cfg),  # once per run: ctx.stage is 0
                   lambda ctx, i: prompt_filter.run_task(ctx.run, ctx.cfg, i),
                   lambda ctx, i: prompt_filter.shards(ctx.run).is_done(i), kind="cpu_array",
                   count=lambda ctx: len(prompt_filter.plan(ctx.run, ctx.cfg)["tasks"]))


def _filter_done(ctx: StageContext) -> bool:
    return prompt_filter.is_done(ctx.run, ctx.cfg)


def _pairs_done(ctx: StageContext) -> bool:
    return pairs.is_done(ctx)


def _job(step: str) -> Callable[[StageContext], None]:
    return functools.partial(step_job, step)


STEPS: dict[str, StepJobs] = {s.name: s for s in (  # in submission order
    StepJobs("loo", "array", "jobs/step.py loo --task I: leave-one-out scores of task I", loo.is_done,
             tasks=LOO, todo=_loo_todo, read_plan=lambda ctx: loo.read_plan(ctx.dir),
             local=lambda ctx: (local.run_loo(ctx), loo.merge(ctx)), step=_loo_step),
    StepJobs("select", "cpu", "jobs/step.py select: merge the leave-one-out shards, select the units, save the "
             "pruned student", select.is_done, ("loo",), job=_job("select"), local=local.run_select, step=_select_step),
    StepJobs("filter", "cpu_array", "jobs/filter_prompts.py --task I: LLM scores of the prompts of task I (once per "
             "run)", _filter_done, per_run=True, tasks=FILTER, todo=_filter_todo,
             read_plan=lambda ctx: prompt_filter.read_plan(ctx.run),
             local=lambda ctx: local.run_filter(ctx.run, ctx.cfg)),
    StepJobs("filter_merge", "cpu", "jobs/filter_prompts.py --merge: the filtered prompt sets (once per run)",
             _filter_done, ("filter",), per_run=True, job=filter_merge_job, row="filter"),
    StepJobs("target", "gpu", "jobs/step.py target: target detection, pruned student against the teacher",
             target.is_done, ("select",), job=_job("target"), local=target.run, step=_target_step),
    StepJobs("pairs", "array", "jobs/step.py pairs --task I: teacher and student videos of task I, scored",
             _pairs_done, ("target", "filter_merge"), tasks=PAIRS, todo=_pairs_todo,
             read_plan=lambda ctx: pairs.read_plan(ctx.dir), planned_from_after=True,
             local=_run_pairs_and_curate, local_name="pairs+curate", step=_pairs_step),
    StepJobs("curate", "cpu", "jobs/step.py curate: merge the pair shards and keep the pairs the rules accept "
             "(pairs.h5)", _pairs_done, ("pairs",), job=_job("curate"), step=_curate_step),
    StepJobs("train", "train", "jobs/train_redpo.py on every rank: ReDPO training (exit 75 = checkpointed on a "
             "signal: requeued)", lambda ctx: redpo_trainer.is_done(ctx.run, ctx.stage, ctx.cfg), ("curate",),
             job=train_job, local=local.run_training),
    StepJobs("outcome", "gpu", "jobs/step.py outcome: the trained student scored beside the teacher and the pruned "
             "student", outcome.is_done, ("train",), job=_job("outcome"), local=outcome.run, step=_outcome_step),
)}
ARRAY_STEPS: dict[str, ArrayStep] = {s.name: s.tasks for s in STEPS.values() if s.tasks is not None}
STEP_CHOICES = tuple(s for s, spec in STEPS.items() if spec.step is not None)  # jobs/step.py's steps
ROWS = {row: tuple(s for s, spec in STEPS.items() if (spec.row or s) == row) for row in STEPS}  # row -> ledger steps
