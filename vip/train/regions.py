"""Regional torch.compile: the repeated blocks of a denoiser compiled in place, the glue eager.

Compiling a whole U-Net costs 60-120 s per shape at AnimateDiff size and its graph changes
whenever a unit is removed. Compiling each repeated block (`nn.Module.compile`) instead gives
graphs that blocks of one class and shape share, leaves the module tree and state dict as they
were, and compiles a block's checkpointed forward (vip/train/checkpointing.py) with it.
"""
from __future__ import annotations

import torch
from torch import nn

from vip.train.checkpointing import blocks, is_motion_unet


def regions(module: nn.Module) -> list[nn.Module]:
    """UNetMotionModel (toyvid, AnimateDiff): every ResNet, spatial transformer and motion module;
    Wan: every transformer block; anything else: none."""
    if is_motion_unet(module):
        return list(blocks(module))
    if isinstance(getattr(module, "blocks", None), nn.ModuleList):
        return list(module.blocks)
    return []


def compile_regions(module: nn.Module, backend: str = "inductor") -> int:
    """Compiles every region in place (mode default, static shapes); returns how many."""
    cfg = torch._dynamo.config
    for key, most in (("recompile_limit", 512), ("cache_size_limit", 512),
                      ("accumulated_recompile_limit", 8192), ("accumulated_cache_size_limit", 8192)):
        if hasattr(cfg, key):  # one code object per block class, many shapes: not a fallback to eager
            setattr(cfg, key, max(getattr(cfg, key), most))
    found = regions(module)
    for m in found:
        m.compile(backend=backend, dynamic=False)
    return len(found)


def uncompile_regions(module: nn.Module) -> None:
    for m in regions(module):
        m._compiled_call_impl = None
