"""Following a run on Slurm from its files and its job ledgers: `jobs/stage.py --wait` (a progress bar
per step, fed from shard completion markers and done files) and the job columns of `--status`.

A job counts as failed when its latest submission for a task ended in any state but COMPLETED and
the task's work is still missing (a task redone by a later submission is not a failure any more).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from vip.config import Config
from vip.orchestrate import slurm
from vip.orchestrate.ledger import Ledger, latest_elements, log_path, task_ranges
from vip.orchestrate.stepjobs import ROWS, STEPS
from vip.steps import loo, outcome, pairs
from vip.steps.context import StageContext
from vip.store import RunDir
from vip.train import redpo_trainer
from vip.train.metrics import read_metrics

RUN_STEPS = tuple(s for s, spec in STEPS.items() if spec.per_run)  # in <run>/jobs.json
FAILED = slurm.TERMINAL - {"COMPLETED", "UNKNOWN"}  # UNKNOWN: purged from queue and accounting, long over
BAR = "{desc}: {n_fmt:>3}/{total_fmt:<3} |{bar}| {elapsed}{postfix}"
CONTINUATIONS = {"continue": "plans pairs and submits the rest of the stage once target.json exists",
                 "next": "submits the next stage once this one's outcome exists"}
# After a failure shows, the report waits this long for jobs still being stopped (COMPLETING: a cancel's
# SIGTERM, KillWait before the SIGKILL) so that it names them too: a scancel of a whole run ends the
# pending jobs at once but the running ones only after KillWait.
SETTLE_S = 120
STOPPING = {"COMPLETING", "STOPPED", "SIGNALING"}


@dataclass(frozen=True)
class Element:
    stage: int  # 0 = run-wide
    step: str
    task: int | None
    element: str  # the Slurm job element id, e.g. 41_3
    entry: dict  # its ledger entry

    @property
    def where(self) -> str:
        return f"stage {self.stage}" if self.stage else "run"

    def label(self) -> str:
        return f"{self.where} {self.step}" + (f" task {self.task}" if self.task is not None else "")


def latest(run: RunDir, stages) -> list[Element]:
    """The latest submission of every task of every step, run-wide steps first."""
    run_ledger = Ledger(run.path)
    out = [Element(0, s, t, e, entry) for s in RUN_STEPS for t, (e, entry) in latest_elements(run_ledger, s).items()]
    for n in stages:
        ledger = Ledger(run.stage(n))
        for step in ledger.steps():
            out += [Element(n, step, t, e, entry) for t, (e, entry) in latest_elements(ledger, step).items()]
    return out


def work_done(run: RunDir, cfg: Config, el: Element) -> bool:
    """Whether the work of one job element is done, from files only."""
    ctx = StageContext(run, cfg, el.stage)
    step = el.step
    if step in STEPS:
        return STEPS[step].task_done(ctx, el.task)
    if step.startswith("loo_round"):  # adaptive: the next round is planned, or selection was submitted
        rounds = (loo.read_plan(ctx.dir) or {}).get("adaptive", {}).get("rounds", [])
        return loo.is_done(ctx) or len(rounds) > int(step.removeprefix("loo_round")) \
            or bool(Ledger(ctx.dir).entries("select"))
    if step == "continue":
        return pairs.is_done(ctx) or bool(Ledger(ctx.dir).entries("pairs"))
    if step == "next":
        return bool(Ledger(run.stage(el.stage + 1)).steps()) or outcome.is_done(StageContext(run, cfg, el.stage + 1))
    return True  # a step this driver does not know: not its business


def failed(state: str) -> bool:
    """Ended, but not COMPLETED; UNKNOWN = in neither the queue nor accounting: an array task cancelled
    before the array started (Slurm keeps no record of it), or purged long ago."""
    return state in FAILED or state == "UNKNOWN"


def failures(run: RunDir, cfg: Config, elements: list[Element], states: dict[str, str]) -> list[str]:
    out = []
    for el in elements:
        state = states.get(el.element, "UNKNOWN")
        if failed(state) and not work_done(run, cfg, el):
            err = log_path(el.entry, el.element, failed=True, task=el.task)
            last = _last_error(err)
            word = state if state != "UNKNOWN" else "gone from the queue and accounting (cancelled before it started?)"
            out.append(f"{el.label()}: job {el.element} {word}" + (f": {last}" if last else "")
                       + f"\n  log: {err}" + ("" if err.is_file() else " (not written: the job never started)"))
    return out


def being_stopped(run: RunDir, cfg: Config, elements: list[Element], states: dict[str, str]) -> list[str]:
    """The elements still being stopped (COMPLETING after a cancel or a crash) whose work is not done."""
    return [f"{el.label()}: job {el.element} {states[el.element]} (being stopped)\n"
            f"  log: {log_path(el.entry, el.element, failed=True, task=el.task)}"
            for el in elements if states.get(el.element) in STOPPING and not work_done(run, cfg, el)]


def _last_error(path: Path) -> str:
    """The step's own one-line error if the log has one, else its last line."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error: ")]
    return (errors or lines or [""])[-1][:300]


def _summary(states: list[str]) -> str:
    running = sum(s in ("RUNNING", "COMPLETING") for s in states)
    pending = sum(slurm.is_active(s) for s in states) - running
    return ", ".join(x for x in (f"{running} running" if running else "", f"{pending} pending" if pending else "") if x)


def progress_rows(run: RunDir, cfg: Config, n: int, elements: list[Element], states: dict[str, str]):
    """(key, description, done, total, postfix) per step of stage n, from files (and job states)."""
    ctx = StageContext(run, cfg, n)
    jobs: dict[str, dict[str, str]] = {}  # step -> job element -> state (a packed job once, not per task)
    for el in elements:
        if el.stage in (0, n):
            jobs.setdefault(("filter" if el.stage == 0 else el.step), {})[el.element] = states.get(el.element, "UNKNOWN")

    rows = []
    for name, spec in sorted(STEPS.items(), key=lambda kv: not kv[1].per_run):  # the run's steps first
        if spec.row and spec.row != name:
            continue  # shown in its row's (filter_merge: filter)
        sctx = StageContext(run, cfg, 0) if spec.per_run else ctx
        done = spec.done(sctx)
        if spec.is_array:
            planned = spec.read_plan(sctx)
            total = len(planned["tasks"]) if planned else (1 if done else None)
            rows.append((name, total if done else total - len(spec.todo(sctx)) if planned else 0, total))
        elif name == "train":
            steps = len(read_metrics(redpo_trainer.train_dir(run, n)))
            rows.append((name, int(done), 1, f"{steps} steps" if steps and not done else ""))
        else:
            rows.append((name, int(done), 1))
    out = []
    for key, done, total, *extra in rows:
        post = ", ".join(x for x in (*extra, _summary(list(jobs.get(key, {}).values()))) if x)
        out.append((key, f"stage {n} {key}" if not STEPS[key].per_run else f"run {key}", done, total, post))
    return out


class Bars:
    """One tqdm bar per step of the stage being followed; plain lines on change when bars are off."""

    def __init__(self, enabled: bool, stream=sys.stderr):
        self.enabled, self.stream = enabled, stream
        self.bars: dict[str, tqdm] = {}
        self.last: dict[str, tuple] = {}
        self.stage: int | None = None

    def show(self, stage: int, rows) -> None:
        if stage != self.stage:
            self.close()
            self.stage = stage
        for key, desc, done, total, post in rows:
            if not self.enabled:
                if self.last.get(key) != (done, total, post):
                    self.last[key] = (done, total, post)
                    print(f"{desc}: {done}/{total if total is not None else '?'}" + (f" ({post})" if post else ""),
                          file=self.stream, flush=True)
                continue
            bar = self.bars.get(key)
            if bar is None:
                bar = self.bars[key] = tqdm(total=total, desc=f"{desc:<16}", position=len(self.bars), leave=True,
                                            dynamic_ncols=True, file=self.stream, bar_format=BAR)
            if bar.total != total:
                bar.total = total
            bar.n = done
            bar.set_postfix_str(post, refresh=False)
            bar.refresh()

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars, self.last = {}, {}


def wait_stages(run: RunDir, cfg: Config, first: int, last: int, poll: float = 3.0, progress: bool = True,
                stream=sys.stderr) -> int:
    """Follow stages first..last until every outcome exists (0) or a job failed (1: which, and its log)."""
    bars = Bars(progress, stream)
    idle = 0
    settle: float | None = None  # when the report stops waiting for jobs being stopped
    try:
        while True:
            current = next((n for n in range(first, last + 1) if not outcome.is_done(StageContext(run, cfg, n))), None)
            elements = latest(run, range(first, last + 1))
            if current is None:
                if bars.stage is not None:
                    bars.show(bars.stage, progress_rows(run, cfg, bars.stage, elements, {}))
                return 0
            try:
                states = slurm.job_states([el.element for el in elements])
            except slurm.SlurmError as e:  # a slow controller: try again at the next poll
                print(f"warning: {e}", file=stream, flush=True)
                time.sleep(poll)
                continue
            bars.show(current, progress_rows(run, cfg, current, elements, states))
            failed = failures(run, cfg, elements, states)
            stopping = being_stopped(run, cfg, elements, states) if failed else []
            if stopping:  # a cancel under way: name the jobs it stops too, once they have ended
                settle = settle if settle is not None else time.monotonic() + SETTLE_S
                if time.monotonic() < settle:
                    time.sleep(poll)
                    continue
                failed = stopping + failed
            if failed:
                bars.close()
                print("a job failed:\n" + "\n".join(failed) + "\nfix the cause, then run the same command again: "
                      "it submits only what is missing", file=stream, flush=True)
                return 1
            idle = 0 if any(slurm.is_active(s) for s in states.values()) else idle + 1
            if idle >= 3:
                bars.close()
                print(f"stage {current} is not done and none of its jobs is queued; run the same command again "
                      "(without --wait to only submit)", file=stream, flush=True)
                return 1
            time.sleep(poll)
    finally:
        bars.close()


# ----------------------------------------------------------------------------- --status

def job_columns(run: RunDir, cfg: Config, stage: int, rows: list[tuple[str, str, str]]):
    """The status rows with two more columns, jobs and log, and the state taken from the queue where
    the files say not done (running / pending / failed); None when the stage has no ledger."""
    stage_ledger, run_ledger = Ledger(run.stage(stage)), Ledger(run.path)
    if not stage_ledger.steps():
        return None
    elements = latest(run, [stage])
    all_elements = {e for led in (stage_ledger, run_ledger) for s in led.steps() for e in led.elements(s)}
    try:
        states = slurm.job_states(all_elements)
    except slurm.SlurmError:
        states = {}
    out = []
    for step, state, detail in rows:
        steps = ROWS.get(step, ())
        mine = [el for el in elements if el.step in steps and el.stage in (0 if step == "filter" else stage,)]
        jobs, log = _jobs_and_log(run, steps, step, stage, mine, states)
        out.append((step, _state(run, cfg, state, mine, states), detail, jobs, log))
    rounds = sorted({int(el.step.removeprefix("loo_round")) for el in elements
                     if el.stage == stage and el.step.startswith("loo_round")})
    for step, what in [(f"loo_round{r}", f"plans adaptive leave-one-out round {r + 1} (or selection) once round "
                                         f"{r} is done") for r in rounds] + list(CONTINUATIONS.items()):
        mine = [el for el in elements if el.step == step and el.stage == stage]
        if mine:
            s = states.get(mine[-1].element, "?")
            state = "done" if s == "COMPLETED" else _state(run, cfg, "missing", mine, states)
            out.append((step, state, what, *_jobs_and_log(run, (step,), step, stage, mine, states)))
    return out


def _state(run: RunDir, cfg: Config, state: str, mine: list[Element], states: dict[str, str]) -> str:
    if state == "done" or not mine or not states:
        return state
    latest_states = [states.get(el.element, "UNKNOWN") for el in mine if not work_done(run, cfg, el)]
    if any(s in ("RUNNING", "COMPLETING") for s in latest_states):
        return "running"
    if any(slurm.is_active(s) for s in latest_states):
        return "pending"
    if any(failed(s) for s in latest_states):
        return "failed"
    return state


def _jobs_and_log(run: RunDir, steps, row: str, stage: int, mine: list[Element], states) -> tuple[str, str]:
    ledger = Ledger(run.path if row == "filter" else run.stage(stage))
    entries = [e for s in steps for e in ledger.entries(s)]
    texts = []
    for entry in entries[-2:]:
        elements = entry["elements"]
        got = [{"UNKNOWN": "gone"}.get(states.get(e, "?"), states.get(e, "?")) for e in elements]
        counts = {s: got.count(s) for s in dict.fromkeys(got)}
        summary = ", ".join(f"{c} {s}" for s, c in counts.items()) if len(got) > 1 else got[0]
        tasks = sorted(t for t in elements.values() if t is not None)
        name = entry["job_id"] + (f"[{task_ranges(tasks)}]" if entry.get("kind") == "array" else "")
        if entry.get("kind") == "packed":
            name = f"{entry['job_id']}[packed {task_ranges(entry['tasks'])} on {entry['ranks']} ranks]"
        texts.append(f"{name} {summary}")
    if len(entries) > 2:
        texts.insert(0, f"+{len(entries) - 2} earlier")
    log = ""
    if mine:
        el = mine[-1]
        path = log_path(el.entry, el.element, failed=failed(states.get(el.element, "?")), task=el.task)
        try:
            log = str(path.relative_to(run.path))
        except ValueError:
            log = str(path)
    return "; ".join(texts), log

