"""Pixel <-> latent codecs: clips [B, F, 3, H, W] in [0, 1] <-> latents [B, C, F, h, w].

toyvid's "VAE" is a lossless space-to-depth, so the U-Net runs at half resolution with
4x the channels and decoding is exact; AnimateDiff uses SD1.5's AutoencoderKL per frame,
Wan its causal 3-D VAE."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class SpaceToDepth:
    def __init__(self, factor: int = 2):
        self.factor = factor

    def latent_size(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return frames, height // self.factor, width // self.factor

    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """[B, F, 3, H, W] in [0, 1] -> latents [B, 3*f*f, F, H/f, W/f] in [-1, 1]."""
        b, f, c, h, w = clips.shape
        x = F.pixel_unshuffle(clips.reshape(b * f, c, h, w) * 2 - 1, self.factor)
        return x.reshape(b, f, *x.shape[1:]).permute(0, 2, 1, 3, 4).contiguous()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = latents.shape
        x = latents.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)
        x = F.pixel_shuffle(x, self.factor)
        return ((x + 1) / 2).clamp(0, 1).reshape(b, f, *x.shape[1:])


class VaeCodec:
    """Stable Diffusion's AutoencoderKL, frame by frame. Latents are scaled by the VAE's
    own scaling_factor (0.18215 for SD1.5), as the U-Net was trained on them. The VAE runs
    in float32 whatever the denoiser's dtype: decoding is once per clip and the reward sees
    its pixels."""

    def __init__(self, vae, frames_per_decode: int = 8):
        self.vae = vae.float().eval().requires_grad_(False)
        self.frames_per_decode = frames_per_decode
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling = vae.config.scaling_factor

    def latent_size(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return frames, height // self.factor, width // self.factor

    @torch.no_grad()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        """[B, F, 3, H, W] in [0, 1] -> latents [B, C, F, h, w] (the posterior mean, scaled)."""
        b, f = clips.shape[:2]
        x = clips.flatten(0, 1).float() * 2 - 1
        z = torch.cat([self.vae.encode(c).latent_dist.mean for c in x.split(self.frames_per_decode)])
        return (z * self.scaling).unflatten(0, (b, f)).transpose(1, 2).contiguous()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = latents.shape
        z = (latents.transpose(1, 2).flatten(0, 1).float() / self.scaling).to(self.vae.dtype)
        x = torch.cat([self.vae.decode(c).sample for c in z.split(self.frames_per_decode)]).float()
        return ((x + 1) / 2).clamp(0, 1).unflatten(0, (b, f))


class WanVaeCodec:
    """Wan's causal 3-D VAE: 4x in time (the first frame alone, then groups of 4), 8x in space.
    Latents are normalised per channel by the VAE config's latents_mean / latents_std, as
    WanPipeline does. float32, as diffusers' Wan examples load it."""

    def __init__(self, vae):
        self.vae = vae.float().eval().requires_grad_(False)
        cfg = vae.config
        self.factor = 2 ** len(cfg.temperal_downsample)
        self.time_factor = 2 ** sum(cfg.temperal_downsample)
        self.mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1)
        self.std = torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1)

    def latent_size(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        return (frames - 1) // self.time_factor + 1, height // self.factor, width // self.factor

    @torch.no_grad()
    def encode(self, clips: torch.Tensor) -> torch.Tensor:
        x = clips.transpose(1, 2).float() * 2 - 1  # [B, 3, F, H, W]
        z = torch.cat([self.vae.encode(c[None]).latent_dist.mean for c in x])
        return (z - self.mean.to(z.device)) / self.std.to(z.device)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = (latents.float() * self.std.to(latents.device) + self.mean.to(latents.device)).to(self.vae.dtype)
        x = torch.cat([self.vae.decode(c[None]).sample for c in z]).float()  # one clip at a time: memory
        return ((x + 1) / 2).clamp(0, 1).transpose(1, 2)
