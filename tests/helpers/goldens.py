"""What the sampling golden tests (tests/goldens/test_golden_{animatediff,animatediff_lightning,wan}.py)
share: a component's committed settings.json and outputs.safetensors (scripts/goldens/<component>.py
wrote them), and those settings' sampling as the ModelConfig a user would write."""
from __future__ import annotations

import json
from pathlib import Path

from vip.config import ModelConfig


def settings(golden: Path) -> dict:
    return json.loads((Path(golden) / "settings.json").read_text())


def outputs(golden: Path) -> dict:
    """The reference run's tensors, by name."""
    from safetensors.torch import load_file

    return load_file(Path(golden) / "outputs.safetensors")


def sampling_config(s: dict, **model) -> ModelConfig:
    """model (backbone, path, ...) with the settings' steps, guidance, frames, height and width."""
    return ModelConfig(**model, steps=s["steps"], guidance=s["guidance"], frames=s["frames"], height=s["height"],
                       width=s["width"])
