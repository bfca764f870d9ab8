"""The registry's entry for VideoCrafter2: a converted directory, or the published model.ckpt converted
in memory. Apart from model.py so that the model does not import its converter (convert.py builds a
VideoCrafter2Model from the checkpoint: the converter sits above the model, this loader above both)."""
from __future__ import annotations

from pathlib import Path

import torch

from vip.config import ConfigError, ModelConfig
from vip.models.base import resolve_dtype
from vip.models.videocrafter2.convert import convert_checkpoint
from vip.models.videocrafter2.model import VideoCrafter2Model


def load(path: Path, cfg: ModelConfig) -> VideoCrafter2Model:
    """Registry entry: a converted directory, or a directory holding the published model.ckpt
    and a tokenizer/ folder (converted in memory on every load: slow, but no second copy)."""
    path = Path(path)
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"config key 'model.device': {cfg.device!r} but CUDA is not available")
    if not (path / "vip_model.json").is_file() and (path / "model.ckpt").is_file():
        dtype = resolve_dtype(cfg.dtype, cfg.device)
        model = convert_checkpoint(path / "model.ckpt", path / "tokenizer")
        for m in (model.unet, model.vae, model.text_encoder):
            m.to(cfg.device, dtype)
    else:
        model = VideoCrafter2Model.load(path, device=cfg.device, dtype=cfg.dtype)
    overrides = {"steps": cfg.steps, "guidance": cfg.guidance, "frames": cfg.frames, "height": cfg.height,
                 "width": cfg.width, "fps": cfg.fps}
    model.meta.update({k: v for k, v in overrides.items() if k in ("steps", "guidance") or v})
    f = model.vae_factor * 2 ** (len(model.unet.config.channel_mult) - 1)
    if model.meta["height"] % f or model.meta["width"] % f:
        raise ConfigError(f"config keys 'model.height'/'model.width' ({model.meta['height']}x{model.meta['width']}) "
                          f"must be multiples of {f} (the VAE's and the U-Net's downsampling)")
    return model
