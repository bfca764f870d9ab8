"""Distillation of the teacher into a copy of the base student with the shared ReDPO loss.

Preference data (supplement E): the reward prioritises Mode 2; winners are teacher samples in
Mode 2, losers are base-student samples outside Mode 2. Every variant trains on the same pairs
with the same optimiser; only the loss differs, all three from vip.redpo.pair_loss with the
frozen teacher as both DPO reference and SFT target:
  SFT      w_sft * L_SFT            (the .sft term; the DPO term dropped)
  DPO      L_DPO                    (w_sft = 0)
  DPO+SFT  L_DPO + w_sft * L_SFT    (ReDPO)
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vip.redpo import pair_loss

VARIANTS = ("SFT", "DPO", "DPO+SFT")


@dataclass(frozen=True)
class DistillConfig:
    """Defaults: the setting chosen by the sweep on tuning seeds (`python jobs/toy2d.py --sweep`)."""
    beta: float = 100.0
    w_sft: float = 1000.0
    lr: float = 3e-4
    steps: int = 1600
    batch: int = 256


def preference_pairs(teacher_x: torch.Tensor, student_x: torch.Tensor,
                     reward: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Winners: teacher samples with reward 1 (in Mode 2); losers: student samples with reward 0."""
    winners, losers = teacher_x[reward(teacher_x) > 0.5], student_x[reward(student_x) < 0.5]
    if len(winners) == 0 or len(losers) == 0:
        raise ValueError(f"no preference pairs: {len(winners)} winners, {len(losers)} losers")
    return winners, losers


def variant_loss(variant: str, policy, teacher, scheduler, x_w, x_l, noise, t, cfg: DistillConfig):
    if variant == "SFT":
        r = pair_loss(policy, teacher, scheduler, x_w, x_l, noise, t, cfg.beta, cfg.w_sft)
        return cfg.w_sft * r.sft, r
    if variant == "DPO":
        r = pair_loss(policy, teacher, scheduler, x_w, x_l, noise, t, cfg.beta, 0.0)
        return r.loss, r
    if variant == "DPO+SFT":
        r = pair_loss(policy, teacher, scheduler, x_w, x_l, noise, t, cfg.beta, cfg.w_sft)
        return r.loss, r
    raise ValueError(f"unknown variant {variant!r}; expected one of {VARIANTS}")


def distill(base: torch.nn.Module, teacher: torch.nn.Module, scheduler, winners: torch.Tensor,
            losers: torch.Tensor, variant: str, cfg: DistillConfig, generator: torch.Generator,
            every: int = 0, on_check: Callable[[int, torch.nn.Module], None] | None = None) -> torch.nn.Module:
    """A trained copy of `base`. Each step draws a batch of winners and, independently, losers
    (a random pairing), one shared noise and timestep per pair. `on_check(step, policy)` is
    called every `every` steps (and at step 0) when given."""
    policy = copy.deepcopy(base).train()
    teacher = teacher.eval().requires_grad_(False)
    opt = torch.optim.AdamW(policy.parameters(), lr=cfg.lr)
    if on_check and every:
        on_check(0, policy)
    for step in range(1, cfg.steps + 1):
        iw = torch.randint(0, len(winners), (cfg.batch,), generator=generator)
        il = torch.randint(0, len(losers), (cfg.batch,), generator=generator)
        noise = torch.randn(cfg.batch, 2, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch,), generator=generator)
        loss, _ = variant_loss(variant, policy, teacher, scheduler, winners[iw], losers[il], noise, t, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if on_check and every and step % every == 0:
            on_check(step, policy)
    return policy.eval()
