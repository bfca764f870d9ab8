"""Reward models by name."""
from __future__ import annotations

from vip.config import ConfigError, RewardConfig
from vip.rewards.base import RewardModel


def _toyvid_score(cfg: RewardConfig) -> RewardModel:
    from vip.rewards.toyvid_score import ToyvidScore

    return ToyvidScore()


REWARDS = {"toyvid_score": _toyvid_score}


def check_reward(name: str) -> None:
    if name not in REWARDS:
        raise ConfigError(f"config key 'reward.name': unknown reward {name!r}; expected one of: {', '.join(REWARDS)}")


def load_reward(cfg: RewardConfig) -> RewardModel:
    check_reward(cfg.name)
    return REWARDS[cfg.name](cfg)
