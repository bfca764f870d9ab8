"""The stage driver: works out what a stage still needs and runs it, step by step.

    loo -> select -> filter (once per run) -> target -> pairs -> curate -> train -> outcome

Each step is idempotent and checks its inputs, so calling the driver again after a crash
or preemption redoes only what is missing (a corrupt shard counts as missing).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from vip.cli import ERROR_FILE, read_reported
from vip.config import Config
from vip.orchestrate import local
from vip.orchestrate.preflight import preflight as preflight_checks
from vip.prompts.llm import make_backend
from vip.report.build import write_report
from vip.steps import filter as prompt_filter
from vip.steps import loo, outcome, pairs, select, target
from vip.steps.context import StageContext
from vip.store import IncompleteError, RunDir
from vip.train import redpo_trainer

ROOT = Path(__file__).resolve().parents[2]


def preflight(cfg: Config, run: RunDir, stage: int) -> StageContext:
    """Check everything a stage needs before anything is written (vip.orchestrate.preflight, the one
    preflight every entry point goes through), then freeze the config."""
    return preflight_checks(cfg, run, stage, "stage")


def run_loo(ctx: StageContext) -> None:
    """Every missing task; with loo.adaptive, round after round until the last one is done."""
    while True:
        planned = loo.plan(ctx)
        tasks, todo = planned["tasks"], loo.missing(ctx)
        for i in todo:  # a task whose shard is truncated or mismatched is redone from scratch
            loo.shards(ctx).discard(i)
        rounds = planned.get("adaptive", {}).get("rounds")
        if todo:
            local.run_tasks(todo, lambda i, advance: loo.run_task(ctx, i, advance),
                            total_units=sum(len(tasks[i]["variants"]) for i in todo),
                            desc=f"stage {ctx.stage} leave-one-out"
                                 + (f" round {len(rounds)}/{len(planned['adaptive']['ends'])}" if rounds else "")
                                 + f" ({len(todo)}/{len(tasks)} tasks)",
                            progress=ctx.cfg.runtime.progress)
        if not loo.advance(ctx):
            return


def run_filter(run: RunDir, cfg: Config) -> None:
    planned = prompt_filter.plan(run, cfg)
    todo = prompt_filter.missing(run, cfg)
    if todo:
        backend = make_backend(cfg.filter)
        local.run_tasks(todo, lambda i, advance: prompt_filter.run_task(run, cfg, i, backend, advance),
                        total_units=2 * sum(hi - lo for lo, hi in (planned["tasks"][i] for i in todo)),  # 2 instructions
                        desc=f"prompt filter ({len(todo)}/{len(planned['tasks'])} tasks)",
                        progress=cfg.runtime.progress)
    prompt_filter.merge(run, cfg)


def run_pairs(ctx: StageContext) -> None:
    planned = pairs.plan(ctx)
    todo = pairs.missing(ctx)
    local.run_tasks(todo, lambda i, advance: pairs.run_task(ctx, i, advance),
                    total_units=2 * sum(hi - lo for lo, hi in (planned["tasks"][i] for i in todo)),
                    desc=f"stage {ctx.stage} pairs ({len(todo)}/{len(planned['tasks'])} tasks)",
                    progress=ctx.cfg.runtime.progress)


def train_command(run: RunDir, cfg: Config, stage: int) -> list[str]:
    script = [str(ROOT / "jobs" / "train_redpo.py"), "--run-dir", str(run.path), "--stage", str(stage)]
    if not cfg.runtime.progress:
        script.append("--no-progress")
    if cfg.train.nprocs > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", str(cfg.train.nprocs), *script]
    return [sys.executable, *script]


def run_training(ctx: StageContext) -> None:
    """Training runs in its own process(es): DeepSpeed owns the process group and the signals there.
    A line the trainer refuses its input with (exit 2) is written to a file (VIP_ERROR_FILE) instead of
    its stderr and raised here, so it is the stage's one last line; under torchrun, what torchrun prints
    after a rank reported it (its ChildFailedError traceback) is left out."""
    env = dict(os.environ)
    if ctx.cfg.runtime.threads:
        env["OMP_NUM_THREADS"] = str(ctx.cfg.runtime.threads)
    with tempfile.TemporaryDirectory(prefix="vip-train-") as tmp:
        error_file = Path(tmp) / "error"
        env[ERROR_FILE] = str(error_file)
        command = train_command(ctx.run, ctx.cfg, ctx.stage)
        code = _run_until_reported(command, env, error_file) if ctx.cfg.train.nprocs > 1 \
            else subprocess.run(command, env=env).returncode
        reported = read_reported(error_file)
    if code in (redpo_trainer.EXIT_REQUEUE, redpo_trainer.EXIT_STOPPED):
        raise IncompleteError(f"stage {ctx.stage} training stopped on a signal after saving a checkpoint; "
                              "run the same command again to resume")
    if code != 0 and reported:
        raise IncompleteError(f"stage {ctx.stage} training: {reported}")
    if code != 0:
        raise IncompleteError(f"stage {ctx.stage} training failed (exit {code}); see the output above")


def _run_until_reported(command: list[str], env: dict, error_file: Path) -> int:
    """Run `command` (torchrun), passing its stderr through until a rank has reported its one line."""
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)

    def pump() -> None:
        for chunk in iter(lambda: proc.stderr.read1(1 << 16), b""):
            if not error_file.exists():
                sys.stderr.buffer.write(chunk)
                sys.stderr.buffer.flush()

    sys.stderr.flush()
    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    try:
        code = proc.wait()
    except BaseException:  # as subprocess.run: a KeyboardInterrupt stops the launcher too
        proc.kill()
        proc.wait()
        raise
    finally:
        thread.join(timeout=10)
        proc.stderr.close()
    return code


def run_selection(ctx: StageContext) -> dict:
    """Leave-one-out evaluation and unit selection; returns selection.json's record."""
    if not loo.is_done(ctx):
        run_loo(ctx)
        loo.merge(ctx)
    if not select.is_done(ctx):
        select.run(ctx)
    return select.load(ctx)


def run_stage(ctx: StageContext) -> dict:
    """Every step of one stage that is not done yet; returns the stage's outcome. The steps found
    done are named in one line; when every step was, nothing in the run directory is written."""
    cfg, run = ctx.cfg, ctx.run
    skipped, ran = [], []

    def step(name: str, done: bool, work) -> None:
        (skipped if done else ran).append(name)
        if not done:
            work()

    step("loo", loo.is_done(ctx), lambda: (run_loo(ctx), loo.merge(ctx)))
    step("select", select.is_done(ctx), lambda: select.run(ctx))
    step("filter", prompt_filter.is_done(run, cfg), lambda: run_filter(run, cfg))
    step("target", target.is_done(ctx), lambda: target.run(ctx))
    step("pairs+curate", pairs.is_done(ctx),
         lambda: (run_pairs(ctx) if pairs.missing(ctx) else None, pairs.curate(ctx)))
    step("train", redpo_trainer.is_done(run, ctx.stage, cfg), lambda: run_training(ctx))
    step("outcome", outcome.is_done(ctx), lambda: outcome.run(ctx))
    if skipped:
        print(f"stage {ctx.stage}: {', '.join(skipped)} done already (skipped)", flush=True)
    if ran or not (run.path / "report.html").is_file():
        write_report(run.path)  # report.html: one file a person can open or mail
    return outcome.load(ctx)
