"""Backbone families by name; each loads from a local directory in its published format."""
from __future__ import annotations

from pathlib import Path

from vip.config import ConfigError, ModelConfig
from vip.models.base import VideoModel

SHIPPED_TEACHER = Path(__file__).resolve().parents[1] / "toyvid" / "weights" / "teacher"


def _load_toyvid(path: Path, cfg: ModelConfig) -> VideoModel:
    from vip.models.motion_unet import MotionUNetModel

    model = MotionUNetModel.load(path, device=cfg.device)
    model.meta.update(steps=cfg.steps, guidance=cfg.guidance)
    return model


BACKBONES = {"toyvid": _load_toyvid}


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
    return BACKBONES[cfg.backbone](Path(path), cfg)
