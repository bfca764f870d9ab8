"""Frame sampling and conversion for the VLM rewards, as their published inference code does it.

Both published pipelines read an encoded video: 8-bit RGB frames. Our clips are float in
[0, 1], so they are quantised the way an encoder's input would be (round(255 x)) before the
same sampling, resizing and normalisation run on them.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from vip.config import ConfigError


def check_clips(videos: torch.Tensor, prompts: list[str]) -> None:
    if videos.dim() != 5 or videos.shape[2] != 3:
        raise ValueError(f"expected RGB clips [B, F, 3, H, W], got shape {tuple(videos.shape)}")
    if len(prompts) != videos.shape[0]:
        raise ValueError(f"got {len(prompts)} prompts for {videos.shape[0]} clips")


def require_frames(have: int, need: int, reward: str, key: str = "reward.frames") -> None:
    """A clip shorter than the frames the reward reads is a configuration error, not a silent pad."""
    if have < need:
        raise ConfigError(f"clips of {have} frames: frames fewer than the reward model needs ({reward} reads {need}, "
                          f"config key {key!r}); generate longer clips (model.frames) or lower {key}")


def stride_indices(total: int, n: int) -> list[int]:
    """VideoScore's published sampling (examples/run_videoscore.py): every total/n-th frame from
    frame 0, int(i * (total / n)) in float64 as its np.arange does (so a product like
    15 * 8.2 = 122.999... gives 122, as there); a clip of exactly n frames is used whole."""
    if n < 1 or total < n:
        raise ValueError(f"cannot sample {n} frames from {total}")
    step = total / n
    return [int(i * step) for i in range(n)]


def linspace_indices(total: int, n: int) -> list[int]:
    """qwen-vl-utils' 'uniform' sampling (VideoReward): n indices evenly from the first to the
    last frame, rounded to the nearest."""
    if n < 1 or total < n:
        raise ValueError(f"cannot sample {n} frames from {total}")
    return torch.linspace(0, total - 1, n).round().long().tolist()


def to_uint8(videos: torch.Tensor) -> torch.Tensor:
    """Float clips in [0, 1] -> uint8 of the same shape, as a video encoder receives them."""
    return (videos.detach().float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def to_pil(frames: torch.Tensor) -> list[Image.Image]:
    """uint8 frames [F, 3, H, W] -> F RGB PIL images (what the Idefics2 processor is given)."""
    arr = frames.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]
