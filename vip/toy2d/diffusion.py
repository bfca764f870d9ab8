"""DDPM (epsilon prediction) for the toy: the scheduler, training on data, ancestral sampling.

The scheduler is diffusers' DDPMScheduler, the same object vip.redpo.pair_loss takes.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDPMScheduler

T_TRAIN = 1000


def make_scheduler() -> DDPMScheduler:
    # clip_sample off: the data lie in [-1.3, 1.3]^2, not [-1, 1]
    return DDPMScheduler(num_train_timesteps=T_TRAIN, beta_schedule="squaredcos_cap_v2",
                         prediction_type="epsilon", clip_sample=False)


def train_on_data(model: torch.nn.Module, scheduler, draw: Callable[[int, torch.Generator], torch.Tensor],
                  steps: int, lr: float, batch: int, generator: torch.Generator) -> list[float]:
    """Plain denoising loss ||eps - eps_theta(x_t, t)||^2 on fresh draws, AdamW with cosine decay.
    Returns the loss every 100 steps."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    losses = []
    for i in range(steps):
        x0 = draw(batch, generator)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        loss = (model(scheduler.add_noise(x0, noise, t), t) - noise).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if i % 100 == 0:
            losses.append(loss.item())
    return losses


@torch.no_grad()
def sample(model: torch.nn.Module, scheduler, n: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """n samples [n, 2] with DDPM ancestral sampling in `steps` steps."""
    s = DDPMScheduler.from_config(scheduler.config)
    s.set_timesteps(steps)
    x = torch.randn(n, 2, generator=generator)
    for t in s.timesteps:
        eps = model(x, t.expand(n))
        x = s.step(eps, t, x, generator=generator).prev_sample
    return x
