"""Submit what a stage still needs to Slurm, chained with afterany dependencies (runtime.executor=slurm).

    submit_stage(ctx, until=M)      -> [Action]: what was submitted, found queued or done, per step

    loo array -> select -> target -> [continue] -> pairs array -> curate -> train -> outcome -> [next]
    filter array -> filter_merge                      (once per run: <run>/jobs.json)

The steps, their kinds and dependencies are vip.orchestrate.stepjobs.STEPS; the dry run is
vip.orchestrate.dryrun, the driver's lock vip.orchestrate.lock. Only missing work is submitted, and
never a task already pending or running (the slurm layer checks the ledger against squeue and sacct).
Each job checks its own inputs, so afterany is enough: a job whose inputs failed stops with one line
instead of running on bad data.

Pairs cannot be planned before target.json and the filtered prompt sets exist, so while they are
missing a small CPU job `continue` waits for them and re-enters this module on a node; it then
submits pairs .. outcome (adaptive leave-one-out: `loo_round<r>` plans the next round the same way).
With until > stage, `next` does the same for the next stage after the outcome. Continuations never
resubmit failed work: they stop, naming the step that did not finish, its job and its log; running
the same jobs/stage.py command again then submits only what is missing.

A job already queued for a later step is made to wait for anything this call (re)submits before it
(`scontrol update Dependency`), or, if it already started on inputs being redone, cancelled and
submitted again.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from vip.cli import fail_cleanly
from vip.orchestrate import driver, slurm
from vip.orchestrate.ledger import ledger_for, latest_elements, log_path, recorded_deps, task_ranges
from vip.orchestrate.lock import LOCK, clean_slurm_env, driver_lock, node_driver  # noqa: F401 - callers' names
from vip.orchestrate.stepjobs import ROWS, STEPS, step_job, train_job  # noqa: F401 - callers' names
from vip.steps import loo, outcome
from vip.steps.context import StageContext
from vip.store import IncompleteError, RunDir

CONTINUATIONS = {  # what each continuation job runs, for dry-run headers
    "loo_round": "continuation (loo.adaptive): once this leave-one-out round is done, plans the next round and "
                 "submits it, or after the last round submits select .. outcome",
    "continue": "continuation: once target.json and the prompt sets exist, plans pairs and submits pairs .. outcome",
    "next": "continuation: once this stage's outcome exists, submits the next stage (it re-enters the driver)",
}


def what(step: str) -> str:
    """What a job of `step` runs, in one line (loo_round3: one per round)."""
    return CONTINUATIONS["loo_round"] if step.startswith("loo_round") else \
        CONTINUATIONS[step] if step in CONTINUATIONS else STEPS[step].what


@dataclass
class Action:
    stage: int  # 0 = run-wide (prompt filter)
    step: str
    verb: str  # submitted | queued | done | rechained | resubmitted | would submit | later
    ids: list[str] = field(default_factory=list)
    detail: str = ""

    def line(self) -> str:
        where = f"stage {self.stage}" if self.stage else "run"
        ids = " " + ":".join(self.ids) if self.ids else ""
        return f"{where:<8} {self.step:<13} {self.verb}{ids}" + (f" ({self.detail})" if self.detail else "")


# ----------------------------------------------------------------------------- the continuations, on a node

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
        spec = STEPS.get(step)
        step_ctx = StageContext(ctx.run, ctx.cfg, 0) if spec is not None and spec.per_run else ctx
        if spec.done(step_ctx) if spec is not None else loo.is_done(ctx) or not loo.missing(ctx):  # loo_round
            continue
        ledger = ledger_for(step_ctx)
        last = [(e, entry) for s in ROWS.get(step, ("loo",)) for e, entry in latest_elements(ledger, s).values()]
        job = ""
        if last:
            element, entry = last[-1]
            state = slurm.job_states([element])[element]
            job = f" (job {element} {state}; log {log_path(entry, element, failed=True)})"
        raise IncompleteError(f"stage {ctx.stage} {step} did not finish{job}: not going on; fix the cause and run "
                              f"`python jobs/stage.py --stage {ctx.stage} --until {until} --executor slurm "
                              f"--run-dir {ctx.run.path}` again: it submits only what is missing")


# ----------------------------------------------------------------------------- submission

class Submitter:
    """Submits through the slurm layer and records what it did."""

    dry = False

    def __init__(self):
        self.actions: list[Action] = []
        self.later: dict[int, list[str]] = {}  # stage -> the steps left to its continuation

    def run_dir(self, run: RunDir) -> RunDir:
        return run

    def note(self, ctx: StageContext, step: str, verb: str, ids=(), detail: str = "") -> None:
        self.actions.append(Action(ctx.stage, step, verb, list(ids), detail))

    def array(self, ctx: StageContext, step: str) -> list[str]:
        """The step's missing tasks that are not queued (an array, or one packed job with slurm.packed);
        returns the ids a dependent waits for."""
        ledger = ledger_for(ctx)
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
        ledger = ledger_for(ctx)
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
        ledger = ledger_for(ctx)
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
            ctx = driver.preflight(ctx.cfg, sink.run_dir(ctx.run), ctx.stage + 1)
    return sink.actions


def _submit_one(ctx: StageContext, until: int, sink: Submitter) -> bool:
    """Submits what one stage still needs, walking STEPS; True when the stage is done already. A step
    that waits for one left to a continuation, or is planned from steps not done yet (pairs), or comes
    after an adaptive round still open (select), is left to a continuation job too."""
    n = ctx.stage
    if outcome.is_done(ctx):
        sink.note(ctx, "stage", "done", detail=f"{outcome.outcome_path(ctx)}")
        return True
    run_ctx = StageContext(ctx.run, ctx.cfg, 0)
    if not sink.dry and not loo.is_done(ctx):
        loo.advance(ctx)  # adaptive: the last round is done, so plan the next one
    wait: dict[str, list[str]] = {}
    later: list[str] = []
    rounds = None
    for s in STEPS.values():
        sctx = run_ctx if s.per_run else ctx
        if s.done(sctx):
            continue
        if any(a in later for a in s.after) or (s.planned_from_after and any(a in wait for a in s.after)):
            later.append(s.name)
            continue
        if "loo" in s.after and (rounds := adaptive_round_open(ctx)):  # the next round depends on this one's scores
            later.append(s.name)
            continue
        after = [i for a in s.after for i in wait.get(a, [])]
        wait[s.name] = sink.array(sctx, s.name) if s.is_array else sink.job(sctx, s.name, s.kind, after, s.job)
    if later:  # a continuation plans and submits them once what they wait for is done
        sink.later[n] = later
        first = STEPS[later[0]]
        after = [i for a in first.after for i in wait.get(a, [])]
        if rounds:
            r, total = rounds
            cont = sink.job(ctx, f"loo_round{r}", "cpu", after, functools.partial(continue_loo, until))
            sink.note(ctx, f"{first.name}..", "later", detail=f"adaptive leave-one-out round {r} of at most {total}: "
                      f"the next round, or after the last one select .. outcome, submitted by {cont[0]} once it is done")
        else:
            cont = sink.job(ctx, "continue", "cpu", after, functools.partial(continue_stage, until))
            sink.note(ctx, f"{first.name}..", "later", detail=f"{', '.join(later)}{', next' if until > n else ''}: "
                      f"submitted by {cont[0]} once target.json and the prompt sets exist")
        return False
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
