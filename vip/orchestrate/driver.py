"""The stage driver: works out what a stage still needs and runs it, step by step, in this process
(the local executor, vip.orchestrate.local), in the order of vip.orchestrate.stepjobs.STEPS:

    loo -> select -> filter (once per run) -> target -> pairs -> curate -> train -> outcome

Each step is idempotent and checks its inputs, so calling the driver again after a crash
or preemption redoes only what is missing (a corrupt shard counts as missing).
"""
from __future__ import annotations

import time

from vip.config import Config
from vip.orchestrate.local import run_filter, run_loo, run_pairs, run_training, train_command  # noqa: F401
from vip.orchestrate.preflight import preflight as preflight_checks
from vip.orchestrate.stepjobs import STEPS
from vip.report.build import write_report
from vip.steps import loo, outcome, select
from vip.steps.context import StageContext
from vip.store import RunDir


def preflight(cfg: Config, run: RunDir, stage: int) -> StageContext:
    """Check everything a stage needs before anything is written (vip.orchestrate.preflight, the one
    preflight every entry point goes through), then freeze the config."""
    return preflight_checks(cfg, run, stage, "stage")


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
    skipped, ran = [], {}
    for s in STEPS.values():
        if s.local is None:  # done with the step before it (filter_merge with filter, curate with pairs)
            continue
        sctx = StageContext(ctx.run, ctx.cfg, 0) if s.per_run else ctx
        if s.done(sctx):
            skipped.append(s.local_name or s.name)
            continue
        start = time.monotonic()
        s.local(ctx)
        ran[s.local_name or s.name] = time.monotonic() - start
    if skipped:
        print(f"stage {ctx.stage}: {', '.join(skipped)} done already (skipped)", flush=True)
    if ran:  # where a stage's time went, for a user deciding what to cut (docs/benchmarks.md has the demo's)
        print(f"stage {ctx.stage} took {sum(ran.values()):.0f} s: "
              + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in ran.items()), flush=True)
    if ran or not (ctx.run.path / "report.html").is_file():
        write_report(ctx.run.path)  # report.html: one file a person can open or mail
    return outcome.load(ctx)
