"""Backbone families by name; each loads from a local directory in its published format.

A family lives in its own module and is imported only when a config names it, so the
embedded default never imports (or needs) another family's dependencies."""
from __future__ import annotations

import importlib
from pathlib import Path

from vip.config import ConfigError, ModelConfig
from vip.models.base import VideoModel

SHIPPED_TEACHER = Path(__file__).resolve().parents[1] / "toyvid" / "weights" / "teacher"

# name -> "module:function"; the function is load(path: Path, cfg: ModelConfig) -> VideoModel
BACKBONES = {
    "toyvid": "vip.models.toyvid:load",
    "animatediff": "vip.models.animatediff:load",
    "animatediff_lightning": "vip.models.animatediff:load_lightning",
    "videocrafter2": "vip.models.videocrafter2:load",
    "wan2.1": "vip.models.wan:load",
}


# name -> the folder of a model directory the family's save() writes that holds its denoiser: the one
# part pruning and training change (the family's denoiser_dir; VideoCrafter2Model saves unet/)
DENOISER_DIRS = {"toyvid": "unet", "animatediff": "unet", "animatediff_lightning": "unet",
                 "videocrafter2": "unet", "wan2.1": "transformer"}


def register(name: str, target: str, denoiser_dir: str = "unet") -> None:
    BACKBONES[name] = target
    DENOISER_DIRS[name] = denoiser_dir


def denoiser_dir(backbone: str) -> str:
    check_backbone(backbone)
    return DENOISER_DIRS[backbone]


def check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise ConfigError(f"config key 'model.backbone': unknown backbone {name!r}; expected one of: {', '.join(BACKBONES)}")


def base_model_path(cfg: ModelConfig) -> Path:
    if cfg.path:
        return Path(cfg.path)
    if cfg.backbone == "toyvid":
        return SHIPPED_TEACHER
    raise ConfigError(f"config key 'model.path' is required for backbone {cfg.backbone!r} (a local model directory)")


def load_video_model(cfg: ModelConfig, path: Path) -> VideoModel:
    check_backbone(cfg.backbone)
    if not Path(path).is_dir():
        raise ConfigError(f"model directory {str(path)!r} does not exist")
    module, func = BACKBONES[cfg.backbone].split(":")
    return getattr(importlib.import_module(module), func)(Path(path), cfg)
