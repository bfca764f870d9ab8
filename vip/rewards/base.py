"""The interface every reward model implements (toyvid_score, VideoScore)."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch

# VideoScore's five aspects minus factual consistency, which the paper does not rank by.
ASPECTS: tuple[str, ...] = ("visual_quality", "temporal_consistency", "dynamic_degree", "text_alignment")


class RewardModel(ABC):
    """Scores clips per aspect on VideoScore's 1-4 scale (higher is better)."""

    name: str
    aspects: tuple[str, ...] = ASPECTS

    @abstractmethod
    def score(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        """videos [B, F, C, H, W] float in [0, 1]; returns {aspect: float tensor [B]} in [1, 4]."""


def total(scores: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum over ASPECTS of the per-aspect scores, [B]; raises KeyError naming a missing aspect."""
    missing = [a for a in ASPECTS if a not in scores]
    if missing:
        raise KeyError(f"scores lack aspect {missing[0]!r}; have {sorted(scores)}")
    return torch.stack([scores[a] for a in ASPECTS]).sum(0)


def as_matrix(scores: dict[str, torch.Tensor]) -> np.ndarray:
    """{aspect: [B]} -> float32 array [B, aspects] in ASPECTS order (how shards store scores)."""
    return torch.stack([scores[a] for a in ASPECTS], 1).float().cpu().numpy()
