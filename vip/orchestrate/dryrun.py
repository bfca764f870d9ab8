"""The dry run: what `jobs/stage.py --executor slurm` would submit now, as the job scripts submitit would
write, with placeholders for job ids not known yet, and what it would cost (vip.orchestrate.cost).
Nothing is submitted or written: the run directory is only read (ReadOnlyRun).

    dry_run(cfg, run, N, M) -> the job scripts, a summary and the cost estimate
"""
from __future__ import annotations

from pathlib import Path

from vip.config import Config
from vip.orchestrate import driver, slurm
from vip.orchestrate.cost import cost_lines
from vip.orchestrate.ledger import id_key, ledger_for, task_ranges
from vip.orchestrate.stepjobs import STEPS
from vip.orchestrate.submit import Submitter, submit_stage, what
from vip.steps.context import StageContext
from vip.store import RunDir


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

    def run_dir(self, run: RunDir) -> RunDir:
        return ReadOnlyRun(run.path)

    def array(self, ctx: StageContext, step: str) -> list[str]:
        queued = self._queued(ctx, step)
        tasks = [t for t in STEPS[step].todo(ctx) if t not in queued]
        wait = sorted({e.split("_")[0] for e in queued.values()}, key=id_key)
        if not tasks:
            self.note(ctx, step, "queued" if wait else "done", wait)
            return wait
        if ctx.cfg.slurm.packed:
            name = self._name(ctx, step)
            ranks = slurm.packed_ranks(ctx.cfg.slurm, len(tasks))
            kind = "cpu_packed" if STEPS[step].kind == "cpu_array" else "packed"
            header = (f"{name}: packed job of {ranks} rank(s) for {len(tasks)} tasks ({task_ranges(tasks)}; rank r "
                      f"runs the r-th task of that list, then every {ranks} further); runs {what(step)}")
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
            header = f"{name}: array of {len(chunk)} tasks ({task_ranges(chunk)}){part}; runs {what(step)}"
            self.scripts.append(_script(ctx, step, "array", after, header, len(chunk)))
            names.append(name)
        self.note(ctx, step, "would submit", names, f"array, tasks {task_ranges(tasks)}")
        self.todo[(ctx.stage, step)] = tasks
        return wait + names

    def job(self, ctx: StageContext, step: str, kind: str, after: list[str], fn=None) -> list[str]:
        queued = self._queued(ctx, step)
        if queued:
            ids = sorted(queued.values(), key=id_key)[:1]
            self.note(ctx, step, "queued", ids)
            return ids
        name = self._name(ctx, step)
        self.scripts.append(_script(ctx, step, kind, after, f"{name}: {kind} job; runs {what(step)}"))
        self.note(ctx, step, "would submit", [name], f"after {':'.join(after)}" if after else "")
        return [name]

    @staticmethod
    def _queued(ctx: StageContext, step: str) -> dict:
        ledger = ledger_for(ctx)
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
