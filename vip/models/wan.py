"""Wan2.1 text-to-video (a DiT, the paper's future work) as a VideoModel: diffusers'
WanTransformer3DModel and AutoencoderKLWan with the UMT5 text encoder, from the published
Diffusers layout (Wan-AI/Wan2.1-T2V-1.3B-Diffusers: transformer/ vae/ text_encoder/
tokenizer/ scheduler/). Units are the transformer blocks ("blocks.0".."blocks.29" in 1.3B,
40 in 14B); each is residual, so a removed block is an identity. The model predicts a
flow velocity (UniPC with prediction_type flow_prediction and flow_shift, as published);
vip.redpo noises and targets accordingly.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from transformers import AutoTokenizer, UMT5EncoderModel

from vip.config import ConfigError, ModelConfig
from vip.models.base import resolve_dtype
from vip.models.codec import WanVaeCodec
from vip.models.diffusion import (META_FILE, REMOVED_UNITS_FILE, DiffusionVideoModel, load_scheduler,
                                  quiet_transformers, read_saved, require_files, weights_file)
from vip.models.units import UNIT_PATTERNS
from vip.redpo import prediction_type

# WanPipeline's defaults for 480p (diffusers 0.42 docs; flow_shift 3.0 is in the published scheduler config)
DEFAULTS = {"frames": 81, "height": 480, "width": 832, "negative_prompt": "", "max_sequence_length": 512}


def clean_prompt(text: str) -> str:
    """WanPipeline's prompt_clean (diffusers pipelines/wan/pipeline_wan.py): ftfy.fix_text where ftfy is
    installed, HTML entities unescaped twice ("&amp;amp;" -> "&"), runs of whitespace made one space."""
    try:
        import ftfy
    except ImportError:
        pass
    else:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def _text_weights(folder: Path) -> str:
    return "model.safetensors.index.json" if (folder / "model.safetensors.index.json").is_file() else "model.safetensors"


def component_files(path: Path) -> list[str]:
    return ["transformer/config.json", f"transformer/{weights_file(path / 'transformer')}",
            "vae/config.json", f"vae/{weights_file(path / 'vae')}",
            "text_encoder/config.json", f"text_encoder/{_text_weights(path / 'text_encoder')}",
            "tokenizer/tokenizer_config.json", "scheduler/scheduler_config.json"]


class WanModel(DiffusionVideoModel):
    backbone = "wan2.1"
    unit_pattern = UNIT_PATTERNS["Wan transformer blocks"]
    denoiser_dir = "transformer"

    def __init__(self, transformer: WanTransformer3DModel, *args, **kwargs):
        super().__init__(transformer, *args, **kwargs)
        # Active only when gradients are: one ReDPO pair (2 clips of 81x480x832) ran out of an
        # H100's 80 GB without it and took 16.6 GiB with it (1.3B, bf16)
        transformer.enable_gradient_checkpointing()

    @property
    def transformer(self) -> WanTransformer3DModel:
        return self.denoiser

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """UMT5 states of the cleaned prompts, padded to max_sequence_length with zeros past each prompt's
        end, as WanPipeline."""
        tok = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
                             max_length=self.meta.get("max_sequence_length", 512), add_special_tokens=True,
                             return_attention_mask=True, return_tensors="pt")
        mask = tok.attention_mask.to(self.device)
        states = self.text_encoder(tok.input_ids.to(self.device), mask).last_hidden_state
        return states * mask[..., None].to(states.dtype)

    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, denoiser=None) -> torch.Tensor:
        """The flow velocity (noise - x0) at timestep t = sigma * num_train_timesteps."""
        return (denoiser or self.transformer)(latents, t, text.to(latents.dtype)).sample

    def check_shape(self) -> None:
        f, h, w = self.meta["frames"], self.meta["height"], self.meta["width"]
        tf = self.codec.time_factor
        step = self.codec.factor * self.transformer.config.patch_size[1]
        if f % tf != 1:
            raise ConfigError(f"config key 'model.frames' must be {tf}k+1 for Wan's VAE (e.g. 81), got {f}")
        for key, v in (("height", h), ("width", w)):
            if v % step:
                raise ConfigError(f"config key 'model.{key}' must be a multiple of {step} for Wan, got {v}")

    @classmethod
    def load(cls, directory: Path, device: str = "cpu", dtype: torch.dtype | None = None,
             backbone: str | None = "wan2.1") -> "WanModel":
        """A directory save() wrote (a pruned or trained student)."""
        directory = Path(directory)
        require_files(directory, [META_FILE, REMOVED_UNITS_FILE], "a saved Wan model (the layout WanModel.save writes)")
        meta, removed = read_saved(directory, backbone)  # the family first: its files are another question
        require_files(directory, component_files(directory), "a saved Wan model")
        transformer = cls.load_denoiser(directory, removed, WanTransformer3DModel, meta["backbone"])
        return cls(transformer, *load_frozen(directory), meta, removed).to(device, dtype)


def load_frozen(path: Path):
    """Text encoder, tokenizer, scheduler and VAE codec: the parts pruning never touches."""
    with quiet_transformers():
        text_encoder = UMT5EncoderModel.from_pretrained(path / "text_encoder")
        tokenizer = AutoTokenizer.from_pretrained(path / "tokenizer")
    scheduler = load_scheduler(path / "scheduler")
    if prediction_type(scheduler) != "flow_prediction":
        raise ConfigError(f"{path / 'scheduler' / 'scheduler_config.json'}: Wan predicts a flow velocity; expected "
                          f"prediction_type 'flow_prediction', got {prediction_type(scheduler)!r}")
    return text_encoder, tokenizer, scheduler, WanVaeCodec(AutoencoderKLWan.from_pretrained(path / "vae"))


def load(path: Path, cfg: ModelConfig) -> WanModel:
    """Registry entry `wan2.1`: the published Diffusers directory, or a saved student."""
    path = Path(path)
    dtype = resolve_dtype(cfg.dtype, cfg.device)
    if (path / META_FILE).is_file():
        return WanModel.load(path, cfg.device, dtype, backbone="wan2.1").configure(cfg)
    require_files(path, component_files(path), "a Wan2.1 T2V directory in Diffusers layout "
                                               "(transformer/ vae/ text_encoder/ tokenizer/ scheduler/ as in "
                                               "Wan-AI/Wan2.1-T2V-1.3B-Diffusers)")
    # config + strict state-dict load, as for a saved student: from_pretrained needs `accelerate`
    # for a class with float32-kept modules, and this is the same code path either way
    transformer = WanModel.load_denoiser(path, [], WanTransformer3DModel, "wan2.1")
    model = WanModel(transformer, *load_frozen(path), {"backbone": "wan2.1", **DEFAULTS})
    return model.to(cfg.device, dtype).configure(cfg)
