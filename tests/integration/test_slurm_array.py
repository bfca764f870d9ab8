"""A submitit job array on the real cluster: %N cap, spreading over nodes, splitting above MaxArraySize."""
import math
import os
import sys
import time

import cloudpickle
import pytest

from vip import config
from vip.orchestrate import slurm

cloudpickle.register_pickle_by_value(sys.modules[__name__])
pytestmark = pytest.mark.slurm


def square(x):
    t0 = time.time()
    # long enough that two tasks overlap even when the scheduler's passes (every 2 s) come late on a loaded
    # machine: tasks that each run alone all land on n1, and the spread below could not show
    time.sleep(4.0)
    return {"x": x, "y": x * x, "node": os.environ.get("SLURMD_NODENAME"), "t0": t0, "t1": time.time(),
            "array": os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")}


def test_array_of_six_with_cap_two_spreads_over_nodes_and_splits(tmp_path):
    s = config.load(None, ["slurm.partition=gpu", "slurm.time=15", "slurm.cpus_per_task=1",
                           "slurm.array_parallelism=2"]).slurm
    jobs = slurm.map_array(tmp_path / "logs", square, list(range(6)), s, "vip-test-array")
    results = [j.result() for j in jobs]
    assert [r["y"] for r in results] == [x * x for x in range(6)]
    assert len({r["node"] for r in results}) >= 2, results  # LLN spreads array tasks over the nodes
    # never more than 2 at once: at every task's start, count the tasks running then
    overlap = max(sum(1 for o in results if o["t0"] <= r["t0"] < o["t1"]) for r in results)
    assert overlap <= 2, results
    # more tasks than MaxArraySize allows: several arrays (the test cluster's MaxArraySize is small)
    assert len({r["array"] for r in results}) == math.ceil(6 / slurm.max_array_size())
    # per-task logs and the generated sbatch script in the executor's folder
    assert list((tmp_path / "logs").glob("*_submission.sh")) and list((tmp_path / "logs").glob("*_log.out"))


def test_queue_and_accounting_states():
    assert slurm.expand_ids("12_[0-2,5%2]") == ["12_0", "12_1", "12_2", "12_5"]
    assert slurm.expand_ids("12_3") == ["12_3"] and slurm.expand_ids("13") == ["13"]
    assert slurm.job_states(["999999_0"]) == {"999999_0": "UNKNOWN"}  # never seen: over, not active
    assert not slurm.is_active("UNKNOWN") and slurm.is_active("REQUEUED") and slurm.is_active("PENDING")
