"""Rank discovery (vip.train.dist.discover) under a real srun and a real mpirun inside a Slurm allocation
of 2 nodes x 2 tasks: each process finds its rank, local rank and rendezvous, and a gloo all_reduce
over the 4 of them sums right."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.slurm import sh
from vip.orchestrate import slurm

pytestmark = pytest.mark.slurm

from helpers.paths import ROOT  # noqa: E402
PROBE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import torch, torch.distributed as tdist
from vip.train.dist import discover, export
d = discover()
export(d)
tdist.init_process_group("gloo", rank=d.rank, world_size=d.world_size,
                         init_method=f"tcp://{d.master_addr}:{d.master_port}")
t = torch.tensor([float(d.rank + 1)])
tdist.all_reduce(t)
# one file per process: lines printed by 4 ranks into one job log can interleave mid-line
out = os.path.join(sys.argv[3], f"{sys.argv[2]}-{d.rank}-{os.getpid()}.json")
with open(out + ".tmp", "w") as f:
    json.dump({"launcher": sys.argv[2], "rank": d.rank, "world": d.world_size, "local": d.local_rank,
               "found_by": d.launcher, "addr": d.master_addr, "port": d.master_port,
               "node": os.environ.get("SLURMD_NODENAME"), "sum": t.item()}, f)
os.replace(out + ".tmp", out)
tdist.barrier()
tdist.destroy_process_group()
"""
SCRIPT = """#!/bin/bash
#SBATCH --nodes=2 --ntasks-per-node=2 --cpus-per-task=1 --partition=cpu --time=5
export OMP_NUM_THREADS=1
srun {python} {probe} {root} srun {seen} || exit 1
{mpirun} -iface lo -n 4 {python} {probe} {root} mpirun {seen}
"""


def test_srun_and_mpirun_ranks_on_two_nodes(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    mpirun = Path(sys.executable).parent / "mpirun"  # pip's mpich (pyproject), beside python
    script = tmp_path / "ranks.sbatch"
    seen_dir = tmp_path / "seen"
    seen_dir.mkdir()
    script.write_text(SCRIPT.format(python=sys.executable, probe=probe, root=ROOT, mpirun=mpirun, seen=seen_dir))
    out = tmp_path / "out.txt"
    job = sh("sbatch", "--parsable", f"--output={out}", str(script)).split(";")[0]
    assert slurm.wait([job], timeout=150) == {job: "COMPLETED"}, out.read_text()[-2000:]
    seen = [json.loads(f.read_text()) for f in sorted(seen_dir.glob("*.json"))]
    assert len(seen) == 8, sorted(f.name for f in seen_dir.iterdir())  # 4 processes per launcher, none twice
    for launcher, found_by in (("srun", "slurm"), ("mpirun", "mpi")):
        ranks = [r for r in seen if r["launcher"] == launcher]
        assert sorted(r["rank"] for r in ranks) == [0, 1, 2, 3], ranks  # each rank exactly once
        assert {r["world"] for r in ranks} == {4} and {r["found_by"] for r in ranks} == {found_by}
        assert {r["sum"] for r in ranks} == {1.0 + 2 + 3 + 4}  # the all_reduce reached all four
        by_node: dict[str, list[int]] = {}
        for r in ranks:
            by_node.setdefault(r["node"], []).append(r["local"])
        assert len(by_node) == 2 and all(sorted(v) == [0, 1] for v in by_node.values())  # 2 per node
        assert len({(r["addr"], r["port"]) for r in ranks}) == 1
    srun = [r for r in seen if r["launcher"] == "srun"]
    # the first node of SLURM_STEP_NODELIST (n1 or n2) is not a host name here: its NodeAddr is used
    assert {r["addr"] for r in srun} == {"localhost"} and {r["port"] for r in srun} == {20000 + int(job) % 20000}
    assert subprocess.run(["scontrol", "show", "node", "n1"], capture_output=True, text=True).stdout.count(
        "NodeAddr=localhost") == 1
