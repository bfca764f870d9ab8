"""A VideoModel over diffusers' UNetMotionModel (AnimateDiff architecture): toyvid and AnimateDiff.

Units are motion modules, named by their place in the module tree
("down_blocks.1.motion_modules.0", "mid_block.motion_modules.0", ...). Each is a
residual temporal transformer, so removing one means replacing it by an identity.
The codec is toyvid's lossless space-to-depth, or SD's AutoencoderKL when the saved
directory has a vae/ folder (AnimateDiff).
"""
from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNetMotionModel
from transformers import CLIPTextModel, CLIPTokenizer

from vip.config import ConfigError
from vip.models.codec import SpaceToDepth, VaeCodec
from vip.models.diffusion import (META_FILE, REMOVED_UNITS_FILE, DiffusionVideoModel, load_scheduler,
                                  quiet_transformers, read_saved, require_files, weights_file)
from vip.models.units import UNIT_PATTERNS, SkippedUnit, list_units, remove_units  # noqa: F401 (re-exported)

_UNIT = UNIT_PATTERNS["AnimateDiff motion modules"]


def motion_units(unet) -> list[str]:
    return list_units(unet, _UNIT)


def text_weights(folder: Path) -> str:
    """The text encoder's weights file that transformers' from_pretrained reads (safetensors, sharded or not, or
    the older pytorch_model.bin); its usual name when none is there, for the error."""
    for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"):
        if (folder / name).is_file():
            return name
    return "model.safetensors"


class MotionUNetModel(DiffusionVideoModel):
    backbone = "toyvid"
    unit_pattern = _UNIT
    denoiser_dir = "unet"

    def __init__(self, unet: UNetMotionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 scheduler, codec, meta: dict, removed: list[str] | None = None):
        super().__init__(unet, text_encoder, tokenizer, scheduler, codec, meta, removed)

    @property
    def unet(self) -> UNetMotionModel:
        return self.denoiser

    @unet.setter
    def unet(self, module: UNetMotionModel) -> None:
        self.denoiser = module

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device)).last_hidden_state

    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, denoiser=None) -> torch.Tensor:
        """Raw denoiser output (epsilon or v, per scheduler.config.prediction_type). `denoiser`
        stands in for self.unet when training wraps it (a DeepSpeed engine). Since diffusers
        0.31 the caller repeats the text per frame."""
        frames = latents.shape[2]
        text = text.to(latents.dtype).repeat_interleave(frames, dim=0)
        return (denoiser or self.unet)(latents, t, encoder_hidden_states=text).sample

    def check_shape(self) -> None:
        f, h, w = self.meta["frames"], self.meta["height"], self.meta["width"]
        most = self.unet.config.motion_max_seq_length
        if f > most:
            raise ConfigError(f"config key 'model.frames' is {f} but the motion modules' positional table "
                              f"holds {most} frames")
        step = self.codec.factor * 2 ** (len(self.unet.config.block_out_channels) - 1)
        for key, v in (("height", h), ("width", w)):
            if v % step:
                raise ConfigError(f"config key 'model.{key}' must be a multiple of {step} for this U-Net, got {v}")

    @classmethod
    def load(cls, directory: Path, device: str = "cpu", dtype: torch.dtype | None = None,
             backbone: str | None = None) -> "MotionUNetModel":
        """A directory save() wrote. `backbone`, when given, must be the family it records."""
        directory = Path(directory)
        require_files(directory, [META_FILE, REMOVED_UNITS_FILE],
                      "a saved motion-U-Net model (the layout MotionUNetModel.save writes)")
        meta, removed = read_saved(directory, backbone)  # the family first: its files are another question
        has_vae = (directory / "vae").is_dir()
        require_files(directory, ["unet/config.json", f"unet/{weights_file(directory / 'unet')}",
                                  "scheduler/scheduler_config.json",
                                  "text_encoder/config.json",
                                  f"text_encoder/{text_weights(directory / 'text_encoder')}",
                                  "tokenizer/tokenizer_config.json"]
                      + (["vae/config.json", f"vae/{weights_file(directory / 'vae')}"] if has_vae else []),
                      f"a saved {meta.get('backbone', 'toyvid')} model")
        unet = cls.load_denoiser(directory, removed, UNetMotionModel, meta.get("backbone", "toyvid"))
        with quiet_transformers():
            text_encoder = CLIPTextModel.from_pretrained(directory / "text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(directory / "tokenizer")
        codec = (VaeCodec(AutoencoderKL.from_pretrained(directory / "vae")) if has_vae
                 else SpaceToDepth(meta.get("space_to_depth", 2)))
        model = cls(unet, text_encoder, tokenizer, load_scheduler(directory / "scheduler"), codec, meta, removed)
        return model.to(device, dtype)
