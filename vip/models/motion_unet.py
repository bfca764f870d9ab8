"""A VideoModel over diffusers' UNetMotionModel (AnimateDiff architecture).

Units are motion modules, named by their place in the module tree
("down_blocks.1.motion_modules.0", "mid_block.motion_modules.0", ...). Each is a
residual temporal transformer, so removing one means replacing it by an identity.
"""
from __future__ import annotations

import copy
import json
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import DDIMScheduler, UNetMotionModel
from safetensors.torch import load_file
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer
from transformers.utils import logging as hf_logging

from vip.config import ConfigError
from vip.models.base import VideoModel
from vip.models.codec import SpaceToDepth

_UNIT = re.compile(r"^(down_blocks\.\d+|mid_block|up_blocks\.\d+)\.motion_modules\.\d+$")
REMOVED_UNITS_FILE = "removed_units.json"


class SkippedUnit(nn.Module):
    """Identity stand-in for a removed motion module; accepts its call signatures."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextmanager
def quiet_transformers():
    """transformers draws a progress bar for one small file on every save and load: noise in our output."""
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def _parent_and_index(root: nn.Module, name: str) -> tuple[nn.ModuleList, int]:
    parent_name, index = name.rsplit(".", 1)
    return root.get_submodule(parent_name), int(index)


def motion_units(unet: nn.Module) -> list[str]:
    return [n for n, m in unet.named_modules() if _UNIT.match(n) and not isinstance(m, SkippedUnit)]


def remove_units(unet: nn.Module, units: list[str]) -> None:
    for name in units:
        parent, i = _parent_and_index(unet, name)
        parent[i] = SkippedUnit()


class MotionUNetModel(VideoModel):
    backbone = "toyvid"

    def __init__(self, unet: UNetMotionModel, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 scheduler: DDIMScheduler, codec: SpaceToDepth, meta: dict, removed: list[str] | None = None):
        self.unet, self.text_encoder, self.tokenizer = unet.eval(), text_encoder.eval(), tokenizer
        self.scheduler, self.codec, self.meta = scheduler, codec, dict(meta)
        self.removed = list(removed or [])
        self.backbone = meta.get("backbone", "toyvid")

    # ---- units ----
    def units(self) -> list[str]:
        return motion_units(self.unet)

    def unit_params(self) -> dict[str, int]:
        return {u: sum(p.numel() for p in self.unet.get_submodule(u).parameters()) for u in self.units()}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    @contextmanager
    def disabled(self, units: list[str]):
        self.check_units(units)
        saved = []
        try:
            for name in units:
                parent, i = _parent_and_index(self.unet, name)
                saved.append((parent, i, parent[i]))
                parent[i] = SkippedUnit()
            yield
        finally:
            for parent, i, module in reversed(saved):
                parent[i] = module

    def pruned(self, units: list[str]) -> "MotionUNetModel":
        self.check_units(units)
        unet = copy.deepcopy(self.unet)
        remove_units(unet, units)
        return MotionUNetModel(unet, self.text_encoder, self.tokenizer, self.scheduler, self.codec,
                               self.meta, self.removed + list(units))

    # ---- sampling ----
    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        f = self.codec.factor
        c = self.unet.config.in_channels
        return (c, self.meta["frames"], self.meta["height"] // f, self.meta["width"] // f)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(prompts, padding="max_length", truncation=True,
                             max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        return self.text_encoder(ids.to(self.device)).last_hidden_state

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def initial_noise(self, seeds: list[int]) -> torch.Tensor:
        """One generator per sample, so a seed gives the same noise whatever the batch."""
        noise = [torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(noise).to(self.device)

    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, denoiser=None) -> torch.Tensor:
        """Raw denoiser output (epsilon or v, per scheduler.config.prediction_type). `denoiser`
        stands in for self.unet when training wraps it (a DeepSpeed engine)."""
        frames = latents.shape[2]
        out = (denoiser or self.unet)(latents, t, encoder_hidden_states=text.repeat_interleave(frames, dim=0))
        return out.sample

    @torch.no_grad()
    def sample_latents(self, prompts, seeds, steps=None, guidance=None) -> torch.Tensor:
        """Final latents [B, C, F, h, w] (what ReDPO trains on); decode() turns them into clips."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        steps = steps or self.meta.get("steps", 10)
        guidance = self.meta.get("guidance", 1.0) if guidance is None else guidance
        sched = copy.deepcopy(self.scheduler)  # set_timesteps mutates it
        sched.set_timesteps(steps)
        text = self.encode_prompts(list(prompts))
        if guidance != 1.0:
            text = torch.cat([self.encode_prompts([""] * len(prompts)), text])
        x = self.initial_noise(seeds) * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = torch.cat([x, x]) if guidance != 1.0 else x
            inp = sched.scale_model_input(inp, t)
            out = self.predict(inp, t.expand(inp.shape[0]).to(self.device), text)
            if guidance != 1.0:
                uncond, cond = out.chunk(2)
                out = uncond + guidance * (cond - uncond)
            x = sched.step(out, t, x).prev_sample
        return x.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(latents.float().to(self.device)).cpu()

    def generate(self, prompts, seeds, steps=None, guidance=None) -> torch.Tensor:
        return self.decode(self.sample_latents(prompts, seeds, steps, guidance))

    def trainable_module(self) -> nn.Module:
        """What ReDPO trains: the denoiser (the text encoder stays frozen)."""
        return self.unet

    # ---- persistence ----
    def save(self, directory: Path) -> None:
        directory = Path(directory)
        self.unet.save_pretrained(directory / "unet")
        with quiet_transformers():
            self.text_encoder.save_pretrained(directory / "text_encoder")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        self.scheduler.save_pretrained(directory / "scheduler")
        (directory / "vip_model.json").write_text(json.dumps(self.meta, indent=2) + "\n")
        (directory / REMOVED_UNITS_FILE).write_text(json.dumps(self.removed, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, device: str = "cpu") -> "MotionUNetModel":
        directory = Path(directory)
        missing = [f for f in ("vip_model.json", REMOVED_UNITS_FILE, "unet/config.json") if not (directory / f).is_file()]
        if missing:
            raise ConfigError(f"model directory {str(directory)!r} is not a toyvid model: {missing[0]} is missing "
                              "(expected the layout MotionUNetModel.save writes)")
        meta = json.loads((directory / "vip_model.json").read_text())
        removed = json.loads((directory / REMOVED_UNITS_FILE).read_text())
        # Build the full tree, remove what was pruned, then load strictly: a missing or
        # unexpected tensor is an error, never a silently random unit.
        unet = UNetMotionModel.from_config(UNetMotionModel.load_config(directory / "unet"))
        remove_units(unet, removed)
        unet.load_state_dict(load_file(directory / "unet" / "diffusion_pytorch_model.safetensors"), strict=True)
        with quiet_transformers():
            text_encoder = CLIPTextModel.from_pretrained(directory / "text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(directory / "tokenizer")
        scheduler = DDIMScheduler.from_pretrained(directory / "scheduler")
        model = cls(unet.to(device), text_encoder.to(device), tokenizer, scheduler,
                    SpaceToDepth(meta.get("space_to_depth", 2)), meta, removed)
        return model
