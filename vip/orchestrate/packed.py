"""Packed mode: one allocation of R ranks works through a fanned-out step's tasks, for clusters that
cap the jobs per user or the array size. Same tasks, same shards, same completion markers as the
array run, so the merged results are the same bit for bit.

    tasks = [0, 1, ..., n-1]          (or the tasks that were missing when the job was submitted)
    rank r of R runs tasks[k] for every k with k % R == r, skipping those whose marker exists

The share depends only on (tasks, rank, R), so every rank computes it alone: no communication,
and a rank that starts late or a requeued job (same tasks, same R) takes exactly the same share.
A requeued or resubmitted job skips finished tasks (their markers), and a leave-one-out task skips
the variants it finished before (its per-variant partial files).

Ranks come from vip.train.dist.discover: srun (SLURM_PROCID / SLURM_NTASKS), mpirun (mpi4py),
torchrun. No Slurm and no submitit here; the Slurm executor (slurm.submit_packed) and
`jobs/step.py <step> --packed` (sbatch/packed.sbatch) both call run_rank.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence

from vip.orchestrate.stepjobs import ARRAY_STEPS, ArrayStep
from vip.steps.context import StageContext


def share(tasks: Sequence[int], rank: int, world: int) -> list[int]:
    """The tasks of one rank: every world-th task of the list, starting at position rank."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in 0..{world - 1}")
    return list(tasks[rank::world])


def rank_of(tasks: Sequence[int], task: int, world: int) -> int:
    """Which rank runs `task` (the inverse of share)."""
    return list(tasks).index(task) % world


def all_tasks(ctx: StageContext, step: str, spec: ArrayStep | None = None) -> list[int]:
    """Every task of the step's plan (writing the plan if it is missing: it is deterministic, so
    ranks that plan at the same time write the same file)."""
    spec = spec or ARRAY_STEPS[step]
    if spec.count is None:
        raise ValueError(f"step {step!r} has no task count; packed mode needs one")
    return list(range(spec.count(ctx)))


def run_rank(ctx: StageContext, step: str, rank: int, world: int, tasks: Sequence[int] | None = None,
             spec: ArrayStep | None = None, log=print) -> list[dict]:
    """Run this rank's share of the step's tasks; returns one record per task of the share:
    {task, rank, world, host, skipped, start, end}."""
    spec = spec or ARRAY_STEPS[step]
    tasks = all_tasks(ctx, step, spec) if tasks is None else list(tasks)
    mine = share(tasks, rank, world)
    host = os.environ.get("SLURMD_NODENAME") or socket.gethostname()
    where = f"stage {ctx.stage} {step}" if ctx.stage else step
    log(f"{where}: rank {rank} of {world} on {host}: tasks {mine} of {len(tasks)}", flush=True)
    records = []
    for i in mine:
        t0 = time.time()
        skipped = bool(spec.done(ctx, i))
        if not skipped:
            spec.run(ctx, i)
        records.append({"task": i, "rank": rank, "world": world, "host": host, "skipped": skipped,
                        "start": t0, "end": time.time()})
        log(f"{where}: task {i} {'already done' if skipped else 'done'} (rank {rank}, "
            f"{records[-1]['end'] - t0:.1f} s)", flush=True)
    return records


def use_own_gpu(local_rank: int) -> None:
    """Ranks of one node that all see every GPU of the allocation take one each ("cuda" then means it);
    with --gpus-per-task Slurm usually shows each rank only its own, and this changes nothing."""
    import torch

    if torch.cuda.is_available() and torch.cuda.device_count() > 1:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
