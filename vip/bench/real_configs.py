"""AnimateDiff at its published size with random weights (nothing is downloaded).

The configs are those of runwayml/stable-diffusion-v1-5 (U-Net, VAE, CLIP ViT-L/14 text
encoder) and guoyww/animatediff-motion-adapter-v1-5-2 (21 motion modules), written here as
keyword arguments (vip/models/animatediff.py loads the published files instead; it has no
random-weight builder). `scale` shrinks every width (and the text encoder) for the CPU
test path, so the same code runs in seconds there.
"""
from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from transformers import CLIPTextConfig, CLIPTextModel

from vip.models.codec import VaeCodec
from vip.models.motion_unet import MotionUNetModel
from vip.toyvid.text import build_tokenizer

TEXT_TOKENS = 77


def widths(scale: int) -> tuple[int, ...]:
    return tuple(c // scale for c in (320, 640, 1280, 1280))


def unet2d(scale: int = 1) -> UNet2DConditionModel:
    """SD1.5's U-Net (860M parameters at scale 1)."""
    return UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=widths(scale),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768 // scale, attention_head_dim=8, norm_num_groups=32 // min(scale, 8),
        flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, act_fn="silu")


def motion_adapter(scale: int = 1) -> MotionAdapter:
    """animatediff-motion-adapter-v1-5-2: 21 motion modules, 453M parameters at scale 1."""
    return MotionAdapter(block_out_channels=widths(scale), motion_layers_per_block=2,
                         motion_mid_block_layers_per_block=1, motion_num_attention_heads=8,
                         motion_norm_num_groups=32 // min(scale, 8), motion_max_seq_length=32,
                         use_motion_mid_block=True)


def vae(scale: int = 1) -> AutoencoderKL:
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         block_out_channels=tuple(c // scale for c in (128, 256, 512, 512)),
                         norm_num_groups=32 // min(scale, 8), sample_size=512, scaling_factor=0.18215)


def text_encoder(vocab: int, scale: int = 1) -> CLIPTextModel:
    """CLIP ViT-L/14's text tower (123M at scale 1); the vocabulary is the offline toyvid BPE."""
    return CLIPTextModel(CLIPTextConfig(vocab_size=vocab, hidden_size=768 // scale,
                                        intermediate_size=3072 // scale, num_hidden_layers=12 if scale == 1 else 2,
                                        num_attention_heads=12 if scale == 1 else 2,
                                        max_position_embeddings=TEXT_TOKENS, hidden_act="quick_gelu"))


def scheduler() -> DDIMScheduler:
    """The DDIM settings of the AnimateDiff examples (SD1.5 betas)."""
    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="linear",
                         clip_sample=False, steps_offset=1, timestep_spacing="linspace", set_alpha_to_one=False)


def tokenizer():
    tok = build_tokenizer()
    tok.model_max_length = TEXT_TOKENS
    return tok


def build(frames: int, height: int, width: int, steps: int, guidance: float, scale: int = 1, seed: int = 0,
          device: str = "cpu"):
    """(VideoModel over UNetMotionModel.from_unet2d, its U-Net 2D, adapter, VAE, text encoder, tokenizer,
    scheduler): the parts a pipeline is built from, and the vip model built from the same weights."""
    torch.manual_seed(seed)
    with torch.device(device):
        u2d, adapter, v = unet2d(scale), motion_adapter(scale), vae(scale)
        tok = tokenizer()
        te = text_encoder(len(tok), scale)
        unet = UNetMotionModel.from_unet2d(u2d, adapter).to(device)
    meta = {"backbone": "animatediff", "frames": frames, "height": height, "width": width,
            "steps": steps, "guidance": guidance}
    model = MotionUNetModel(unet, te, tok, scheduler(), VaeCodec(v, frames_per_decode=16), meta)
    return model, dict(unet2d=u2d, motion_adapter=adapter, vae=v, text_encoder=te, tokenizer=tok)
