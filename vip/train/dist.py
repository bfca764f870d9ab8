"""Who am I in a multi-process job: rank, world size and rendezvous, from whichever launcher ran us.

torchrun and the `deepspeed` launcher set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_*; `srun`
sets SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID and the node list; `mpirun` is asked through
mpi4py. An mpirun inside a Slurm allocation inherits SLURM_* variables that describe something
else (the batch shell: SLURM_PROCID=0 everywhere; or the srun step that started its proxies, one
task per node): there the MPI variables win. Whatever the launcher, we export the torch variables ourselves, so DeepSpeed never
runs its own MPI discovery (which picks the wrong interface on some hosts).
"""
from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun | slurm | mpi | single


def expand_nodelist(nodelist: str) -> list[str]:
    """Slurm's compressed host list: 'gpu[01-03,7],cpu-a' -> ['gpu01', 'gpu02', 'gpu03', 'gpu7', 'cpu-a']."""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            lo, _, hi = part.partition("-")
            if not hi:
                hosts.append(prefix + lo)
            else:
                hosts += [prefix + str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    return hosts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MPI_RANK_VARS = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def launched_by_srun(env) -> bool:
    """SLURM_PROCID / SLURM_NTASKS describe this process's rank. Not so for a process that mpirun
    started inside an allocation: it has MPI rank variables and either no SLURM_STEP_ID (forked from
    the batch shell, whose SLURM_PROCID is 0) or an srun step of another size (mpirun's proxies).
    The test uses only values every rank shares, so all ranks of one launch decide alike."""
    if not ("SLURM_PROCID" in env and "SLURM_NTASKS" in env):
        return False
    if not any(k in env for k in MPI_RANK_VARS):
        return True
    if "SLURM_STEP_ID" not in env:
        return False
    size = next((env[k] for k in MPI_SIZE_VARS if k in env), None)
    return size is None or size == env.get("SLURM_STEP_NUM_TASKS", env["SLURM_NTASKS"])


def node_address(host: str) -> str:
    """An address for a Slurm node name: the name itself if it resolves, else the node's NodeAddr from
    `scontrol show node` (node names need not be host names: on the test cluster n1..n3 are all
    localhost), else the name."""
    try:
        socket.getaddrinfo(host, None)
        return host
    except OSError:
        pass
    import shutil
    import subprocess

    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "node", "-o", host], capture_output=True, text=True,
                                 timeout=30).stdout
            m = re.search(r"NodeAddr=(\S+)", out)
            if m:
                return m.group(1)
        except (OSError, subprocess.TimeoutExpired):
            pass
    return host


def discover(environ: dict | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)),
                       env.get("MASTER_ADDR", "127.0.0.1"), int(env.get("MASTER_PORT", 29500)), "torchrun")
    if launched_by_srun(env):
        hosts = expand_nodelist(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "localhost"))
        # one port per job, so two jobs sharing a node never collide
        port = int(env.get("MASTER_PORT") or 20000 + int(env.get("SLURM_JOB_ID", 0)) % 20000)
        return DistEnv(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)),
                       env.get("MASTER_ADDR") or node_address(hosts[0]), port, "slurm")
    if any(k in env for k in MPI_RANK_VARS):
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        local = comm.Split_type(MPI.COMM_TYPE_SHARED).Get_rank()
        addr, port = comm.bcast((env.get("MASTER_ADDR") or socket.gethostname(),
                                 int(env.get("MASTER_PORT") or _free_port())) if comm.Get_rank() == 0 else None)
        return DistEnv(comm.Get_rank(), comm.Get_size(), local, addr, port, "mpi")
    return DistEnv(0, 1, 0, "127.0.0.1", int(env.get("MASTER_PORT") or _free_port()), "single")


def export(d: DistEnv) -> None:
    os.environ.update(RANK=str(d.rank), WORLD_SIZE=str(d.world_size), LOCAL_RANK=str(d.local_rank),
                      MASTER_ADDR=d.master_addr, MASTER_PORT=str(d.master_port))


def init(device: str) -> DistEnv:
    """Discover, export and start the process group (gloo on CPU, NCCL on GPU)."""
    import deepspeed
    import torch

    d = discover()
    export(d)
    if device.startswith("cuda"):
        torch.cuda.set_device(d.local_rank)
    else:
        # DeepSpeed's shared-memory allreduce for CPU ranks is a C++ op it compiles on first use: about 2 minutes
        # on 2 cores, again whenever the venv's path changes. Gloo's allreduce is plenty for CPU training.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if device.startswith("cuda") else "gloo",
                               auto_mpi_discovery=False, verbose=False, rank=d.rank, world_size=d.world_size)
    return d


def shutdown() -> None:
    """Barrier before teardown: a rank that leaves early makes the others abort at exit."""
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.barrier()
        tdist.destroy_process_group()
