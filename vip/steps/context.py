"""What every step of a stage needs: the run directory, the config, and lazily loaded models.

A task is a plain function call on a StageContext, so a local loop, a submitit array task
or an sbatch script can all run it; nothing here knows how it was launched.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from vip.config import Config, ConfigError
from vip.evaluate import evaluate
from vip.models.base import VideoModel
from vip.models.registry import base_model_path, load_video_model
from vip.prompts.sets import EvalSet, eval_set, heldout_set
from vip.rewards.base import RewardModel
from vip.rewards.registry import load_reward
from vip.store import IncompleteError, RunDir, sha256_tree


@dataclass
class StageContext:
    run: RunDir
    cfg: Config
    stage: int
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def dir(self) -> Path:
        return self.run.stage(self.stage)

    def model_path(self) -> Path:
        """Stage 1 prunes the base model; stage N prunes stage N-1's trained student."""
        if self.stage == 1:
            return base_model_path(self.cfg.model)
        prev = self.run.stage(self.stage - 1) / "train" / "final"
        if not (prev / "removed_units.json").is_file():
            raise ConfigError(
                f"stage {self.stage} starts from stage {self.stage - 1}'s trained student, which is not at {prev}; "
                f"run stage {self.stage - 1} first"
            )
        return prev

    @contextmanager
    def timed(self, what: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[what] += time.perf_counter() - t0

    @cached_property
    def model(self) -> VideoModel:
        if self.cfg.runtime.threads:
            torch.set_num_threads(self.cfg.runtime.threads)
        with self.timed("load"):
            return load_video_model(self.cfg.model, self.model_path())

    @cached_property
    def teacher(self) -> VideoModel:
        """The full model M0: the preferred side of every pair and the frozen ReDPO reference, in every stage."""
        if self.stage == 1:
            return self.model  # M is M0 in stage 1 (leave-one-out restores every unit it switches off)
        with self.timed("load"):
            return load_video_model(self.cfg.model, base_model_path(self.cfg.model))

    @cached_property
    def teacher_sha256(self) -> str:
        return sha256_tree(base_model_path(self.cfg.model))

    def pruned_path(self) -> Path:
        """M minus this stage's chosen units (written by selection)."""
        return self.dir / "pruned"

    @cached_property
    def student(self) -> VideoModel:
        if not (self.pruned_path() / "removed_units.json").is_file():
            raise IncompleteError(f"stage {self.stage} has no pruned student at {self.pruned_path()}; run selection first")
        with self.timed("load"):
            return load_video_model(self.cfg.model, self.pruned_path())

    @cached_property
    def model_sha256(self) -> str:
        return sha256_tree(self.model_path())

    @cached_property
    def reward(self) -> RewardModel:
        with self.timed("load"):
            # reward.device "" = the generator's device (a VLM reward shares the GPU with it)
            return load_reward(replace(self.cfg.reward, device=self.cfg.reward.device or self.cfg.model.device))

    def score_eval_set(self, model: VideoModel) -> np.ndarray:
        """Scores [samples, aspects] of `model` on this run's fixed evaluation prompts and seeds."""
        return self.score_set(model, self.eval_set)

    def score_set(self, model: VideoModel, samples: EvalSet) -> np.ndarray:
        """Scores [samples, aspects] of `model` on fixed prompts and seeds (the evaluation or held-out set)."""
        return evaluate(model, self.reward, samples.prompts, samples.seeds, self.cfg.loo.batch_size, timed=self.timed)

    @cached_property
    def eval_set(self) -> EvalSet:
        p = self.cfg.prompts
        return eval_set(p.eval, p.eval_count, p.seeds_per_prompt, self.cfg.run.seed)

    @cached_property
    def heldout_set(self) -> EvalSet | None:
        """The outcome's prompts and seeds, which leave-one-out and curation never see; None: prompts.heldout
        is unset and the outcome is scored on the evaluation set."""
        p = self.cfg.prompts
        return heldout_set(p.heldout, p.heldout_count, p.seeds_per_prompt, self.cfg.run.seed) if p.heldout else None
