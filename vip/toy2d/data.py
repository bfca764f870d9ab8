"""The ground-truth distribution of Figure A(a): two isotropic Gaussian modes.

Mode 1 is broad and holds most of the mass; Mode 2 is small and sharp, the mode a small student
finds hard. A point belongs to mode k if it lies within `radius_sigmas` standard deviations of
centre k; a point in neither mode is out of distribution (OOD).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

MODE1, MODE2, OOD = 0, 1, -1
LABELS = {MODE1: "Mode 1", MODE2: "Mode 2", OOD: "OOD"}


@dataclass(frozen=True)
class TwoModes:
    centres: tuple[tuple[float, float], ...] = ((-1.0, 0.6), (1.0, -0.6))
    stds: tuple[float, ...] = (0.30, 0.07)
    weights: tuple[float, ...] = (0.7, 0.3)
    radius_sigmas: float = 3.0
    _c: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(self.centres) != 2 or len(self.stds) != 2 or len(self.weights) != 2:
            raise ValueError("TwoModes needs exactly two centres, stds and weights")
        if abs(sum(self.weights) - 1.0) > 1e-9:
            raise ValueError(f"weights must sum to 1, got {self.weights}")
        object.__setattr__(self, "_c", torch.tensor(self.centres, dtype=torch.float32))

    @property
    def radii(self) -> torch.Tensor:
        """Distance from a centre within which a point counts as that mode: radius_sigmas * std."""
        return self.radius_sigmas * torch.tensor(self.stds)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """n points [n, 2] and the mode each was drawn from [n] (0 or 1)."""
        mode = (torch.rand(n, generator=generator) < self.weights[1]).long()
        std = torch.tensor(self.stds)[mode, None]
        return self._c[mode] + std * torch.randn(n, 2, generator=generator), mode

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """MODE1, MODE2 or OOD per point. The modes' discs do not overlap (checked)."""
        d = torch.cdist(x.float(), self._c)
        inside = d <= self.radii
        assert not (inside[:, 0] & inside[:, 1]).any(), "mode discs overlap"
        label = torch.full((x.shape[0],), OOD, dtype=torch.long)
        label[inside[:, 0]] = MODE1
        label[inside[:, 1]] = MODE2
        return label

    def counts(self, x: torch.Tensor) -> dict[str, int]:
        label = self.classify(x)
        return {name: int((label == k).sum()) for k, name in LABELS.items()}

    def reward(self, x: torch.Tensor) -> torch.Tensor:
        """The preference reward: 1 in Mode 2, 0 elsewhere (it prioritises Mode 2 only)."""
        return (self.classify(x) == MODE2).float()
