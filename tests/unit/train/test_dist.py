"""Which launcher started this process, from its environment (vip.train.dist.discover); no launcher needed.
The real srun / mpirun runs are tests/integration/test_slurm_ranks.py."""
from vip.train import dist

# what srun gives task 3 of `--nodes=2 --ntasks-per-node=2` (seen on the test cluster)
SRUN = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
        "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "gpu[07-08]", "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_JOB_ID": "1234"}
# the batch shell of the same job: SLURM_PROCID is 0 there, and there is no step
BATCH = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_JOB_NODELIST": "gpu[07-08]",
         "SLURM_JOB_ID": "1234"}


def test_expand_nodelist():
    assert dist.expand_nodelist("gpu[07-08]") == ["gpu07", "gpu08"]
    assert dist.expand_nodelist("a[1,3-4],b-x,c[09-10]") == ["a1", "a3", "a4", "b-x", "c09", "c10"]


def test_srun_tasks_take_slurm_ranks(monkeypatch):
    monkeypatch.setattr(dist, "node_address", lambda host: f"addr-of-{host}")
    d = dist.discover(SRUN)
    assert (d.rank, d.world_size, d.local_rank, d.launcher) == (3, 4, 1, "slurm")
    assert d.master_addr == "addr-of-gpu07" and d.master_port == 20000 + 1234
    # srun with an MPI plugin sets PMI variables too; they agree with the step, so Slurm's are used
    assert dist.launched_by_srun({**SRUN, "PMI_RANK": "3", "PMI_SIZE": "4"})


def test_mpirun_inside_an_allocation_is_not_taken_for_srun():
    # forked from the batch shell: every rank would read SLURM_PROCID=0
    assert not dist.launched_by_srun({**BATCH, "PMI_RANK": "2", "PMI_SIZE": "4"})
    # started by mpirun's proxies, one srun task per node: the step has 2 tasks, MPI has 4 ranks
    proxies = {**SRUN, "SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_LOCALID": "0"}
    assert not dist.launched_by_srun({**proxies, "PMI_RANK": "3", "PMI_SIZE": "4"})
    assert not dist.launched_by_srun({**proxies, "OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4"})
    # a plain python in a batch shell (no MPI) keeps the old reading: Slurm's variables
    assert dist.launched_by_srun(BATCH)


def test_torchrun_variables_come_first():
    d = dist.discover({**SRUN, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                       "MASTER_PORT": "29511"})
    assert (d.rank, d.world_size, d.master_addr, d.master_port, d.launcher) == (1, 2, "h", 29511, "torchrun")


def test_node_address_keeps_a_resolvable_name():
    assert dist.node_address("localhost") == "localhost"
