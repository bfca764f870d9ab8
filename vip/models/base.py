"""The interface every backbone family implements (toyvid, AnimateDiff, VideoCrafter2, Wan)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from vip.config import ConfigError


class UnknownUnitError(ConfigError):
    pass


class VideoModel(ABC):
    """A text-to-video diffusion model whose prunable units have stable names."""

    backbone: str

    @abstractmethod
    def units(self) -> list[str]:
        """Prunable units still present, in a fixed order."""

    @abstractmethod
    def disabled(self, units: list[str]) -> AbstractContextManager[None]:
        """Context in which the given units are skipped; undone on exit (no copy, no reload)."""

    @abstractmethod
    def pruned(self, units: list[str]) -> "VideoModel":
        """A copy with the units removed for good (parameter count shrinks)."""

    @abstractmethod
    def generate(self, prompts: list[str], seeds: list[int], steps: int | None = None,
                 guidance: float | None = None) -> torch.Tensor:
        """Clips [B, F, 3, H, W] in [0, 1]; a seed fixes the initial noise of its sample."""

    @abstractmethod
    def sample_latents(self, prompts: list[str], seeds: list[int], steps: int | None = None,
                       guidance: float | None = None) -> torch.Tensor:
        """Final latents [B, C, F, h, w] before decoding: what preference pairs store."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> clips [B, F, 3, H, W] in [0, 1]."""

    @abstractmethod
    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, denoiser=None) -> torch.Tensor:
        """Raw denoiser output (epsilon or v) for noised latents at timesteps t [B]; `denoiser`
        replaces the model's own (e.g. a DeepSpeed engine wrapping trainable_module())."""

    @abstractmethod
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text conditioning for predict()."""

    @abstractmethod
    def trainable_module(self) -> torch.nn.Module:
        """The module ReDPO trains."""

    @abstractmethod
    def unit_params(self) -> dict[str, int]:
        """Parameters per unit."""

    @abstractmethod
    def num_params(self) -> int:
        """Parameters of the denoiser (what pruning shrinks)."""

    @abstractmethod
    def save(self, directory: Path) -> None:
        """diffusers save_pretrained layout plus removed_units.json."""

    def check_units(self, units: list[str]) -> None:
        known = set(self.units())
        bad = [u for u in units if u not in known]
        if bad:
            raise UnknownUnitError(
                f"unknown unit {bad[0]!r}; this {self.backbone} model has {len(known)} units, "
                f"e.g. {sorted(known)[:3]}"
            )
