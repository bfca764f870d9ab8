"""A cheap stand-in reward, identical for vip and the baseline in benchmarks.

The real rewards (VideoScore, a 8B video-language model) would dominate the clock and are
downloaded weights; benchmarks of the generator use this instead and say so. Each aspect is
a simple statistic of the clip, mapped into VideoScore's 1-4 range.
"""
from __future__ import annotations

import torch

from vip.rewards.base import ASPECTS, RewardModel


class StandInReward(RewardModel):
    name = "standin"

    @torch.no_grad()
    def score(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        v = videos.float()  # [B, F, C, H, W] in [0, 1]
        motion = (v[:, 1:] - v[:, :-1]).abs().mean(dim=(1, 2, 3, 4))
        contrast = v.std(dim=(2, 3, 4)).mean(1)
        colour = v.mean(dim=(1, 3, 4)).std(1)
        bright = v.mean(dim=(1, 2, 3, 4))
        squash = lambda x: 1 + 3 * torch.sigmoid(x)  # noqa: E731
        out = {"visual_quality": squash(8 * (contrast - 0.2)), "temporal_consistency": squash(-20 * (motion - 0.05)),
               "dynamic_degree": squash(20 * (motion - 0.05)), "text_alignment": squash(8 * (colour + bright - 0.5))}
        return {a: out[a].cpu() for a in ASPECTS}
