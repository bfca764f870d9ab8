"""VideoCrafter2 behind the VideoModel interface.

Units are whole U-Net blocks (input_blocks.i, middle_block, output_blocks.i) whose output
has their input's shape; removing one puts an identity in its place (docs/decisions.md).
Sampling is lvdm's: DDIM with the signal scale (scheduler.py), eta 1 by default, the
unconditional branch conditioned on the empty prompt, fps conditioning, one batched
forward for both CFG branches, and per-sample generators for the initial and the
per-step noise, so a seed gives the same clip whatever else is in the batch.
"""
from __future__ import annotations

import copy
import html
import json
import re
from contextlib import contextmanager
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from vip.config import ConfigError
from vip.models.base import VideoModel, resolve_dtype
from vip.models.diffusion import quiet_transformers, save_frozen
from vip.models.videocrafter2.scheduler import VideoCrafterDDIMScheduler
from vip.models.videocrafter2.unet3d import Block, SkippedBlock, VideoCrafterUNet3D

BACKBONE = "videocrafter2"
REMOVED_UNITS_FILE = "removed_units.json"
REQUIRED_FILES = ("vip_model.json", REMOVED_UNITS_FILE, "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                  "vae/config.json", "text_encoder/config.json", "tokenizer/tokenizer_config.json",
                  "scheduler/scheduler_config.json")
def _parent(root: nn.Module, unit: str) -> tuple[nn.Module, str]:
    parent, _, key = unit.rpartition(".")
    return (root.get_submodule(parent) if parent else root), key


def unet_units(unet: VideoCrafterUNet3D) -> list[str]:
    names = [f"input_blocks.{i}" for i in range(1, len(unet.input_blocks))] + ["middle_block"] + \
            [f"output_blocks.{i}" for i in range(len(unet.output_blocks))]
    return [n for n in names if isinstance(m := unet.get_submodule(n), Block) and m.keeps_shape]


def remove_units(unet: VideoCrafterUNet3D, units: list[str]) -> None:
    for unit in units:
        setattr(*_parent(unet, unit), SkippedBlock())


def load_strict(module: nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """load_state_dict(strict) with a one-line ConfigError naming the first bad key."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    bad = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or extra or bad:
        what = (f"key {missing[0]!r} is missing" if missing else f"unexpected key {extra[0]!r}" if extra else
                f"key {bad[0]!r} has shape {tuple(state[bad[0]].shape)}, the config gives {tuple(expected[bad[0]].shape)}")
        raise ConfigError(f"{where}: {what} (weights and config/removed_units.json do not match)")
    module.load_state_dict(state, strict=True, assign=True)


_SINGLE_QUOTES = re.compile("[\u02bc\u2018-\u201b]")  # ftfy's uncurl_quotes (chardata.py SINGLE/DOUBLE_QUOTE_RE)
_DOUBLE_QUOTES = re.compile("[\u201c-\u201f]")


def open_clip_clean(text: str) -> str:
    """open_clip's basic_clean (tokenizer.py): ftfy.fix_text, html.unescape twice, strip. Of ftfy's fixes only
    uncurl_quotes is reproduced (ftfy is not a dependency): ligatures, full-width letters and mojibake pass
    unfixed. Lower-casing and whitespace are the CLIP tokenizer's own normalizer."""
    text = _DOUBLE_QUOTES.sub('"', _SINGLE_QUOTES.sub("'", text))
    return html.unescape(html.unescape(text)).strip()


def open_clip_tokenizer(tokenizer: CLIPTokenizer) -> CLIPTokenizer:
    """The tokenizer without "!" as a special token. A CLIPTokenizer made with pad_token="!" (as Stable Diffusion
    2's tokenizer config and our earlier converter did) splits every "!" of a prompt out as that special token,
    id 0, where open_clip's BPE gives "!</w>" (256 in CLIP's vocabulary) or a merge; rebuilt here from its own
    vocabulary and merges, which keeps every other id."""
    if "!" not in tokenizer.all_special_tokens:
        return tokenizer
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return CLIPTokenizer(vocab=model["vocab"], merges=merges, model_max_length=tokenizer.model_max_length)


class VideoCrafter2Model(VideoModel):
    backbone = BACKBONE

    def __init__(self, unet: VideoCrafterUNet3D, vae: AutoencoderKL, text_encoder: CLIPTextModel,
                 tokenizer: CLIPTokenizer, scheduler: VideoCrafterDDIMScheduler, meta: dict,
                 removed: list[str] | None = None):
        self.unet, self.vae, self.text_encoder = unet.eval(), vae.eval(), text_encoder.eval()
        self.tokenizer, self.scheduler = open_clip_tokenizer(tokenizer), scheduler
        self.meta = dict(meta, backbone=BACKBONE)
        self.removed = list(removed or [])

    # ---- units ----
    def units(self) -> list[str]:
        return unet_units(self.unet)

    def unit_params(self) -> dict[str, int]:
        return {u: sum(p.numel() for p in self.unet.get_submodule(u).parameters()) for u in self.units()}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    @contextmanager
    def disabled(self, units: list[str]):
        self.check_units(units)
        saved = []
        try:
            for unit in units:
                parent, key = _parent(self.unet, unit)
                saved.append((parent, key, getattr(parent, key)))
                setattr(parent, key, SkippedBlock())
            yield
        finally:
            for parent, key, module in reversed(saved):
                setattr(parent, key, module)

    def pruned(self, units: list[str]) -> "VideoCrafter2Model":
        self.check_units(units)
        unet = copy.deepcopy(self.unet)
        remove_units(unet, units)
        return VideoCrafter2Model(unet, self.vae, self.text_encoder, self.tokenizer, self.scheduler, self.meta,
                                  self.removed + list(units))

    # ---- conditioning and the denoiser ----
    @property
    def device(self) -> torch.device:
        return self.unet.conv_out.weight.device

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def token_ids(self, prompts: list[str]) -> torch.Tensor:
        """open_clip.tokenize, which VideoCrafter's FrozenOpenCLIPEmbedder calls: [sot] + BPE + [eot], cut to the
        context with eot last, then zeros (id 0 is "!": open_clip pads with it, and the U-Net's cross-attention
        reads every position). The text is first cleaned like open_clip's basic_clean (HTML entities, curly quotes)."""
        length = self.tokenizer.model_max_length
        rows = self.tokenizer([open_clip_clean(p) for p in prompts], truncation=True, max_length=length).input_ids
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
        return ids

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.text_encoder(self.token_ids(list(prompts)).to(self.text_encoder.device)).last_hidden_state

    def predict(self, latents: torch.Tensor, t: torch.Tensor, text: torch.Tensor, denoiser=None) -> torch.Tensor:
        """Epsilon for latents [B, 4, F, h, w] at timesteps t [B], at the model's fps."""
        return (denoiser or self.unet)(latents, t, encoder_hidden_states=text, fps=self.meta["fps"])

    def trainable_module(self) -> nn.Module:
        return self.unet

    # ---- sampling ----
    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        f = self.vae_factor
        return (self.unet.config.in_channels, self.meta["frames"], self.meta["height"] // f, self.meta["width"] // f)

    @torch.no_grad()
    def sample_latents(self, prompts, seeds, steps=None, guidance=None) -> torch.Tensor:
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        steps = steps or self.meta["steps"]
        guidance = self.meta["guidance"] if guidance is None else guidance
        eta = float(self.meta.get("eta", 0.0))
        sched = copy.deepcopy(self.scheduler)  # set_timesteps mutates it
        sched.set_timesteps(steps)
        cfg = guidance != 1.0
        text = self.encode_prompts(list(prompts))
        if cfg:  # lvdm's uncond_type empty_seq: the empty prompt's embedding
            text = torch.cat([self.encode_prompts([""] * len(prompts)), text])
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]

        def noise():  # one generator per sample: a seed's noise does not depend on the batch
            return torch.stack([torch.randn(self.latent_shape, generator=g) for g in gens]).to(self.device)

        x = noise()
        for t in sched.timesteps:
            inp = torch.cat([x, x]) if cfg else x
            out = self.predict(inp, t.expand(inp.shape[0]).to(self.device), text).float()
            if cfg:
                uncond, cond = out.chunk(2)
                out = uncond + guidance * (cond - uncond)
            x = sched.step(out, t, x, eta=eta, variance_noise=noise() if eta > 0 else None).prev_sample
        return x.float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """Frame by frame through the image VAE (lvdm's decode_first_stage_2DAE), in chunks of frames."""
        b, c, f, h, w = latents.shape
        z = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w) / self.vae.config.scaling_factor
        dtype = self.vae.dtype
        frames = [self.vae.decode(z[i:i + chunk].to(self.device, dtype)).sample.float().cpu()
                  for i in range(0, b * f, chunk)]
        video = torch.cat(frames).reshape(b, f, 3, *frames[0].shape[-2:])
        return ((video + 1) / 2).clamp(0, 1)

    def generate(self, prompts, seeds, steps=None, guidance=None) -> torch.Tensor:
        return self.decode(self.sample_latents(prompts, seeds, steps, guidance))

    # ---- persistence ----
    def save(self, directory: Path) -> None:
        directory = Path(directory)
        self.unet.save_pretrained(directory / "unet")
        save_frozen(self.vae, directory / "vae")
        with quiet_transformers():
            save_frozen(self.text_encoder, directory / "text_encoder")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        self.scheduler.save_pretrained(directory / "scheduler")
        (directory / "vip_model.json").write_text(json.dumps(self.meta, indent=2) + "\n")
        (directory / REMOVED_UNITS_FILE).write_text(json.dumps(self.removed, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path, device: str = "cpu", dtype: str = "auto") -> "VideoCrafter2Model":
        directory = Path(directory)
        torch_dtype = resolve_dtype(dtype, device)
        missing = [f for f in REQUIRED_FILES if not (directory / f).is_file()]
        if missing:
            raise ConfigError(f"model directory {str(directory)!r} is not a converted VideoCrafter2 model: "
                              f"{missing[0]} is missing (convert model.ckpt with "
                              "`python -m vip.models.videocrafter2.convert`)")
        meta = json.loads((directory / "vip_model.json").read_text())
        if meta.get("backbone") != BACKBONE:
            raise ConfigError(f"{directory / 'vip_model.json'}: backbone {meta.get('backbone')!r}, "
                              f"expected {BACKBONE!r} (a model or unit list from another family)")
        removed = json.loads((directory / REMOVED_UNITS_FILE).read_text())
        config = VideoCrafterUNet3D.load_config(directory / "unet")
        with torch.device("meta"):  # the safetensors file supplies every tensor (the U-Net has no buffers)
            unet = VideoCrafterUNet3D.from_config(config)
        unknown = [u for u in removed if u not in unet_units(unet)]
        if unknown:
            raise ConfigError(f"{directory / REMOVED_UNITS_FILE}: {unknown[0]!r} is not a VideoCrafter2 unit")
        remove_units(unet, removed)
        load_strict(unet, load_file(directory / "unet" / "diffusion_pytorch_model.safetensors"),
                    str(directory / "unet"))
        vae = AutoencoderKL.from_pretrained(directory / "vae")
        with quiet_transformers():
            text_encoder = CLIPTextModel.from_pretrained(directory / "text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(directory / "tokenizer")
        scheduler = VideoCrafterDDIMScheduler.from_pretrained(directory / "scheduler")
        modules = (m.to(device, torch_dtype) for m in (unet, vae, text_encoder))
        return cls(*modules, tokenizer, scheduler, meta, removed)
