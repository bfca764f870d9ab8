"""Pixel <-> latent codecs. toyvid's 'VAE' is a lossless space-to-depth, so the U-Net
runs at half resolution with 4x the channels and decoding is exact."""
from __future__ import annotations

import torch
import torch.nn.functional as F


class SpaceToDepth:
    def __init__(self, factor: int = 2):
        self.factor = factor

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
