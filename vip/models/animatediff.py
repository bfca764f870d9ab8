"""AnimateDiff (v1-5-2, v3) and AnimateDiff-Lightning: Stable Diffusion 1.5's U-Net, VAE and
CLIP text encoder with a MotionAdapter, joined by diffusers' UNetMotionModel.from_unet2d.

model.path is an SD1.5 directory in diffusers layout (runwayml/stable-diffusion-v1-5) and
model.adapter the motion modules: a MotionAdapter directory (guoyww/animatediff-motion-
adapter-v1-5-2 or -v1-5-3) or, for Lightning, the published single file
animatediff_lightning_{1,2,4,8}step_diffusers.safetensors (a MotionAdapter state dict).
A directory our own save() wrote (a pruned student) loads from model.path alone.
Units are the motion modules: 21 in v1-5-2 and Lightning (with the mid block), 20 in v3.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, MotionAdapter,
                       UNet2DConditionModel, UNetMotionModel)
from safetensors.torch import load_file
from transformers import CLIPTextModel, CLIPTokenizer

from vip.config import ConfigError, ModelConfig
from vip.models.base import resolve_dtype
from vip.models.codec import VaeCodec
from vip.models.diffusion import META_FILE, WEIGHTS, quiet_transformers, require_files
from vip.models.motion_unet import MotionUNetModel

SD15_FILES = ["unet/config.json", f"unet/{WEIGHTS}", "vae/config.json", f"vae/{WEIGHTS}",
              "text_encoder/config.json", "text_encoder/model.safetensors",
              "tokenizer/tokenizer_config.json"]  # + vocab.json/merges.txt (hub) or tokenizer.json
ADAPTER_FILES = ["config.json", WEIGHTS]
# AnimateDiff's published inference settings (its configs/inference/*.yaml and diffusers'
# AnimateDiffPipeline docs): the supplement gives none of its own (docs/decisions.md)
DEFAULTS = {"frames": 16, "height": 512, "width": 512}
_LIGHTNING_STEPS = re.compile(r"(\d+)step")


# model.sampler_preset -> what differs between the two published DDIM recipes (docs/decisions.md):
# - animatediff_official: guoyww/AnimateDiff scripts/animate.py:124 builds DDIMScheduler(**noise_scheduler_kwargs)
#   from configs/inference/inference-v2.yaml:16-21 on diffusers 0.11.1, so the rest are DDIMScheduler's defaults:
#   set_alpha_to_one=True (0.11.1 scheduling_ddim.py:128) and "leading" timesteps + steps_offset (:205-210),
#   25 steps = 961, 921, ..., 1, the last step landing on alpha_cumprod 1
# - diffusers: diffusers' AnimateDiff docs (DDIMScheduler.from_pretrained(<SD1.5>, subfolder="scheduler",
#   clip_sample=False, timestep_spacing="linspace", beta_schedule="linear", steps_offset=1); SD1.5's
#   scheduler_config.json gives set_alpha_to_one=False): 25 steps = 999, 957, ..., 0, ending on alpha_cumprod[0]
# Neither brings a negative prompt: AnimateDiff's n_prompt lists belong to the DreamBooth checkpoints and prompts
# of its configs/prompts/*, and its pipeline's default is "" (pipeline_animation.py:192-193), as diffusers' is;
# the unconditional branch stays meta["negative_prompt"] (default "").
SAMPLER_PRESETS = {
    "animatediff_official": {"timestep_spacing": "leading", "set_alpha_to_one": True},
    "diffusers": {"timestep_spacing": "linspace", "set_alpha_to_one": False},
}


def sampler_preset(name: str) -> dict:
    if name not in SAMPLER_PRESETS:
        raise ConfigError(f"config key 'model.sampler_preset' must be one of {', '.join(SAMPLER_PRESETS)}; got {name!r}")
    return SAMPLER_PRESETS[name]


def ddim_scheduler(preset: str = ModelConfig.sampler_preset) -> DDIMScheduler:
    """AnimateDiff's sampler: DDIM over SD1.5's 1000 steps with AnimateDiff's linear betas
    (SD itself uses scaled_linear), no clipping, steps offset by 1; spacing and the final alpha per preset."""
    p = sampler_preset(preset)
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                         clip_sample=False, set_alpha_to_one=p["set_alpha_to_one"], steps_offset=1,
                         timestep_spacing=p["timestep_spacing"], prediction_type="epsilon")


def with_sampler(model: MotionUNetModel, preset: str) -> MotionUNetModel:
    """A saved student samples as the config says, whatever scheduler/ it was saved with."""
    model.scheduler = ddim_scheduler(preset)
    model.meta["sampler_preset"] = preset
    return model


def lightning_scheduler() -> EulerDiscreteScheduler:
    """AnimateDiff-Lightning's published sampler: Euler, trailing timesteps, linear betas."""
    return EulerDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="linear", timestep_spacing="trailing", steps_offset=1,
                                  prediction_type="epsilon")


def motion_adapter_from_dir(path: Path) -> MotionAdapter:
    require_files(path, ADAPTER_FILES, "a MotionAdapter directory (config.json + diffusion_pytorch_model.safetensors)")
    return MotionAdapter.from_pretrained(path)


def motion_adapter_from_state_dict(file: Path) -> MotionAdapter:
    """Lightning ships only a MotionAdapter state dict. Its config is read off the tensors
    (channels and frame count from the positional tables, layers from the key names); the
    head count and norm groups are not in the shapes and take AnimateDiff's published 8 and 32."""
    state = load_file(file)
    pe = {k: v for k, v in state.items() if k.endswith("pos_embed.pe")}
    down = sorted({int(k.split(".")[1]) for k in pe if k.startswith("down_blocks.")})
    if not down:
        raise ConfigError(f"model.adapter {str(file)!r} is not a MotionAdapter state dict (no down_blocks.*.motion_modules)")
    layers = {int(k.split(".")[3]) for k in state if k.startswith("down_blocks.0.motion_modules.")}
    tlayers = {int(k.split(".")[5]) for k in state if k.startswith("down_blocks.0.motion_modules.0.transformer_blocks.")}
    adapter = MotionAdapter(
        block_out_channels=tuple(pe[f"down_blocks.{i}.motion_modules.0.transformer_blocks.0.pos_embed.pe"].shape[-1]
                                 for i in down),
        motion_layers_per_block=len(layers), motion_transformer_layers_per_block=len(tlayers),
        motion_max_seq_length=next(iter(pe.values())).shape[1],
        use_motion_mid_block=any(k.startswith("mid_block.") for k in state),
        motion_num_attention_heads=8, motion_norm_num_groups=32)
    try:
        adapter.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConfigError(f"model.adapter {str(file)!r} does not match a MotionAdapter: {str(e).splitlines()[0]}") from None
    return adapter


def load_adapter(cfg: ModelConfig) -> MotionAdapter:
    if not cfg.adapter:
        raise ConfigError("config key 'model.adapter' is required for AnimateDiff: a MotionAdapter directory "
                          "(guoyww/animatediff-motion-adapter-v1-5-2) or a Lightning .safetensors file")
    path = Path(cfg.adapter)
    if path.is_dir():
        return motion_adapter_from_dir(path)
    if path.suffix == ".safetensors" and path.is_file():
        return motion_adapter_from_state_dict(path)
    raise ConfigError(f"config key 'model.adapter': {cfg.adapter!r} is neither a MotionAdapter directory "
                      "nor a .safetensors file")


def build(path: Path, cfg: ModelConfig, scheduler, backbone: str, extra_meta: dict | None = None) -> MotionUNetModel:
    """SD1.5 directory + motion adapter -> a MotionUNetModel with a VAE codec."""
    require_files(path, SD15_FILES, "a Stable Diffusion 1.5 directory in diffusers layout "
                                    "(unet/, vae/, text_encoder/, tokenizer/ as in runwayml/stable-diffusion-v1-5)")
    dtype = resolve_dtype(cfg.dtype, cfg.device)
    adapter = load_adapter(cfg)
    unet2d = UNet2DConditionModel.from_pretrained(path / "unet")
    try:
        unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"model.adapter {cfg.adapter!r} does not fit the U-Net in {str(path / 'unet')!r}: "
                          f"{str(e).splitlines()[0]}") from None
    del unet2d, adapter
    with quiet_transformers():
        text_encoder = CLIPTextModel.from_pretrained(path / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(path / "tokenizer")
    codec = VaeCodec(AutoencoderKL.from_pretrained(path / "vae"))
    meta = {"backbone": backbone, **DEFAULTS, **(extra_meta or {})}
    model = MotionUNetModel(unet, text_encoder, tokenizer, scheduler, codec, meta)
    return for_training(model.to(cfg.device, dtype).configure(cfg))


def load_saved(path: Path, cfg: ModelConfig, backbone: str) -> MotionUNetModel:
    model = MotionUNetModel.load(path, cfg.device, resolve_dtype(cfg.dtype, cfg.device), backbone=backbone)
    return for_training(model.configure(cfg))


def for_training(model: MotionUNetModel) -> MotionUNetModel:
    """Gradient checkpointing (active only when gradients are): one ReDPO pair (2 clips of
    16x512x512) took 54.6 GiB of activations without it and 31.1 GiB with it, for 14% more
    step time (H100, bf16); without it the optimizer state no longer fits beside them."""
    model.unet.enable_gradient_checkpointing()
    return model


def load(path: Path, cfg: ModelConfig) -> MotionUNetModel:
    """Registry entry `animatediff`: SD1.5 + a MotionAdapter directory, or a saved student; DDIM as
    model.sampler_preset says."""
    sampler_preset(cfg.sampler_preset)  # a bad value fails before anything loads
    if (Path(path) / META_FILE).is_file():
        return with_sampler(load_saved(path, cfg, "animatediff"), cfg.sampler_preset)
    if Path(cfg.adapter).suffix == ".safetensors":
        raise ConfigError(f"model.adapter {cfg.adapter!r} is a single file (AnimateDiff-Lightning); "
                          "use model.backbone=animatediff_lightning, or a MotionAdapter directory")
    return build(Path(path), cfg, ddim_scheduler(cfg.sampler_preset), "animatediff",
                 {"sampler_preset": cfg.sampler_preset})


def load_lightning(path: Path, cfg: ModelConfig) -> MotionUNetModel:
    """Registry entry `animatediff_lightning`: SD1.5 + the Lightning file, or a saved student.
    The file is distilled for the step count in its name (kept in vip_model.json) and without
    guidance; other settings are refused before anything loads."""
    saved = (Path(path) / META_FILE).is_file()
    if saved:
        distilled = json.loads((Path(path) / META_FILE).read_text()).get("distilled_steps")
    else:
        m = _LIGHTNING_STEPS.search(Path(cfg.adapter).name)
        distilled = int(m.group(1)) if m else None
    if distilled and cfg.steps != distilled:
        raise ConfigError(f"config key 'model.steps' is {cfg.steps} but this AnimateDiff-Lightning model is distilled "
                          f"for {distilled} steps; set model.steps={distilled}")
    if cfg.guidance != 1.0:
        raise ConfigError(f"config key 'model.guidance' is {cfg.guidance} but AnimateDiff-Lightning is distilled "
                          "without classifier-free guidance; set model.guidance=1.0")
    if saved:
        return load_saved(path, cfg, "animatediff_lightning")
    return build(Path(path), cfg, lightning_scheduler(), "animatediff_lightning",
                 {"distilled_steps": distilled} if distilled else {})
