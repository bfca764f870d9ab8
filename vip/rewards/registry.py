"""Reward models by name, each in its own module, imported only when a config names it."""
from __future__ import annotations

import importlib

from vip.config import ConfigError, RewardConfig
from vip.rewards.base import RewardModel

# name -> "module:function"; the function is load(cfg: RewardConfig) -> RewardModel
REWARDS = {
    "toyvid_score": "vip.rewards.toyvid_score:load",
    "videoscore": "vip.rewards.videoscore:load",
    "videoreward": "vip.rewards.videoreward:load",
}


def check_reward(name: str) -> None:
    if name not in REWARDS:
        raise ConfigError(f"config key 'reward.name': unknown reward {name!r}; expected one of: {', '.join(REWARDS)}")


def load_reward(cfg: RewardConfig) -> RewardModel:
    check_reward(cfg.name)
    module, func = REWARDS[cfg.name].split(":")
    return getattr(importlib.import_module(module), func)(cfg)


def aspect_sources(name: str) -> dict[str, str]:
    """Aspects that copy one reward output (aspect -> output name), from the reward module's
    ASPECT_SOURCES; {} when every aspect is its own output. Reads no weights."""
    check_reward(name)
    return dict(getattr(importlib.import_module(REWARDS[name].split(":")[0]), "ASPECT_SOURCES", {}))
