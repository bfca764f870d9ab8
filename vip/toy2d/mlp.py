"""The diffusion backbone: an MLP on [x, sinusoidal embedding of t] that predicts the noise.

`n_layers` counts the Linear layers (the usual meaning of "an L-layer MLP"): the teacher's
4 layers of width 64 have 3 hidden layers, the student's 2 layers of width 32 have one.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class DenoiserMLP(nn.Module):
    def __init__(self, n_layers: int, width: int, t_dim: int = 16, max_t: int = 1000):
        super().__init__()
        if n_layers < 2:
            raise ValueError("n_layers counts Linear layers and must be at least 2")
        self.n_layers, self.width, self.t_dim = n_layers, width, t_dim
        half = t_dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(max_t) * torch.arange(half) / half), persistent=False)
        dims = [2 + t_dim] + [width] * (n_layers - 1) + [2]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.SiLU())
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = t.float()[:, None] * self.freqs[None]
        return self.net(torch.cat([x, a.sin(), a.cos()], dim=1))

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
