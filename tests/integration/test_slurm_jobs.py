"""Single jobs on the real cluster: a small CPU job after an array (afterany), and a multi-node
training job with one task per GPU and the torch.distributed variables set."""
import os
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

from helpers.slurm import make_ctx, sh
from vip.orchestrate import slurm
from vip.orchestrate.ledger import Ledger

cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.slurm


def _missing(ctx):
    return [0, 1]


def _nap(ctx, i):
    time.sleep(3)
    (Path(ctx.run.path) / f"part_{i}").write_text(str(time.time()))


def _merge(ctx):
    parts = sorted(Path(ctx.run.path).glob("part_*"))
    return {"parts": [p.name for p in parts], "start": time.time(), "partition": os.environ.get("SLURM_JOB_PARTITION")}


def _rank_info(ctx):
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURMD_NODENAME",
            "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES")
    return {k: os.environ.get(k) for k in keys}


def test_cpu_job_after_array_and_multinode_training_job(tmp_path):
    ctx = make_ctx(tmp_path / "run", ["slurm.nodes=2", "slurm.gpus_per_node=2"])
    spec = slurm.ArrayStep(_missing, _nap, lambda ctx, i: False)
    arrays = slurm.submit_array(ctx, "nap", spec=spec)
    merge = slurm.submit_job(ctx, "merge", _merge, kind="cpu", depends_on=arrays)
    assert sh("squeue", "-h", "-j", merge, "-o", "%E").startswith(f"afterany:{arrays[0]}")
    train = slurm.submit_job(ctx, "train", _rank_info, kind="train", depends_on=[merge])
    assert slurm.submit_job(ctx, "train", _rank_info, kind="train", depends_on=[merge]) == train  # queued already
    assert len(Ledger(ctx.dir).entries("train")) == 1

    states = slurm.wait([train], timeout=150)
    assert states == {train: "COMPLETED"}
    merged = submitit.SlurmJob(folder=slurm.log_dir(ctx, "merge"), job_id=merge).result()
    assert merged["parts"] == ["part_0", "part_1"] and merged["partition"] == "cpu"  # ran after the whole array
    ranks = submitit.SlurmJob(folder=slurm.log_dir(ctx, "train"), job_id=train, tasks=range(4)).results()
    assert sorted(int(r["RANK"]) for r in ranks) == [0, 1, 2, 3]
    assert {r["WORLD_SIZE"] for r in ranks} == {"4"} and {r["LOCAL_WORLD_SIZE"] for r in ranks} == {"2"}
    assert sorted(int(r["LOCAL_RANK"]) for r in ranks) == [0, 0, 1, 1]
    assert len({r["SLURMD_NODENAME"] for r in ranks}) == 2  # 2 nodes x 2 GPUs, one task per GPU
    assert {r["MASTER_ADDR"] for r in ranks} == {"localhost"}  # the first node's NodeAddr
    assert len({r["MASTER_PORT"] for r in ranks}) == 1
    assert all(r["CUDA_VISIBLE_DEVICES"] for r in ranks)  # the fake GPUs were allocated
    assert [e["kind"] for s in ("nap", "merge", "train") for e in Ledger(ctx.dir).entries(s)] == \
        ["array", "cpu", "train"]
