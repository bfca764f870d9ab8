"""What every latent-diffusion VideoModel here shares (toyvid, AnimateDiff, Wan): units as
identities in a ModuleList of the denoiser, the seeded sampling loop with classifier-free
guidance, and the saved layout: the family's own component folders (diffusers /
transformers save_pretrained) plus vip_model.json (the family and sampling settings) and
removed_units.json (what was pruned). A family module says how to encode prompts, call its
denoiser and load its components; nothing else is written twice.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import diffusers
import torch
from safetensors.torch import load_file
from torch import nn
from transformers.utils import logging as hf_logging

from vip.config import ConfigError, ModelConfig
from vip.models.base import VideoModel
from vip.models.units import list_units, remove_units, units_skipped

META_FILE = "vip_model.json"
REMOVED_UNITS_FILE = "removed_units.json"
WEIGHTS = "diffusion_pytorch_model.safetensors"
# samplers a saved model may name in scheduler/scheduler_config.json
SCHEDULERS = ("DDIMScheduler", "DDPMScheduler", "EulerDiscreteScheduler", "UniPCMultistepScheduler",
              "FlowMatchEulerDiscreteScheduler", "DPMSolverMultistepScheduler")


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


def require_files(directory: Path, files: list[str], what: str) -> None:
    missing = [f for f in files if not (Path(directory) / f).is_file()]
    if missing:
        raise ConfigError(f"model directory {str(directory)!r} is not {what}: {missing[0]} is missing")


def weights_file(folder: Path) -> str:
    """The safetensors weights of a diffusers component folder: plain, sharded (index) or the
    fp16 variant the hub also publishes. Returns the name to check for / read."""
    for name in (WEIGHTS, WEIGHTS + ".index.json", "diffusion_pytorch_model.fp16.safetensors"):
        if (folder / name).is_file():
            return name
    return WEIGHTS


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def save_frozen(component: nn.Module, folder: Path) -> None:
    """A frozen component (text encoder, VAE: never trained) is the folder it was read from, so that
    folder's weight files are hard-linked (other files copied) instead of written again: a stage's
    student then costs its denoiser only (Wan's text encoder alone is 11 GB), in the published
    precision, and stays whole if the source is deleted. Across file systems the files are copied;
    a component not read from a folder is saved."""
    config = getattr(component, "config", None)  # diffusers: a dict that records where it was read from
    source = getattr(component, "name_or_path", "") or (
        config.get("_name_or_path", "") if isinstance(config, dict) else "")
    source, folder = (Path(source) if source else None), Path(folder)
    if source is not None and source.resolve() == folder.resolve():
        return  # saved onto where it was read from: the files are its weights already
    if folder.exists():  # writing into old files could write through a hard link into another model's
        shutil.rmtree(folder)
    if source is None or not source.is_dir() or not (source / "config.json").is_file():
        component.save_pretrained(folder)
        return
    for src in sorted(p for p in source.rglob("*") if p.is_file()):
        dst = folder / src.relative_to(source)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix not in WEIGHT_SUFFIXES:  # configs are small, and a person may edit one: a copy
            shutil.copy2(src, dst)
            continue
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(src, dst)


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    name = weights_file(folder)
    if name.endswith(".index.json"):
        shards = sorted(set(json.loads((folder / name).read_text())["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(folder / shard))
        return state
    return load_file(folder / name)


def load_scheduler(folder: Path):
    name = json.loads((folder / "scheduler_config.json").read_text()).get("_class_name")
    if name not in SCHEDULERS:
        raise ConfigError(f"{folder / 'scheduler_config.json'}: scheduler {name!r} is not supported; "
                          f"expected one of {', '.join(SCHEDULERS)}")
    return getattr(diffusers, name).from_pretrained(folder)


def read_saved(directory: Path, backbone: str | None) -> tuple[dict, list[str]]:
    """vip_model.json and removed_units.json of a directory our save() wrote; a model of another
    family is refused (its units and sampler mean nothing to this one)."""
    meta = json.loads((directory / META_FILE).read_text())
    recorded = meta.get("backbone", "toyvid")
    if backbone is not None and recorded != backbone:
        raise ConfigError(f"model directory {str(directory)!r} holds a {recorded!r} model ({META_FILE}) but "
                          f"model.backbone is {backbone!r}; a saved model loads only as the family it was made from")
    return meta, json.loads((directory / REMOVED_UNITS_FILE).read_text())


def uses_guidance(guidance: float) -> bool:
    """Classifier-free guidance runs only above 1, as in diffusers' pipelines (AnimateDiffPipeline,
    WanPipeline: do_classifier_free_guidance = guidance_scale > 1); at or below 1 the prompt alone."""
    return guidance > 1.0


class DiffusionVideoModel(VideoModel):
    """A denoiser whose units match `unit_pattern`, a frozen text encoder, a scheduler and a codec."""

    unit_pattern: re.Pattern
    denoiser_dir: str  # the denoiser's folder in the saved layout: "unet", "transformer"

    def __init__(self, denoiser: nn.Module, text_encoder: nn.Module, tokenizer, scheduler, codec, meta: dict,
                 removed: list[str] | None = None):
        self.denoiser, self.text_encoder, self.tokenizer = denoiser.eval(), text_encoder.eval(), tokenizer
        self.scheduler, self.codec, self.meta = scheduler, codec, dict(meta)
        self.removed = list(removed or [])
        self.backbone = self.meta.setdefault("backbone", type(self).backbone)

    # ---- units ----
    def units(self) -> list[str]:
        return list_units(self.denoiser, self.unit_pattern)

    def unit_params(self) -> dict[str, int]:
        return {u: sum(p.numel() for p in self.denoiser.get_submodule(u).parameters()) for u in self.units()}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.denoiser.parameters())

    @contextmanager
    def disabled(self, units: list[str]):
        self.check_units(units)
        with units_skipped(self.denoiser, units):
            yield

    def pruned(self, units: list[str]) -> "DiffusionVideoModel":
        """A copy with its own denoiser; the frozen text encoder, tokenizer and codec are shared."""
        self.check_units(units)
        student = copy.copy(self)
        student.denoiser = copy.deepcopy(self.denoiser)
        remove_units(student.denoiser, units)
        student.meta, student.removed = dict(self.meta), self.removed + list(units)
        return student

    # ---- conditioning and the denoiser (per family) ----
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def predict(self, latents, t, text, denoiser=None) -> torch.Tensor:
        raise NotImplementedError

    # ---- sampling ----
    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.denoiser.parameters()).dtype

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        f, h, w = self.codec.latent_size(self.meta["frames"], self.meta["height"], self.meta["width"])
        return (self.denoiser.config.in_channels, f, h, w)

    def initial_noise(self, seeds: list[int]) -> torch.Tensor:
        """One generator per sample, so a seed gives the same noise whatever the batch."""
        noise = [torch.randn(self.latent_shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(noise).to(self.device)

    @torch.no_grad()
    def sample_latents(self, prompts, seeds, steps=None, guidance=None) -> torch.Tensor:
        """Final latents [B, C, F, h, w] in float32 (what ReDPO trains on); decode() turns them
        into clips. The latents and the scheduler stay in float32; only the denoiser runs in
        the model's dtype."""
        if len(prompts) != len(seeds):
            raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
        guidance = self.meta.get("guidance", 1.0) if guidance is None else guidance
        text = self.encode_prompts(list(prompts))
        uncond = self.negative_text(len(prompts)) if uses_guidance(guidance) else None
        return self.denoise(text, uncond, seeds, steps, guidance)

    def negative_text(self, n: int) -> torch.Tensor:
        """The unconditional branch of classifier-free guidance: the negative prompt, n times."""
        return self.encode_prompts([self.meta.get("negative_prompt", "")] * n)

    @torch.no_grad()
    def denoise(self, text: torch.Tensor, uncond: torch.Tensor | None, seeds: list[int], steps: int | None = None,
                guidance: float | None = None, denoiser=None) -> torch.Tensor:
        """The sampling loop on encoded conditioning (text [B, ...], uncond likewise or None without
        guidance); both CFG branches in one forward. `denoiser` stands in for the model's own (the
        gated, compiled one of vip.steps.loo.engine)."""
        steps = steps or self.meta.get("steps", 10)
        guidance = self.meta.get("guidance", 1.0) if guidance is None else guidance
        sched = copy.deepcopy(self.scheduler)  # set_timesteps and multistep solvers mutate it
        sched.set_timesteps(steps)
        cfg = uses_guidance(guidance)
        if cfg:
            text = torch.cat([uncond, text])
        x = self.initial_noise(seeds) * sched.init_noise_sigma
        for t in sched.timesteps:
            inp = torch.cat([x, x]) if cfg else x
            inp = sched.scale_model_input(inp, t)
            out = self.predict(inp.to(self.dtype), t.expand(inp.shape[0]).to(self.device), text,
                               denoiser=denoiser).float()
            if cfg:
                u, c = out.chunk(2)
                out = u + guidance * (c - u)
            x = sched.step(out, t, x).prev_sample
        return x.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.codec.decode(latents.float().to(self.device)).cpu()

    def generate(self, prompts, seeds, steps=None, guidance=None) -> torch.Tensor:
        return self.decode(self.sample_latents(prompts, seeds, steps, guidance))

    def trainable_module(self) -> nn.Module:
        """What ReDPO trains: the denoiser (the text encoder and codec stay frozen)."""
        return self.denoiser

    # ---- configuration, devices ----
    def configure(self, cfg: ModelConfig) -> "DiffusionVideoModel":
        """Sampling settings from the run config; frames / height / width only where set (0 = keep)."""
        self.meta.update(steps=cfg.steps, guidance=cfg.guidance)
        for key in ("frames", "height", "width"):
            if getattr(cfg, key):
                self.meta[key] = getattr(cfg, key)
        self.check_shape()
        return self

    def check_shape(self) -> None:
        """Family rules on frames / height / width (ConfigError naming the key)."""

    def to(self, device, dtype: torch.dtype | None = None) -> "DiffusionVideoModel":
        """Denoiser and text encoder to `dtype` as a whole (the trainer trains in one dtype too);
        torch's own .to, as diffusers' override warns about modules it would keep in float32."""
        nn.Module.to(self.denoiser, device=device, dtype=dtype)
        self.text_encoder.to(device=device, dtype=dtype)
        if hasattr(self.codec, "vae"):
            self.codec.vae.to(device)
        return self

    # ---- persistence ----
    def save(self, directory: Path) -> None:
        directory = Path(directory)
        self.denoiser.save_pretrained(directory / self.denoiser_dir)
        with quiet_transformers():
            save_frozen(self.text_encoder, directory / "text_encoder")
        self.tokenizer.save_pretrained(directory / "tokenizer")
        self.scheduler.save_pretrained(directory / "scheduler")
        if hasattr(self.codec, "vae"):
            save_frozen(self.codec.vae, directory / "vae")
        (directory / META_FILE).write_text(json.dumps(self.meta, indent=2) + "\n")
        (directory / REMOVED_UNITS_FILE).write_text(json.dumps(self.removed, indent=2) + "\n")

    @classmethod
    def load_denoiser(cls, directory: Path, removed: list[str], denoiser_class, backbone: str) -> nn.Module:
        """Build the full tree from its config, put identities where units were pruned, then
        load strictly: a missing or unexpected tensor is an error, never a silently random unit."""
        folder = directory / cls.denoiser_dir
        denoiser = denoiser_class.from_config(denoiser_class.load_config(folder))
        full = list_units(denoiser, cls.unit_pattern)
        bad = [u for u in removed if u not in full]
        if bad:
            from vip.models.units import family_of_unit

            other = family_of_unit(bad[0])
            raise ConfigError(f"{directory / REMOVED_UNITS_FILE}: {bad[0]!r} is not a unit of this {backbone} model"
                              f"{f' (it names {other})' if other else ''}; its units look like {full[0]!r}")
        remove_units(denoiser, removed)
        denoiser.load_state_dict(read_state_dict(folder), strict=True)
        return denoiser
