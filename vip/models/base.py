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
            from vip.models.units import family_of_unit

            family = family_of_unit(bad[0])
            mine = family_of_unit(next(iter(known), ""))
            other = f" ({family}: a unit list from another backbone?)" if family and family != mine else ""
            raise UnknownUnitError(
                f"unknown unit {bad[0]!r}{other}; this {self.backbone} model has {len(known)} units, "
                f"e.g. {sorted(known)[:3]}"
            )


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str, device: str, key: str = "model.dtype") -> torch.dtype:
    """auto = bfloat16 on CUDA, float32 elsewhere; float16 on a CPU is refused (it cannot run
    convolutions and attention there)."""
    if name == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"config key {key!r} must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    if name == "float16" and not str(device).startswith("cuda"):
        raise ConfigError(f"config key {key!r}: float16 is a dtype the device {device!r} cannot run; "
                          "use float32 or bfloat16 on CPU (or auto)")
    return DTYPES[name]
