"""The local executor: a step's missing tasks one after another in this process, and training in its
own process(es) (DeepSpeed owns the process group and the signals there)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from vip.cli import ERROR_FILE, read_reported
from vip.config import Config
from vip.orchestrate.status import selection_table
from vip.prompts.llm import make_backend
from vip.steps import filter as prompt_filter
from vip.steps import loo, pairs, select
from vip.steps.context import StageContext
from vip.store import IncompleteError, RunDir
from vip.train import redpo_trainer

ROOT = Path(__file__).resolve().parents[2]


def run_tasks(indices: list[int], run_one: Callable[[int, Callable[[int], None]], None], total_units: int,
              desc: str, progress: bool = True) -> None:
    """run_one(index, advance) runs one task and calls advance(n) as it goes."""
    with tqdm(total=total_units, desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        for i in indices:
            run_one(i, bar.update)


def run_loo(ctx: StageContext) -> None:
    """Every missing task; with loo.adaptive, round after round until the last one is done."""
    while True:
        planned = loo.plan(ctx)
        tasks, todo = planned["tasks"], loo.missing(ctx)
        for i in todo:  # a task whose shard is truncated or mismatched is redone from scratch
            loo.shards(ctx).discard(i)
        rounds = planned.get("adaptive", {}).get("rounds")
        if todo:
            run_tasks(todo, lambda i, advance: loo.run_task(ctx, i, advance),
                            total_units=sum(len(tasks[i]["variants"]) for i in todo),
                            desc=f"stage {ctx.stage} leave-one-out"
                                 + (f" round {len(rounds)}/{len(planned['adaptive']['ends'])}" if rounds else "")
                                 + f" ({len(todo)}/{len(tasks)} tasks)",
                            progress=ctx.cfg.runtime.progress)
        if not loo.advance(ctx):
            return


def run_select(ctx: StageContext) -> None:
    """Select the units and print the leave-one-out table once, when the choice is made (the run's last screen
    is the outcome; the report keeps the table)."""
    select.run(ctx)
    print(f"\nstage {ctx.stage}: leave-one-out and selection\n{selection_table(select.load(ctx))}\n", flush=True)


def run_filter(run: RunDir, cfg: Config) -> None:
    planned = prompt_filter.plan(run, cfg)
    todo = prompt_filter.missing(run, cfg)
    if todo:
        backend = make_backend(cfg.filter)
        run_tasks(todo, lambda i, advance: prompt_filter.run_task(run, cfg, i, backend, advance),
                        total_units=2 * sum(hi - lo for lo, hi in (planned["tasks"][i] for i in todo)),  # 2 instructions
                        desc=f"prompt filter ({len(todo)}/{len(planned['tasks'])} tasks)",
                        progress=cfg.runtime.progress)
    prompt_filter.merge(run, cfg)


def run_pairs(ctx: StageContext) -> None:
    planned = pairs.plan(ctx)
    todo = pairs.missing(ctx)
    run_tasks(todo, lambda i, advance: pairs.run_task(ctx, i, advance),
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
