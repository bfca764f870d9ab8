"""The driver's lock: one driver submits for a run at a time (driver.lock in the run directory), and a
continuation job submits from inside its job without that job's SLURM_* variables."""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from vip.orchestrate.slurm import SlurmError
from vip.store import RunDir, atomic_write_json

LOCK = "driver.lock"
NODE_LOCK_TIMEOUT = 600  # a continuation job waits this long for a driver that is submitting right now
CONTINUATION_GRACE = 60  # a person's driver waits this long for a continuation job that is submitting


class DriverBusyError(SlurmError):
    """Another driver holds the run's lock (one line)."""


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
