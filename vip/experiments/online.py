"""Table B: an arm trained at the source's stage S, then carried on online through later stages.

Stage S+1 prunes the arm's own trained student, makes its own pairs from it and trains with the
arm's loss, as jobs/stage.py would: the arm's directory is a run directory, and the stage driver
runs its later stages. Stages before S are the source's, which is fair only if no loss was
applied there (their training was skipped for too few pairs); otherwise start at an earlier stage.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

from vip.config import ConfigError
from vip.experiments.arms import ROOT, Arm, Experiment, _locked
from vip.store import IncompleteError
from vip.train.redpo_trainer import train_dir


def check_earlier_stages_untrained(exp: Experiment) -> None:
    for n in range(1, exp.stage):
        done = json.loads((train_dir(exp.source, n) / "done.json").read_text()) \
            if (train_dir(exp.source, n) / "done.json").is_file() else None
        if not done or not done.get("skipped"):
            raise ConfigError(f"stage {n} of {exp.source.path} trained its student with the source's own loss, so "
                              f"arms that start at stage {exp.stage} would share it; start at --stage {n}")


def run_online(exp: Experiment, arm: Arm, until: int, threads: int = 1) -> list[dict]:
    """Train the arm at stage S (or find it done), then every later stage up to `until`; outcome per stage.

    Later stages run as `jobs/stage.py` on the arm's run directory, in a process of their own: it
    reads the arm's frozen config with the code on disk now, as the trainer it launches will."""
    exp.run_arm(arm, threads=threads)
    run = exp.arm_run(arm)
    if until > exp.stage and not all((run.stage(n) / "outcome.json").is_file() for n in range(exp.stage + 1, until + 1)):
        with _locked(run.path):
            exp.refreeze(run, arm)
            cmd = [sys.executable, str(ROOT / "jobs" / "stage.py"), "--stage", str(exp.stage + 1), "--until", str(until),
                   "--config", str(run.path / "config.yaml"), "--run-dir", str(run.path),
                   f"runtime.threads={threads}", "runtime.progress=false"]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            with open(run.path / f"stages{exp.stage + 1}-{until}.log", "a") as log:
                code = subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
            if code != 0:
                raise IncompleteError(f"stages {exp.stage + 1}-{until} of {run.path} stopped (exit {code}); see "
                                      f"{log.name}; run the table command again to resume")
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
