"""The toyvid world: a prompt grammar and a renderer of ground-truth clips.

A prompt names an object colour, a shape, a motion and a background:
    "a red circle moving left on a black background"
Clips are float tensors [F, 3, H, W] in [0, 1]. The start position is random
(drawn from the clip's seed), so a model has to keep one position across frames:
that is what the motion modules are for.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

COLOURS = {
    "red": (0.95, 0.15, 0.15),
    "green": (0.15, 0.85, 0.2),
    "blue": (0.2, 0.35, 1.0),
    "yellow": (0.95, 0.9, 0.15),
    "magenta": (0.9, 0.2, 0.9),
    "cyan": (0.15, 0.9, 0.9),
}
BACKGROUNDS = {
    "black": (0.0, 0.0, 0.0),
    "gray": (0.45, 0.45, 0.45),
    "navy": (0.05, 0.05, 0.3),
}
SHAPES = ("circle", "square", "triangle")
MOTIONS = ("still", "left", "right", "up", "down", "bounce")
MOTION_PHRASE = {
    "still": "staying still",
    "left": "moving left",
    "right": "moving right",
    "up": "moving up",
    "down": "moving down",
    "bounce": "bouncing",
}

FRAMES = 8
SIZE = 32
RADIUS = 5.0  # half the object's extent in pixels
SPEED = 2.0  # pixels per frame for linear motions
BOUNCE_AMPLITUDE = 6.0


@dataclass(frozen=True)
class Prompt:
    colour: str
    shape: str
    motion: str
    background: str

    @property
    def text(self) -> str:
        return f"a {self.colour} {self.shape} {MOTION_PHRASE[self.motion]} on a {self.background} background"

    @property
    def is_dynamic(self) -> bool:
        return self.motion != "still"


def all_prompts() -> list[Prompt]:
    """Every prompt of the grammar, in a fixed order (324 of them)."""
    return [
        Prompt(c, s, m, b) for b in BACKGROUNDS for m in MOTIONS for s in SHAPES for c in COLOURS
    ]


_BY_TEXT = {p.text: p for p in all_prompts()}


def parse(text: str) -> Prompt:
    """Inverse of Prompt.text; raises ValueError naming the text if it is not in the grammar."""
    key = " ".join(text.strip().lower().split())
    if key not in _BY_TEXT:
        raise ValueError(f"prompt {text!r} is not in the toyvid grammar (e.g. {all_prompts()[0].text!r})")
    return _BY_TEXT[key]


def vocabulary() -> list[str]:
    """The words of the grammar: the tokenizer makes each one token."""
    words = {"a", "on", "background", "staying", "moving", "bouncing"}
    words |= set(COLOURS) | set(BACKGROUNDS) | set(SHAPES) | {"still", "left", "right", "up", "down"}
    return sorted(words)


def trajectory(motion: str, rng: np.random.Generator, frames: int = FRAMES, size: int = SIZE) -> np.ndarray:
    """Centre positions (x, y) per frame, kept inside the frame."""
    lo, hi = RADIUS + 1, size - RADIUS - 2
    travel = SPEED * (frames - 1)
    t = np.arange(frames, dtype=np.float64)
    if motion in ("left", "right", "up", "down"):
        along0 = rng.uniform(lo, hi - travel)
        across = rng.uniform(lo, hi)
        along = along0 + SPEED * t
        if motion in ("left", "up"):
            along = (lo + hi) - along  # mirror: start high, move towards lower coordinates
        xy = np.stack([along, np.full(frames, across)], 1) if motion in ("left", "right") else np.stack(
            [np.full(frames, across), along], 1
        )
        return xy
    if motion == "bounce":
        x = rng.uniform(lo, hi)
        y0 = rng.uniform(lo + BOUNCE_AMPLITUDE, hi - BOUNCE_AMPLITUDE)
        y = y0 - BOUNCE_AMPLITUDE * np.sin(2 * math.pi * t / frames)
        return np.stack([np.full(frames, x), y], 1)
    if motion == "still":
        return np.repeat(rng.uniform(lo, hi, size=(1, 2)), frames, 0)
    raise ValueError(f"unknown motion {motion!r}; expected one of {MOTIONS}")


def shape_mask(shape: str, cx: float, cy: float, size: int = SIZE) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape centred at (cx, cy)."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    dx, dy = xs - cx, ys - cy
    if shape == "circle":
        sd = np.sqrt(dx**2 + dy**2) - RADIUS
    elif shape == "square":
        sd = np.maximum(np.abs(dx), np.abs(dy)) - RADIUS * 0.9
    elif shape == "triangle":  # apex up, base at the bottom
        h = 2 * RADIUS
        # three half-planes: base, and two slanted sides
        base = dy - RADIUS
        k = h / RADIUS  # slope of the sides
        norm = math.sqrt(1 + k * k)
        left = (-k * dx - (dy + RADIUS)) / norm
        right = (k * dx - (dy + RADIUS)) / norm
        sd = np.maximum(base, np.maximum(left, right))
    else:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    return np.clip(0.5 - sd, 0.0, 1.0)


def render(prompt: Prompt, seed: int, frames: int = FRAMES, size: int = SIZE) -> torch.Tensor:
    """Ground-truth clip [F, 3, H, W] in [0, 1] for one prompt and seed."""
    rng = np.random.default_rng(seed)
    xy = trajectory(prompt.motion, rng, frames, size)
    bg = np.array(BACKGROUNDS[prompt.background])[:, None, None]
    fg = np.array(COLOURS[prompt.colour])[:, None, None]
    out = np.empty((frames, 3, size, size), dtype=np.float32)
    for f, (x, y) in enumerate(xy):
        m = shape_mask(prompt.shape, x, y, size)[None]
        out[f] = bg * (1 - m) + fg * m
    return torch.from_numpy(out)
