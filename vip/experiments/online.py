"""Table B: an arm trained at the source's stage S, then carried on online through later stages.

Stage S+1 prunes the arm's own trained student, makes its own pairs from it and trains with the
arm's loss, as jobs/stage.py would: the arm's directory is a run directory, and the stage driver
runs its later stages. Stages before S are the source's, which is fair only if no loss was
applied there (their training was skipped for too few pairs); otherwise start at an earlier stage.
"""
from __future__ import annotations

import json

from vip.config import ConfigError
from vip.experiments.arms import Arm, Experiment, _locked
from vip.steps import outcome
from vip.steps.context import StageContext
from vip.train.redpo_trainer import train_dir


def check_earlier_stages_untrained(exp: Experiment) -> None:
    for n in range(1, exp.stage):
        done = json.loads((train_dir(exp.source, n) / "done.json").read_text()) \
            if (train_dir(exp.source, n) / "done.json").is_file() else None
        if not done or not done.get("skipped"):
            raise ConfigError(f"stage {n} of {exp.source.path} trained its student with the source's own loss, so "
                              f"arms that start at stage {exp.stage} would share it; start at --stage {n}")


def run_online(exp: Experiment, arm: Arm, until: int, threads: int = 1) -> list[dict]:
    """Train the arm at stage S (or find it done), then every later stage up to `until`; outcome per stage."""
    from vip.orchestrate import driver

    exp.run_arm(arm, threads=threads)
    run, cfg = exp.arm_run(arm), exp.arm_config(arm, threads)
    with _locked(run.path):
        if until > exp.stage:
            exp.refreeze(run, cfg)
        for n in range(exp.stage + 1, until + 1):
            ctx = StageContext(run, cfg, n)
            if not outcome.is_done(ctx):
                driver.run_stage(driver.preflight(cfg, run, n))
    return stage_outcomes(exp, arm, until)


def stage_outcomes(exp: Experiment, arm: Arm, until: int) -> list[dict]:
    """Outcome records of stages 1..until as this arm sees them (earlier stages: the source's)."""
    out = []
    for n in range(1, until + 1):
        run = exp.source if n < exp.stage else exp.arm_run(arm)
        path = run.stage(n) / "outcome.json"
        if not path.is_file():
            raise ConfigError(f"{path} is missing; run the table command again to finish it")
        out.append(json.loads(path.read_text()))
    return out
