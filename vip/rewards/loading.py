"""Loading helpers shared by the VLM rewards: device and dtype, required files, strict weights.

Every problem with a checkpoint directory is a ConfigError that names the file or the key,
raised before any weights are copied (nothing half-loaded).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch

from vip.config import ConfigError, RewardConfig
from vip.models.base import resolve_dtype

def device_and_dtype(cfg: RewardConfig) -> tuple[torch.device, torch.dtype]:
    """reward.device ("" = cpu here; StageContext fills in model.device) and reward.dtype
    (auto = bfloat16 on CUDA, float32 elsewhere; float16 on a CPU is refused)."""
    device = torch.device(cfg.device or "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"config key 'reward.device' is {cfg.device!r} but CUDA is not available on this machine")
    return device, resolve_dtype(cfg.dtype, str(device), key="reward.dtype")


def checkpoint_dir(cfg: RewardConfig, what: str) -> Path:
    """reward.path as an existing directory; `what` says which download belongs there."""
    if not cfg.path:
        raise ConfigError(f"config key 'reward.path' is empty; point it at a local {what} directory (docs/rewards.md)")
    path = Path(cfg.path).expanduser()
    if not path.is_dir():
        raise ConfigError(f"config key 'reward.path': {str(path)!r} is not a directory (expected a local {what})")
    return path


def require_file(directory: Path, name: str, why: str = "") -> Path:
    p = directory / name
    if not p.is_file():
        raise ConfigError(f"reward checkpoint {str(directory)!r} lacks the file {name!r}{f' ({why})' if why else ''}; "
                          "see docs/rewards.md for the files to download")
    return p


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"reward file {str(path)!r} is not valid JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"reward file {str(path)!r} must hold a JSON object")
    return data


@contextmanager
def empty_init(device: torch.device, dtype: torch.dtype):
    """Construct modules directly on `device` in `dtype` without random initialisation (the
    weights are copied in right after), as from_pretrained does: an 8B model is then built in
    seconds and never exists twice in memory. Buffers computed in __init__ (rotary tables)
    are still computed, in the precision their code asks for."""
    from transformers.initialization import no_init_weights

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with no_init_weights(), torch.device(device):
            yield
    finally:
        torch.set_default_dtype(old)


def load_weights(module: torch.nn.Module, tensors: Mapping[str, Callable[[], torch.Tensor]],
                 shapes: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Copy checkpoint tensors into `module` (every parameter and persistent buffer, exactly).

    tensors: name -> a function returning the tensor (so shards are read one tensor at a time);
    shapes: name -> shape, checked against the module before anything is copied.
    """
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing:
        raise ConfigError(f"{source} lacks the weight {missing[0]!r} ({len(missing)} missing) that the config's "
                          "architecture needs: a wrong or partial download?")
    if unexpected:
        raise ConfigError(f"{source} has the weight {unexpected[0]!r} ({len(unexpected)} unexpected) that the config's "
                          "architecture does not have: config and weights do not match")
    for name, t in own.items():
        if tuple(shapes[name]) != tuple(t.shape):
            raise ConfigError(f"{source}: weight {name!r} has shape {list(shapes[name])} but the config implies "
                              f"{list(t.shape)}: config and weights do not match")
    with torch.no_grad():
        for name, t in own.items():
            t.copy_(tensors[name]())
