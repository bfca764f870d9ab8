"""Activation checkpointing of every block of a UNetMotionModel.

diffusers' enable_gradient_checkpointing() recomputes only the ResNet blocks of
UNetMotionModel; the spatial transformers and motion modules keep their activations, which
at 16x256x256 are most of them (measured: 8 pairs still ran out of 80 GB). Checkpointing
every ResNet, attention and motion module (non-reentrant) keeps only block inputs.

Each block's forward is replaced on the instance, so the module tree and state-dict keys stay
those of the published model (a saved student loads anywhere). This replaces diffusers' own
flag, which calls its checkpoint function from the parent block's eager glue, where
torch.compile breaks the graph: a block compiled with its checkpointed forward is one graph,
and the compiler recomputes it in the backward.
"""
from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _checkpointed_forward(block: nn.Module, *args, **kwargs):
    plain = type(block).forward.__get__(block)
    if block.training and torch.is_grad_enabled():
        return checkpoint(plain, *args, use_reentrant=False, **kwargs)
    return plain(*args, **kwargs)


def is_motion_unet(module: nn.Module) -> bool:
    """A UNetMotionModel's layout (toyvid, AnimateDiff): down, mid and up blocks of ResNets,
    spatial transformers and motion modules."""
    return hasattr(module, "down_blocks") and hasattr(module, "mid_block")


def blocks(unet: nn.Module):
    """Every ResNet, spatial transformer and motion module of a UNetMotionModel."""
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        for name in ("resnets", "attentions", "motion_modules"):
            yield from getattr(block, name, None) or []


def is_checkpointed(block: nn.Module) -> bool:
    return "forward" in block.__dict__


def checkpoint_every_block(unet: nn.Module) -> None:
    unet.disable_gradient_checkpointing()  # ours cover the ResNets too
    for m in blocks(unet):
        m.forward = functools.partial(_checkpointed_forward, m)


def undo(unet: nn.Module) -> None:
    for m in blocks(unet):
        if is_checkpointed(m):
            del m.forward


def set_checkpointing(module: nn.Module, how: str) -> None:
    """train.checkpointing on a denoiser: backbone (leave the loader's choice), every_block, none."""
    unet_like = is_motion_unet(module)
    if how == "backbone":
        return
    if how == "none":
        if hasattr(module, "disable_gradient_checkpointing"):
            module.disable_gradient_checkpointing()
        if unet_like:
            undo(module)
        return
    if how != "every_block":
        raise ValueError(f"checkpointing must be backbone, every_block or none, got {how!r}")
    if unet_like:
        checkpoint_every_block(module)
    elif getattr(module, "_supports_gradient_checkpointing", False) and hasattr(module, "blocks"):
        module.enable_gradient_checkpointing()  # Wan: diffusers checkpoints each transformer block
    else:
        raise ValueError(f"every_block checkpointing does not know {type(module).__name__}")
