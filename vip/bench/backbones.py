"""The denoisers of Wan2.1 T2V 1.3B and VideoCrafter2 at their published sizes, random weights
(nothing downloaded), with inputs of a given clip shape: for the denoiser benchmark. `scale` > 1
gives a tiny model of the same architecture, which is how the tests run this code on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

BACKBONES = ("wan2.1-1.3b", "videocrafter2")


@dataclass
class Denoiser:
    module: torch.nn.Module
    latent_shape: tuple  # per sample
    text_shape: tuple  # per sample: [tokens, width]
    kwargs: dict  # extra forward arguments (VideoCrafter2's fps)
    units: str  # what leave-one-out removes


def build(name: str, frames: int, height: int, width: int, scale: int = 1, device: str = "cpu") -> Denoiser:
    if name not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {name!r}")
    torch.manual_seed(0)
    with torch.device(device):
        if name == "wan2.1-1.3b":
            from diffusers import WanTransformer3DModel

            from vip.models.published_configs import WAN21_T2V_1_3B_TRANSFORMER
            cfg = dict(WAN21_T2V_1_3B_TRANSFORMER)
            if scale > 1:
                cfg.update(num_attention_heads=2, attention_head_dim=24, ffn_dim=64, text_dim=32, freq_dim=32,
                           num_layers=2)
            module = WanTransformer3DModel(**cfg).to(device)
            # Wan's VAE: 4x in time (1 + 4k frames), 8x in space; 512 text tokens of umT5-XXL width
            latent = (cfg["in_channels"], (frames - 1) // 4 + 1, height // 8, width // 8)
            return Denoiser(module, latent, (512 if scale == 1 else 16, cfg["text_dim"]), {},
                            f"{cfg['num_layers']} transformer blocks")
        from vip.models.videocrafter2.build import TINY_UNET, UNET
        from vip.models.videocrafter2.unet3d import VideoCrafterUNet3D
        cfg = dict(UNET if scale == 1 else TINY_UNET)
        module = VideoCrafterUNet3D(**cfg).to(device)
        context = module.config.context_dim
        return Denoiser(module, (4, frames, height // 8, width // 8), (77 if scale == 1 else 8, context),
                        {"fps": 28}, "shape-preserving U-Net blocks")


def inputs(d: Denoiser, batch: int, device, dtype) -> tuple:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *d.latent_shape, generator=g).to(device, dtype)
    text = torch.randn(batch, *d.text_shape, generator=g).to(device, dtype)
    t = torch.full((batch,), 500.0).to(device)
    return x, t, text


def caller(d: Denoiser, x, t, text):
    """call(den) -> a no-argument forward through den (the module or a compiled wrapper of it)."""
    def call(den):
        return lambda: den(x, t, encoder_hidden_states=text, **d.kwargs)
    return call
