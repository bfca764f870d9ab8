"""Resources per job kind, as submitit parameters (no cluster needed)."""
from vip import config
from vip.orchestrate.slurm import ARRAY_STEPS, packed_ranks, sbatch_options


def _cfg():
    return config.load(None, ["slurm.partition=gpu", "slurm.cpu_partition=cpu", "slurm.array_gpus=1",
                              "slurm.gpus_per_node=4", "slurm.nodes=2"]).slurm


def test_gpu_arrays_get_a_gpu_and_the_prompt_filter_array_does_not():
    s = _cfg()
    gpu = sbatch_options(s, ARRAY_STEPS["loo"].kind)
    cpu = sbatch_options(s, ARRAY_STEPS["filter"].kind)
    assert gpu["slurm_partition"] == "gpu" and gpu["gpus_per_node"] == 1
    assert cpu["slurm_partition"] == "cpu" and "gpus_per_node" not in cpu
    assert ARRAY_STEPS["pairs"].kind == "array"


def test_training_is_one_task_per_gpu_on_every_node():
    p = sbatch_options(_cfg(), "train")
    assert (p["nodes"], p["tasks_per_node"], p["gpus_per_node"]) == (2, 4, 4)


def test_packed_jobs_ask_for_ranks_not_nodes():
    s = config.load(None, ["slurm.partition=gpu", "slurm.cpu_partition=cpu", "slurm.array_gpus=1",
                           "slurm.time=90", "slurm.cpu_time=20"]).slurm
    p = sbatch_options(s, "packed", ranks=3)
    extra = p["slurm_additional_parameters"]
    assert (extra["ntasks"], extra["nodes"], extra["requeue"]) == (3, "1-3", True)  # Slurm places the 3 ranks
    assert "tasks_per_node" not in p and p["slurm_gpus_per_task"] == 1 and "gpus_per_node" not in p
    assert p["slurm_partition"] == "gpu" and p["timeout_min"] == 90
    cpu = sbatch_options(s, "cpu_packed", ranks=2)
    assert cpu["slurm_partition"] == "cpu" and "slurm_gpus_per_task" not in cpu
    assert cpu["timeout_min"] == 90  # it does an array's work: an array task's time, not a small job's
    assert sbatch_options(s, "cpu_array")["timeout_min"] == 90  # the prompt-filter array: as its sbatch template
    assert sbatch_options(s, "cpu")["timeout_min"] == 20  # a small job keeps slurm.cpu_time
    assert sbatch_options(s, "packed", ranks=1)["slurm_additional_parameters"]["nodes"] == 1


def test_packed_ranks_default_to_the_training_shape_and_never_exceed_the_tasks():
    s = _cfg()  # 2 nodes x 4 GPUs
    assert packed_ranks(s) == 8 and packed_ranks(s, 5) == 5 and packed_ranks(s, 100) == 8
    s3 = config.load(None, ["slurm.packed_ranks=3", "slurm.gpus_per_node=0"]).slurm
    assert packed_ranks(s3) == 3 and packed_ranks(s3, 2) == 2 and packed_ranks(s3, 0) == 1
    assert packed_ranks(config.load(None, ["slurm.gpus_per_node=0", "slurm.nodes=2"]).slurm) == 2  # CPU ranks
