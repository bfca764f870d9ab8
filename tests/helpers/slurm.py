"""Shared by the tests/integration/test_slurm_*.py tests (a real cluster: scripts/slurm/start_cluster.sh)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle

from vip import config
from vip.steps.context import StageContext
from vip.store import RunDir

# Step functions defined in test modules run on the nodes: pickle them by value, not by a module
# name that the node's python could not import.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Small, quick jobs: one CPU each, one fake GPU per array task, short limits.
SLURM = ["runtime.executor=slurm", "slurm.partition=gpu", "slurm.cpu_partition=cpu", "slurm.time=15",
         "slurm.cpu_time=15", "slurm.cpus_per_task=1", "slurm.array_gpus=1", "runtime.progress=false",
         "runtime.threads=1"]


def make_ctx(run_dir: Path, overrides=(), stage: int = 1) -> StageContext:
    cfg = config.load(None, [*SLURM, *overrides])
    run = RunDir(run_dir)
    run.freeze(cfg)
    return StageContext(run, cfg, stage)


def wait_for(predicate, timeout: float = 60, what: str = "condition", poll: float = 0.3):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def sh(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60).stdout.strip()


def held_job() -> str:
    """A job held in the queue, for steps to depend on (release it with `scontrol release`)."""
    return sh("sbatch", "--parsable", "--hold", "-p", "cpu", "-o", "/dev/null", "--wrap", "true").split(";")[0]


def restart_count() -> int:
    return int(os.environ.get("SLURM_RESTART_COUNT") or 0)


def cancel_jobs_named(prefix: str) -> None:
    """scancel every queued job whose name starts with prefix (a test's own jobs)."""
    ids = [ln.rsplit("|", 1)[1] for ln in sh("squeue", "-h", "-r", "--me", "-o", "%j|%i").splitlines()
           if ln.startswith(prefix)]
    if ids:
        subprocess.run(["scancel", *ids], timeout=60)
