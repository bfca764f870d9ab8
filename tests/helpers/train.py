import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from vip import config as vip_config
from vip.steps.context import StageContext
from vip.steps.pairs import pairs_path, student_sha256
from vip.store import RunDir, write_h5

from helpers.paths import ROOT  # noqa: E402
PROMPTS = ["a red circle moving left on a black background", "a blue square staying still on a gray background"]


def make_train_run(root: Path, model_dir: Path, n_pairs: int = 8, overrides: list[str] = (),
                   prompts: list[str] = PROMPTS) -> RunDir:
    """A stage-1 run directory ready for training: frozen config, a pruned student and a pairs file
    in the layout curation writes (latents drawn at random: the trainer's input is the file format)."""
    cfg = vip_config.load(ROOT / "configs/toyvid.yaml", [
        # the paper's recipe (the frozen teacher as the reference: two networks, not three) with a faster lr
        f"model.path={model_dir}", "train.recipe=paper", "train.epochs=2", "train.batch_size=2", "train.w_sft=100", "train.lr=1e-4",
        "train.checkpoint_every=0", "train.warmup_steps=2", "train.min_pairs=1", *overrides])
    run = RunDir(root)
    run.freeze(cfg)
    ctx = StageContext(run, cfg, 1)
    ctx.model.pruned(ctx.model.units()[:2]).save(ctx.pruned_path())
    g = torch.Generator().manual_seed(1)
    shape = (n_pairs, 12, 8, 16, 16)
    write_h5(pairs_path(ctx), {
        "latents_w": torch.randn(shape, generator=g).half().numpy(),
        "latents_l": torch.randn(shape, generator=g).half().numpy(),
        "prompts": np.array((list(prompts) * n_pairs)[:n_pairs]),
    }, {"config_sha256": cfg.hash(), "student_sha256": student_sha256(ctx), "targets": json.dumps(["visual_quality"])})
    return run


def train_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_RANK",
                                                                        "MASTER_", "OMPI_", "PMI_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), **extra)
    return env


def train_cmd(run: RunDir, launcher: list[str] = ()) -> list[str]:
    return [*launcher, *( [] if launcher else [sys.executable]), str(ROOT / "jobs/train_redpo.py"),
            "--run-dir", str(run.path), "--stage", "1", "--no-progress"]


def run_training(run: RunDir, launcher: list[str] = (), timeout: int = 240, **env) -> subprocess.CompletedProcess:
    return subprocess.run(train_cmd(run, launcher), env=train_env(**env), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


