"""Frames to a PNG grid a person can look at: one row per clip, frames left to right."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

SCALE = 3
LABEL_W = 330


def frame_grid(clips: torch.Tensor, labels: list[str], path: Path, scale: int = SCALE) -> Path:
    """clips [N, F, 3, H, W] in [0, 1]; labels one per row."""
    n, f, _, h, w = clips.shape
    gap = 2
    row_h = h * scale + gap
    img = Image.new("RGB", (LABEL_W + f * (w * scale + gap), n * row_h), "white")
    draw = ImageDraw.Draw(img)
    for i in range(n):
        for j in range(f):
            frame = (clips[i, j].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
            tile = Image.fromarray(frame).resize((w * scale, h * scale), Image.NEAREST)
            img.paste(tile, (LABEL_W + j * (w * scale + gap), i * row_h))
        draw.text((4, i * row_h + row_h // 2 - 6), labels[i][:52], fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return Path(path)
