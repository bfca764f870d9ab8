"""Submit what a stage still needs to Slurm, chained with afterany dependencies (runtime.executor=slurm).

    submit_stage(ctx, until=M)      -> [Action]: what was submitted, found queued or done, per step
    dry_run(cfg, run, N, M)         -> the job scripts that would be submitted (nothing is written)

    loo array -> select -> target -> [continue] -> pairs array -> curate -> train -> outcome -> [next]
    filter array -> filter_merge                      (once per run: <run>/jobs.json)

Only missing work is submitted, and never a task already pending or running (the slurm layer checks
the ledger against squeue and sacct). Each job checks its own inputs, so afterany is enough: a job
whose inputs failed stops with one line instead of running on bad data.

Pairs cannot be planned before target.json and the filtered prompt sets exist, so while they are
missing a small CPU job `continue` waits for them and re-enters this module on a node; it then
submits pairs .. outcome. With until > stage, `next` does the same for the next stage after the
outcome. Continuations never resubmit failed work: they stop, naming the step that did not finish,
its job and its log; running the same jobs/stage.py command again then submits only what is missing.

A job already queued for a later step is made to wait for anything this call (re)submits before it
(`scontrol update Dependency`), or, if it already started on inputs being redone, cancelled and
submitted again. A file lock in the run directory (driver.lock) keeps two drivers from submitting at once.
"""
from __future__ import annotations

import functools
import json
import math
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from vip.cli import fail_cleanly
from vip.config import Config, TrainConfig
from vip.orchestrate import driver, slurm
from vip.orchestrate.ledger import Ledger
from vip.orchestrate.steprun import check_train_inputs, run_step
from vip.prompts.sets import load_prompts
from vip.steps import filter as prompt_filter
from vip.steps import loo, outcome, pairs, select, target
from vip.steps.context import StageContext
from vip.steps.done import step_done
from vip.store import IncompleteError, RunDir, atomic_write_json, read_json
from vip.train import redpo_trainer
from vip.train.data import Order
from vip.train.metrics import read_metrics

LOCK = "driver.lock"
NODE_LOCK_TIMEOUT = 600  # a continuation job waits this long for a driver that is submitting right now
CONTINUATION_GRACE = 60  # a person's driver waits this long for a continuation job that is submitting

WHAT = {  # what each job runs, for dry-run headers and messages
    "loo": "jobs/step.py loo --task I: leave-one-out scores of task I",
    "select": "jobs/step.py select: merge the leave-one-out shards, select the units, save the pruned student",
    "filter": "jobs/filter_prompts.py --task I: LLM scores of the prompts of task I (once per run)",
    "filter_merge": "jobs/filter_prompts.py --merge: the filtered prompt sets (once per run)",
    "target": "jobs/step.py target: target detection, pruned student against the teacher",
    "loo_round": "continuation (loo.adaptive): once this leave-one-out round is done, plans the next round and "
                 "submits it, or after the last round submits select .. outcome",
    "continue": "continuation: once target.json and the prompt sets exist, plans pairs and submits pairs .. outcome",
    "pairs": "jobs/step.py pairs --task I: teacher and student videos of task I, scored",
    "curate": "jobs/step.py curate: merge the pair shards and keep the pairs the rules accept (pairs.h5)",
    "train": "jobs/train_redpo.py on every rank: ReDPO training (exit 75 = checkpointed on a signal: requeued)",
    "outcome": "jobs/step.py outcome: the trained student scored beside the teacher and the pruned student",
    "next": "continuation: once this stage's outcome exists, submits the next stage (it re-enters the driver)",
}


def _what(step: str) -> str:
    return WHAT["loo_round"] if step.startswith("loo_round") else WHAT[step]  # loo_round3: one per round


class DriverBusyError(slurm.SlurmError):
    """Another driver holds the run's lock (one line)."""


@dataclass
class Action:
    stage: int  # 0 = run-wide (prompt filter)
    step: str
    verb: str  # submitted | queued | done | rechained | resubmitted | would submit
    ids: list[str] = field(default_factory=list)
    detail: str = ""

    def line(self) -> str:
        where = f"stage {self.stage}" if self.stage else "run"
        ids = " " + ":".join(self.ids) if self.ids else ""
        return f"{where:<8} {self.step:<13} {self.verb}{ids}" + (f" ({self.detail})" if self.detail else "")


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
                slurm.ledger_for(ctx).record_event("train", {
                    "event": "stopped", "job_id": os.environ.get("SLURM_JOB_ID", "local"), "signal": "TERM",
                    "restart": int(os.environ.get("SLURM_RESTART_COUNT") or 0)})
            raise IncompleteError(f"stage {ctx.stage} training stopped by SIGTERM (scancel) after saving a "
                                  "checkpoint; not requeued: run the same jobs/stage.py command again to resume")
        return code


def continue_stage(until: int, ctx: StageContext) -> None:
    """Continuation after target + filter: plan pairs and submit the rest of the stage (and `next`)."""
    with fail_cleanly(), node_driver(ctx.run):
        require(ctx, until, ("select", "target", "filter"))
        print("\n".join(a.line() for a in submit_stage(ctx, until)), flush=True)


def continue_loo(until: int, ctx: StageContext) -> None:
    """Continuation after an adaptive leave-one-out round: plan the next round and submit it (after
    the last round, submit the rest of the stage)."""
    with fail_cleanly(), node_driver(ctx.run):
        require(ctx, until, ("loo_round",))
        print("\n".join(a.line() for a in submit_stage(ctx, until)), flush=True)


def next_stage(until: int, ctx: StageContext) -> None:
    """Continuation after a stage's outcome: submit the next stage."""
    with fail_cleanly(), node_driver(ctx.run):
        require(ctx, until, ("outcome",))
        nxt = driver.preflight(ctx.cfg, ctx.run, ctx.stage + 1)
        print("\n".join(a.line() for a in submit_stage(nxt, until)), flush=True)


def require(ctx: StageContext, until: int, steps: tuple[str, ...]) -> None:
    """A continuation goes on only if what it waited for is done; otherwise one line naming the job."""
    for step in steps:
        if step_done(ctx, step):
            continue
        ledger_ctx = StageContext(ctx.run, ctx.cfg, 0) if step == "filter" else ctx
        names = {"filter": ("filter", "filter_merge"), "loo_round": ("loo",)}.get(step, (step,))
        last = [(e, entry) for s in names for e, entry in latest_elements(slurm.ledger_for(ledger_ctx), s).values()]
        job = ""
        if last:
            element, entry = last[-1]
            state = slurm.job_states([element])[element]
            job = f" (job {element} {state}; log {log_path(entry, element, failed=True)})"
        raise IncompleteError(f"stage {ctx.stage} {step} did not finish{job}: not going on; fix the cause and run "
                              f"`python jobs/stage.py --stage {ctx.stage} --until {until} --executor slurm "
                              f"--run-dir {ctx.run.path}` again: it submits only what is missing")


# ----------------------------------------------------------------------------- the driver's lock

@contextmanager
def driver_lock(run: RunDir, timeout: float = 0):
    """Only one driver submits for a run at a time; the second gets one line (DriverBusyError). A
    continuation job holds the lock for a few seconds only: a person's driver waits for it."""
    try:
        run.path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DriverBusyError(f"run directory {str(run.path)!r} cannot be written: {e.strerror}") from None
    lock = FileLock(str(run.path / LOCK))
    holder = run.path / (LOCK + ".json")
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        h = _holder(holder)
        try:
            if not h.get("what", "").startswith("Slurm job"):
                raise
            lock.acquire(timeout=CONTINUATION_GRACE)
        except Timeout:
            who = f" (pid {h['pid']} on {h['host']}, {h['what']}, since {h['since']})" if h else ""
            raise DriverBusyError(f"another driver is submitting jobs for run {run.path}{who}; wait for it to "
                                  f"finish (or see `python jobs/stage.py --status --run-dir {run.path}`)") from None
    try:
        job = os.environ.get("SLURM_JOB_ID")
        atomic_write_json(holder, {"pid": os.getpid(), "host": socket.gethostname(), "slurm_job_id": job or "",
                                   "what": f"Slurm job {job}" if job else "jobs/stage.py",
                                   "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _holder(path: Path) -> dict:
    try:
        h = json.loads(path.read_text())
        return h if {"pid", "host", "what", "since"} <= set(h) else {}
    except (OSError, ValueError):
        return {}


@contextmanager
def node_driver(run: RunDir):
    """A continuation job submits from inside a job: wait for the lock, and submit without this job's
    SLURM_* variables (sbatch and srun would read some of them as options of the new job)."""
    with driver_lock(run, timeout=NODE_LOCK_TIMEOUT), clean_slurm_env():
        yield


@contextmanager
def clean_slurm_env():
    keep = {"SLURM_CONF"}
    saved = {k: v for k, v in os.environ.items() if k not in keep
             and k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "SUBMITIT_"))}
    for k in saved:
        del os.environ[k]
    try:
        yield
    finally:
        os.environ.update(saved)


# ----------------------------------------------------------------------------- the ledger, read

def latest_elements(ledger: Ledger, step: str) -> dict[int | None, tuple[str, dict]]:
    """Task -> (job element, ledger entry) of its latest submission (a packed job: its job id for each
    of its tasks)."""
    out: dict[int | None, tuple[str, dict]] = {}
    for entry in ledger.entries(step):
        if entry.get("kind") == "packed":
            out.update({t: (entry["job_id"], entry) for t in entry["tasks"]})
            continue
        for element, task in entry["elements"].items():
            out[task] = (element, entry)
    return out


def log_path(entry: dict, element: str, failed: bool = False, task: int | None = None) -> Path:
    """submitit's log of a job element (rank 0 for a multi-task job; for a task of a packed job, the
    log of the rank that runs it): .err holds errors, .out the rest."""
    rank = 0
    if entry.get("kind") == "packed" and task in entry.get("tasks", ()):
        from vip.orchestrate.packed import rank_of

        rank = rank_of(entry["tasks"], task, entry["ranks"])
    return Path(entry["log_dir"]) / f"{element}_{rank}_log.{'err' if failed else 'out'}"


def recorded_deps(ledger: Ledger, step: str, job_id: str) -> list[str]:
    deps = [d for e in ledger.entries(step) if e["job_id"] == job_id for d in e.get("depends_on", [])]
    for ev in ledger.events(step):
        if ev.get("event") == "dependency" and ev.get("job_id") == job_id:
            deps += ev.get("depends_on", [])
    return sorted(set(map(str, deps)), key=_id_key)


def _id_key(job_id: str):
    head = job_id.split("_")[0]
    return (int(head) if head.isdigit() else 0, job_id)


# ----------------------------------------------------------------------------- submission

class Submitter:
    """Submits through the slurm layer and records what it did."""

    dry = False

    def __init__(self):
        self.actions: list[Action] = []

    def note(self, ctx: StageContext, step: str, verb: str, ids=(), detail: str = "") -> None:
        self.actions.append(Action(ctx.stage, step, verb, list(ids), detail))

    def array(self, ctx: StageContext, step: str) -> list[str]:
        """The step's missing tasks that are not queued (an array, or one packed job with slurm.packed);
        returns the ids a dependent waits for."""
        ledger = slurm.ledger_for(ctx)
        packed = ctx.cfg.slurm.packed
        adopted = slurm.reconcile_step(ctx, step)  # submitted by a driver stopped before it recorded them
        new = (slurm.submit_packed if packed else slurm.submit_array)(ctx, step)
        wait = slurm.queued_ids(ledger, step)
        if adopted:
            self.note(ctx, step, "queued", [e["job_id"] for e in adopted], adopted_detail(adopted))
        if new:
            entries = [e for e in ledger.entries(step) if e["job_id"] in new]
            if packed:
                (e,) = entries
                detail = f"packed, tasks {task_ranges(e['tasks'])} over {e['ranks']} rank(s)"
            else:
                detail = f"array, tasks {task_ranges(sorted(t for e in entries for t in e['elements'].values()))}"
            self.note(ctx, step, "submitted", new, detail)
        elif wait and not adopted:
            self.note(ctx, step, "queued", wait, "pending or running already")
        elif not adopted:
            self.note(ctx, step, "done", detail="every task done")
        return wait

    def job(self, ctx: StageContext, step: str, kind: str, after: list[str], fn=None) -> list[str]:
        fn = fn or functools.partial(step_job, step)
        ledger = slurm.ledger_for(ctx)
        adopted = slurm.reconcile_step(ctx, step)  # submitted by a driver stopped before it recorded it
        before = len(ledger.entries(step))
        job_id = slurm.submit_job(ctx, step, fn, kind=kind, depends_on=after)
        if len(ledger.entries(step)) > before:
            self.note(ctx, step, "submitted", [job_id], f"after {':'.join(after)}" if after else "")
            return [job_id]
        known = recorded_deps(ledger, step, job_id)
        extra = [a for a in after if a not in known]
        mine = [e for e in adopted if e["job_id"] == job_id]
        if not extra:
            self.note(ctx, step, "queued", [job_id], adopted_detail(mine) if mine else "pending or running already")
            return [job_id]
        return [self._rechain(ctx, step, kind, fn, job_id, known + extra, after)]

    def _rechain(self, ctx, step, kind, fn, job_id, deps, after) -> str:
        """A queued job of this step must also wait for jobs submitted before it in this call."""
        ledger = slurm.ledger_for(ctx)
        live = slurm.live_dependencies(deps)
        if slurm.job_states([job_id])[job_id] == "PENDING":
            try:
                slurm._run(["scontrol", "update", f"JobId={job_id}", f"Dependency=afterany:{':'.join(live)}"])
                ledger.record_event(step, {"event": "dependency", "job_id": job_id, "depends_on": live})
                self.note(ctx, step, "rechained", [job_id], f"queued; now after {':'.join(live)}")
                return job_id
            except slurm.SlurmError:
                pass  # it started in the meantime
        # it runs on inputs that are being redone: it cannot succeed, so it goes again after them
        slurm._run(["scancel", job_id])
        ledger.record_event(step, {"event": "cancelled", "job_id": job_id,
                                   "reason": f"its inputs were resubmitted ({':'.join(after)})"})
        slurm.wait([job_id], timeout=120)
        new = slurm.submit_job(ctx, step, fn, kind=kind, depends_on=after)
        self.note(ctx, step, "resubmitted", [new], f"after {':'.join(after)}; cancelled {job_id}, which had "
                                                   "started on inputs being redone")
        return new


def adopted_detail(entries: list[dict]) -> str:
    tasks = sorted(t for e in entries for t in (e.get("tasks") or e["elements"].values()) if t is not None)
    return ("adopted: submitted by a driver that was stopped before it recorded the job (tag "
            + ", ".join(e["tag"] for e in entries) + ")" + (f"; tasks {task_ranges(tasks)}" if tasks else ""))


def submit_stage(ctx: StageContext, until: int | None = None, sink: Submitter | None = None) -> list[Action]:
    """Submit every missing step of ctx.stage (and of the stages up to `until` that can be submitted
    now: a stage that is done is passed, one that is not gets a `next` continuation)."""
    sink = sink or Submitter()
    until = max(until or ctx.stage, ctx.stage)
    with clean_slurm_env():
        while _submit_one(ctx, until, sink) and ctx.stage < until:
            ctx = driver.preflight(ctx.cfg, _same_kind(ctx.run, sink), ctx.stage + 1)
    return sink.actions


def _same_kind(run: RunDir, sink: Submitter) -> RunDir:
    return ReadOnlyRun(run.path) if sink.dry else run


def _submit_one(ctx: StageContext, until: int, sink: Submitter) -> bool:
    """Submits what one stage still needs; True when the stage is done already."""
    run, cfg, n = ctx.run, ctx.cfg, ctx.stage
    if outcome.is_done(ctx):
        sink.note(ctx, "stage", "done", detail=f"{outcome.outcome_path(ctx)}")
        return True
    run_ctx = StageContext(run, cfg, 0)
    wait: dict[str, list[str]] = {}
    if not loo.is_done(ctx):
        if not sink.dry:
            loo.advance(ctx)  # adaptive: the last round is done, so plan the next one
        wait["loo"] = sink.array(ctx, "loo")
    rounds = adaptive_round_open(ctx)
    if not rounds and not select.is_done(ctx):
        wait["select"] = sink.job(ctx, "select", "cpu", wait.get("loo", []))
    filter_open = not prompt_filter.is_done(run, cfg)
    if filter_open:
        wait["filter"] = sink.array(run_ctx, "filter")
        wait["filter_merge"] = sink.job(run_ctx, "filter_merge", "cpu", wait["filter"], filter_merge_job)
    if rounds:  # the next round depends on this one's scores: a continuation plans and submits it
        r, total = rounds
        cont = sink.job(ctx, f"loo_round{r}", "cpu", wait["loo"], functools.partial(continue_loo, until))
        sink.note(ctx, "select..", "later", detail=f"adaptive leave-one-out round {r} of at most {total}: the next "
                  f"round, or after the last one select .. outcome, submitted by {cont[0]} once it is done")
        return False
    target_open = not target.is_done(ctx)
    if target_open:
        wait["target"] = sink.job(ctx, "target", "gpu", wait.get("select", []))
    if target_open or filter_open:  # pairs cannot be planned yet: a continuation does it on a node
        cont = sink.job(ctx, "continue", "cpu", wait.get("target", []) + wait.get("filter_merge", []),
                        functools.partial(continue_stage, until))
        sink.note(ctx, "pairs..", "later", detail=f"pairs, curate, train, outcome{', next' if until > n else ''}: "
                  f"submitted by {cont[0]} once target.json and the prompt sets exist")
        return False
    if not pairs.is_done(ctx):
        wait["pairs"] = sink.array(ctx, "pairs")
        wait["curate"] = sink.job(ctx, "curate", "cpu", wait["pairs"])
    if not redpo_trainer.is_done(run, n, cfg):
        wait["train"] = sink.job(ctx, "train", "train", wait.get("curate", []), train_job)
    wait["outcome"] = sink.job(ctx, "outcome", "gpu", wait.get("train", []))
    if until > n:
        nxt = sink.job(ctx, "next", "cpu", wait["outcome"], functools.partial(next_stage, until))
        sink.actions.append(Action(n + 1, "stage", "later", detail=f"submitted by {nxt[0]} once stage {n}'s "
                                                                   "outcome exists"))
    return False


def adaptive_round_open(ctx: StageContext) -> tuple[int, int] | None:
    """(round, rounds) while adaptive leave-one-out has rounds still to plan, else None."""
    if not ctx.cfg.loo.adaptive or loo.is_done(ctx):
        return None
    planned = loo.read_plan(ctx.dir)
    if planned is None:  # dry run before planning: round 1 of the schedule
        from vip.steps.loo.adaptive import schedule

        return 1, len(schedule(len(ctx.eval_set.prompts), ctx.cfg.loo.adaptive_first))
    if not loo.rounds_left(planned):
        return None
    return len(planned["adaptive"]["rounds"]), len(planned["adaptive"]["ends"])


def task_ranges(tasks: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5'."""
    out, i = [], 0
    while i < len(tasks):
        j = i
        while j + 1 < len(tasks) and tasks[j + 1] == tasks[j] + 1:
            j += 1
        out.append(f"{tasks[i]}-{tasks[j]}" if j > i else str(tasks[i]))
        i = j + 1
    return ",".join(out)


# ----------------------------------------------------------------------------- dry run

class ReadOnlyRun(RunDir):
    """A run directory that is checked but never written (--dry-run)."""

    def freeze(self, cfg: Config) -> None:
        if (self.path / "config.sha256").exists():
            super().freeze(cfg)  # compares only: refuses another config


class DrySubmitter(Submitter):
    """Collects the sbatch scripts submitit would submit, with placeholders for ids not known yet."""

    dry = True

    def __init__(self):
        super().__init__()
        self.scripts: list[str] = []
        self.todo: dict[tuple[int, str], list[int]] = {}  # (stage, array step) -> tasks it would submit

    def array(self, ctx: StageContext, step: str) -> list[str]:
        queued = self._queued(ctx, step)
        tasks = [t for t in _tasks_to_do(ctx, step) if t not in queued]
        wait = sorted({e.split("_")[0] for e in queued.values()}, key=_id_key)
        if not tasks:
            self.note(ctx, step, "queued" if wait else "done", wait)
            return wait
        if ctx.cfg.slurm.packed:
            name = self._name(ctx, step)
            ranks = slurm.packed_ranks(ctx.cfg.slurm, len(tasks))
            kind = "cpu_packed" if slurm.ARRAY_STEPS[step].kind == "cpu_array" else "packed"
            header = (f"{name}: packed job of {ranks} rank(s) for {len(tasks)} tasks ({task_ranges(tasks)}; rank r "
                      f"runs the r-th task of that list, then every {ranks} further); runs {_what(step)}")
            self.scripts.append(_script(ctx, step, kind, [], header, ranks=ranks))
            self.note(ctx, step, "would submit", [name], f"packed, tasks {task_ranges(tasks)} over {ranks} rank(s)")
            self.todo[(ctx.stage, step)] = tasks
            return wait + [name]
        size = slurm.max_array_size()
        chunks = [tasks[i:i + size] for i in range(0, len(tasks), size)]
        names = []
        for k, chunk in enumerate(chunks):
            name = self._name(ctx, step, k if len(chunks) > 1 else None)
            after = names[-1:] if ctx.cfg.slurm.array_parallelism and names else []
            part = f", part {k + 1} of {len(chunks)} (MaxArraySize {size})" if len(chunks) > 1 else ""
            header = f"{name}: array of {len(chunk)} tasks ({task_ranges(chunk)}){part}; runs {_what(step)}"
            self.scripts.append(_script(ctx, step, "array", after, header, len(chunk)))
            names.append(name)
        self.note(ctx, step, "would submit", names, f"array, tasks {task_ranges(tasks)}")
        self.todo[(ctx.stage, step)] = tasks
        return wait + names

    def job(self, ctx: StageContext, step: str, kind: str, after: list[str], fn=None) -> list[str]:
        queued = self._queued(ctx, step)
        if queued:
            ids = sorted(queued.values(), key=_id_key)[:1]
            self.note(ctx, step, "queued", ids)
            return ids
        name = self._name(ctx, step)
        self.scripts.append(_script(ctx, step, kind, after, f"{name}: {kind} job; runs {_what(step)}"))
        self.note(ctx, step, "would submit", [name], f"after {':'.join(after)}" if after else "")
        return [name]

    @staticmethod
    def _queued(ctx: StageContext, step: str) -> dict:
        ledger = slurm.ledger_for(ctx)
        return slurm.active_tasks(ledger, step) if ledger.entries(step) else {}

    @staticmethod
    def _name(ctx: StageContext, step: str, part: int | None = None) -> str:
        where = f"s{ctx.stage}" if ctx.stage else "run"
        return f"<{where}-{step}{'' if part is None else f'.{part}'}>"


def _script(ctx: StageContext, step: str, kind: str, after: list[str], header: str, count: int | None = None,
            ranks: int = 1) -> str:
    """The sbatch script submitit writes for this job (its own generator; no file is written)."""
    folder = slurm.log_dir(ctx, step)
    ex = slurm.make_executor(folder, ctx.cfg.slurm, kind, slurm.job_name(ctx.cfg, ctx.stage, step), ranks=ranks)
    inner = ex._executor  # submitit's SlurmExecutor inside the AutoExecutor
    if after:
        inner.parameters["additional_parameters"] = {**inner.parameters.get("additional_parameters", {}),
                                                     "dependency": "afterany:" + ":".join(after)}
    tag = f"vip-{ctx.cfg.hash()[:12]}-s{ctx.stage}-{step}.<unique-at-submission>"  # the job's --comment
    text = slurm.sbatch_text(inner, tag, count if kind == "array" else None)
    return f"# ---- {header}\n{text}"


def _tasks_to_do(ctx: StageContext, step: str) -> list[int]:
    """The tasks a submission would cover, from the written plan or computed like the plan (no writing)."""
    cfg = ctx.cfg
    if step == "loo":
        planned = loo.read_plan(ctx.dir)
        if planned is not None:
            return loo.shards(ctx).missing(range(len(planned["tasks"])))
        variants = 1 + len(loo.units_to_evaluate(ctx))
        n = len(ctx.eval_set.prompts)
        if cfg.loo.adaptive:  # the first round only
            from vip.steps.loo.adaptive import schedule

            n = schedule(n, cfg.loo.adaptive_first)[0]
        per = cfg.loo.prompts_per_task or n
        return list(range(math.ceil(variants / cfg.loo.units_per_task) * math.ceil(n / per)))
    if step == "filter":
        planned = prompt_filter.read_plan(ctx.run)
        if planned is not None:
            return prompt_filter.shards(ctx.run).missing(range(len(planned["tasks"])))
        n = len(load_prompts(cfg.filter.source, key="filter.source"))
        return list(range(math.ceil(n / cfg.filter.prompts_per_task)))
    if step == "pairs":
        if pairs.read_plan(ctx.dir) is not None:
            return pairs.missing(ctx)
        rows = len(pairs.curation_prompts(ctx, target.load(ctx)["targets"])) * cfg.curate.seeds_per_prompt
        return list(range(math.ceil(rows / cfg.curate.samples_per_task)))
    raise ValueError(step)


def dry_run(cfg: Config, run_path: Path, stage: int, until: int) -> str:
    """What `jobs/stage.py --executor slurm` would submit now, as the job scripts; writes nothing."""
    run = ReadOnlyRun(run_path)
    ctx = driver.preflight(cfg, run, stage)
    sink = DrySubmitter()
    submit_stage(ctx, until, sink)
    lines = [*sink.scripts, "# ---- summary (dry run: nothing was submitted or written)",
             *("# " + a.line() for a in sink.actions)]
    if not sink.scripts:
        lines.append("# nothing to submit")
    else:
        lines += cost_lines(ctx, sink)
    return "\n".join(lines)


# ----------------------------------------------------------------------------- dry run: what it will cost

TOYVID_CLIPS_PER_S = 1.2  # docs/benchmarks.md "Leave-one-out evaluation on toyvid (CPU)": one CPU thread
SCORE_BYTES = 4  # float32 per aspect and clip
SAMPLE_ID_BYTES = 24  # sample id, prompt id, seed (int64 each) per sample of a leave-one-out shard
LOO_SHARD_BYTES = 8 * 1024  # HDF5 overhead of one shard (a toyvid loo shard: 9,648 B for 36 clips of one variant)
PAIRS_SHARD_BYTES = 4 * 1024
CLIP_STEPS = {"loo", "pairs", "target", "outcome"}  # the steps that generate clips
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
    bases = sorted({e.split("_")[0] for e, _ in latest.values()}, key=_id_key)
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


def cost_lines(ctx: StageContext, sink: "DrySubmitter") -> list[str]:
    """The cost estimate of what a dry run would submit, per step (printed after the summary)."""
    known = {**measured(ctx.run, ctx.stage), **measured_train(ctx.run, ctx.cfg.train, ctx.stage)}
    lines = ["# ---- estimated cost (" + (
        f"{known['clip_s']:.2f} s per clip measured from stage {known['from']}'s leave-one-out jobs (sacct)"
        if "clip_s" in known else f"{1 / TOYVID_CLIPS_PER_S:.2f} s per clip: toyvid on one CPU thread, "
                                  f"{TOYVID_CLIPS_PER_S} clips/s, docs/benchmarks.md") + "; storage: shard bytes " + (
        f"of stage {known['from']}" if "loo_bytes_per_clip" in known else "estimated per sample") + ")"]
    by_stage: dict[int, dict[str, list]] = {}
    for a in sink.actions:
        if a.verb == "would submit" and a.step not in ("continue", "next") and not a.step.startswith("loo_round"):
            by_stage.setdefault(a.stage, {})[a.step] = sink.todo.get((a.stage, a.step), [None])
        if a.verb == "later" and a.step == "select..":  # after adaptive leave-one-out: the whole stage
            for step in ("select", "target", "pairs", "curate", "train", "outcome"):
                by_stage.setdefault(a.stage, {})[step] = [None]
        if a.verb == "later" and a.step == "pairs..":  # submitted by the continuation: estimated all the same
            for step in ("pairs", "curate", "train", "outcome"):
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
                n_variants = 1 + len(loo.units_to_evaluate(ctx)) - ctx.cfg.select.k
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
