"""Generate clips for fixed prompts and seeds and score them: the one loop behind
leave-one-out evaluation, teacher checks and benchmarks."""
from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from vip.models.base import VideoModel
from vip.rewards.base import ASPECTS, RewardModel, as_matrix


def evaluate(model: VideoModel, reward: RewardModel, prompts: list[str], seeds: list[int], batch_size: int,
             units_off: list[str] = (), timed=None, keep_clips: bool = False):
    """Scores [N, aspects] (and the clips if keep_clips) of the model with `units_off` disabled."""
    timed = timed or (lambda _: nullcontext())
    out, clips_all = [], []
    with model.disabled(list(units_off)):
        for b in range(0, len(prompts), batch_size):
            p, s = prompts[b:b + batch_size], seeds[b:b + batch_size]
            with timed("generate"):
                clips = model.generate(p, s)
            with timed("score"):
                scores = reward.score(clips, p)
            out.append(as_matrix(scores))
            if keep_clips:
                clips_all.append(clips)
    scores = np.concatenate(out)
    return (scores, torch.cat(clips_all)) if keep_clips else scores


def mean_scores(scores: np.ndarray) -> dict[str, float]:
    m = {a: float(scores[:, i].mean()) for i, a in enumerate(ASPECTS)}
    m["total"] = float(sum(m[a] for a in ASPECTS))
    return m
