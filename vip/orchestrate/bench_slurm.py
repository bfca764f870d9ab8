"""Benchmark of the Slurm orchestration on a real cluster (not a test): `python -m vip.orchestrate.bench_slurm`.

(a) dependency latency: the leave-one-out array, then `select` chained after it (afterany); the time from
    the End of the last array task to the Start of the select job, from sacct.
(b) re-run cost: a fresh leave-one-out array; half its tasks are cancelled while they run; submitting the
    step again must resubmit exactly those tasks. Reports the tasks and clips recomputed and the time.
(c) with --packed R: the same leave-one-out step as an array and as one packed job of R ranks (two fresh
    runs, one after the other): wall time from submission to the last task's end, device-seconds
    (sacct elapsed x ranks), and whether the merged scores are equal bit for bit.

A tiny toyvid config (4 units, select.k=1, 4 sampler steps, 6 prompts; tasks of 2 variants x 3 prompts:
6 tasks, 30 clips), one CPU and one (fake) GPU per task. Prints the figures and a JSON line.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import socket
import tempfile
import time
from datetime import datetime
from pathlib import Path

from vip import config
from vip.orchestrate import driver, slurm, submit
from vip.steps import loo
from vip.store import RunDir

UNITS = "down_blocks.0.motion_modules.0,down_blocks.1.motion_modules.1,up_blocks.2.motion_modules.0,mid_block.motion_modules.0"
OVERRIDES = ["model.steps=4", "prompts.eval_count=6", "select.k=1", "loo.batch_size=6", f"loo.units={UNITS}",
             "loo.units_per_task=2", "loo.prompts_per_task=3", "runtime.executor=slurm", "slurm.partition=gpu",
             "slurm.cpu_partition=cpu", "slurm.time=15", "slurm.cpu_time=15", "slurm.cpus_per_task=1",
             "slurm.array_gpus=1", "runtime.progress=false", "runtime.threads=1"]


def _sacct_times(job_ids: list[str]) -> dict[str, tuple[str, str, str]]:
    """Element -> (State, Start, End) from sacct."""
    text = slurm._run(["sacct", "-n", "-X", "-P", "-j", ",".join(sorted({j.split("_")[0] for j in job_ids})),
                       "-o", "JobID,State,Start,End"])
    out = {}
    for line in text.splitlines():
        jid, state, start, end = line.strip().split("|")
        out[jid] = (state.split(" ")[0], start, end)
    return out


def _t(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp)


def _ctx(root: Path, name: str, extra=()):
    cfg = config.load(None, [*OVERRIDES, f"run.name={name}", *extra])
    return driver.preflight(cfg, RunDir(root / name), 1)


def latency(root: Path, tag: str) -> dict:
    ctx = _ctx(root, f"benchslurm{tag}a")
    arrays = slurm.submit_array(ctx, "loo")
    sel = slurm.submit_job(ctx, "select", functools.partial(submit.step_job, "select"), kind="cpu",
                           depends_on=arrays)
    slurm.wait([*arrays, sel], timeout=600, poll=1.0)
    time.sleep(2)  # let accounting record the last End
    elements = list(slurm.ledger_for(ctx).elements("loo"))
    acct = _sacct_times([*elements, sel])
    last_end = max(_t(acct[e][2]) for e in elements)
    first_start = min(_t(acct[e][1]) for e in elements)
    start = _t(acct[sel][1])
    return {"loo_tasks": len(elements), "loo_states": sorted({acct[e][0] for e in elements}),
            "select_state": acct[sel][0], "loo_wall_s": (last_end - first_start).total_seconds(),
            "select_after_last_loo_end_s": (start - last_end).total_seconds(),
            "select_elapsed_s": (_t(acct[sel][2]) - start).total_seconds()}


def rerun(root: Path, tag: str) -> dict:
    ctx = _ctx(root, f"benchslurm{tag}b")
    ledger = slurm.ledger_for(ctx)
    planned = loo.plan(ctx)
    clips = [len(t["variants"]) * (t["samples"][1] - t["samples"][0]) for t in planned["tasks"]]
    t0 = time.monotonic()
    arrays = slurm.submit_array(ctx, "loo")  # MaxArraySize may split it
    by_task = {t: e for e, t in ledger.elements("loo").items()}
    kill = sorted(by_task)[::2]  # every other task: half of them
    pending = set(kill)
    while pending:  # cancel each as soon as it runs (killed mid-work, not before it starts)
        states = slurm.job_states([by_task[t] for t in pending])
        for t in sorted(pending):
            if states[by_task[t]] == "RUNNING" or not slurm.is_active(states[by_task[t]]):
                slurm._run(["scancel", by_task[t]])
                pending.discard(t)
        time.sleep(0.2)
    slurm.wait(arrays, timeout=600, poll=1.0)
    first_s = time.monotonic() - t0
    missing = loo.missing(ctx)
    kept = {t: loo.shards(ctx).shard(t).stat().st_mtime_ns for t in by_task if t not in missing}
    t1 = time.monotonic()
    again = slurm.submit_array(ctx, "loo")
    resubmitted = sorted(t for e in ledger.entries("loo") if e["job_id"] in again for t in e["elements"].values())
    slurm.wait(again, timeout=600, poll=1.0)
    rerun_s = time.monotonic() - t1
    untouched = all(loo.shards(ctx).shard(t).stat().st_mtime_ns == m for t, m in kept.items())
    return {"loo_tasks": len(by_task), "loo_clips": sum(clips), "killed": kill, "missing_after_kill": missing,
            "resubmitted": resubmitted, "resubmitted_tasks": len(resubmitted),
            "clips_recomputed": sum(clips[t] for t in resubmitted), "exactly_the_killed_half": resubmitted == kill,
            "other_shards_untouched": untouched, "still_missing": loo.missing(ctx),
            "first_array_wall_s": first_s, "rerun_wall_s": rerun_s}


def packed_vs_array(root: Path, tag: str, ranks: int) -> dict:
    import numpy as np

    from vip.store import read_h5

    out: dict = {}
    merged = {}
    for mode in ("array", "packed"):
        ctx = _ctx(root, f"benchslurm{tag}c{mode}", [f"slurm.packed_ranks={ranks}"])
        t0 = time.monotonic()
        ids = (slurm.submit_packed if mode == "packed" else slurm.submit_array)(ctx, "loo")
        slurm.wait(ids, timeout=900, poll=0.5)
        wall = time.monotonic() - t0
        time.sleep(2)  # let accounting record the last End
        elements = list(slurm.ledger_for(ctx).elements("loo"))
        acct = _sacct_times(elements)
        device_s = sum((_t(acct[e][2]) - _t(acct[e][1])).total_seconds() for e in elements) * (
            ranks if mode == "packed" else 1)
        out[mode] = {"jobs": len(elements), "states": sorted({acct[e][0] for e in elements}),
                     "wall_s": round(wall, 1), "device_s": device_s,
                     "first_start_to_last_end_s": (max(_t(acct[e][2]) for e in elements)
                                                   - min(_t(acct[e][1]) for e in elements)).total_seconds()}
        merged[mode] = read_h5(loo.merge(ctx))[0]
    out["tasks"] = len(loo.plan(ctx)["tasks"])
    out["ranks"] = ranks
    out["equal_bit_for_bit"] = bool(np.array_equal(merged["array"]["scores"], merged["packed"]["scores"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keep", action="store_true", help="keep the run directories (printed)")
    ap.add_argument("--packed", type=int, metavar="R", help="only (c): the array against one packed job of R ranks")
    args = ap.parse_args()
    slurm.check_client()
    root = Path(tempfile.mkdtemp(prefix="bench_slurm_"))
    tag = str(os.getpid())
    try:
        t0 = time.monotonic()
        if args.packed:
            c = packed_vs_array(root, tag, args.packed)
            print(f"(c) {c['tasks']} leave-one-out tasks: array {c['array']['wall_s']:.0f} s wall "
                  f"({c['array']['jobs']} jobs, {c['array']['device_s']:.0f} device-s), packed on {c['ranks']} ranks "
                  f"{c['packed']['wall_s']:.0f} s wall (1 job, {c['packed']['device_s']:.0f} device-s); merged scores "
                  f"equal bit for bit: {c['equal_bit_for_bit']}", flush=True)
            print(json.dumps({"host": socket.gethostname(), "total_s": round(time.monotonic() - t0, 1), "packed": c}))
            return
        a = latency(root, tag)
        print(f"(a) select started {a['select_after_last_loo_end_s']:.0f} s after the last LOO task ended "
              f"(sacct End -> Start; {a['loo_tasks']} tasks {','.join(a['loo_states'])} in {a['loo_wall_s']:.0f} s, "
              f"select {a['select_state']} in {a['select_elapsed_s']:.0f} s)", flush=True)
        b = rerun(root, tag)
        print(f"(b) killed tasks {b['killed']} of {b['loo_tasks']} while running; the re-run resubmitted "
              f"{b['resubmitted_tasks']} task(s) {b['resubmitted']} = {b['clips_recomputed']} of {b['loo_clips']} "
              f"clips (exactly the killed half: {b['exactly_the_killed_half']}; other shards untouched: "
              f"{b['other_shards_untouched']}); first array {b['first_array_wall_s']:.0f} s, re-run "
              f"{b['rerun_wall_s']:.0f} s", flush=True)
        print(json.dumps({"host": socket.gethostname(), "total_s": round(time.monotonic() - t0, 1),
                          "latency": a, "rerun": b}))
    finally:
        if args.keep:
            print(f"run directories: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
