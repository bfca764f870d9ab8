"""Resources per job kind, as submitit parameters (no cluster needed)."""
from vip import config
from vip.orchestrate.slurm import ARRAY_STEPS, sbatch_options


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
