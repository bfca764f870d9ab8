"""Activation checkpointing of every block of a UNetMotionModel.

diffusers' enable_gradient_checkpointing() recomputes only the ResNet blocks of
UNetMotionModel; the spatial transformers and motion modules keep their activations, which
at 16x256x256 are most of them (measured: 8 pairs still ran out of 80 GB). Wrapping every
ResNet, attention and motion module in a non-reentrant checkpoint keeps only block inputs.
The wrappers replace diffusers' own flag (which calls its checkpoint function from the
block's eager glue, where torch.compile breaks the graph): a compiled wrapper is one graph
with the checkpoint inside, and the compiler recomputes the block in the backward."""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Checkpointed(nn.Module):
    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        if self.training and torch.is_grad_enabled():
            return checkpoint(self.block, *args, use_reentrant=False, **kwargs)
        return self.block(*args, **kwargs)


def _lists(unet: nn.Module):
    for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks]:
        for name in ("resnets", "attentions", "motion_modules"):
            modules = getattr(block, name, None)
            if modules is not None:
                yield modules


def checkpoint_every_block(unet: nn.Module) -> None:
    unet.disable_gradient_checkpointing()  # the wrappers do the ResNets too
    for modules in _lists(unet):
        for i, m in enumerate(modules):
            if not isinstance(m, Checkpointed):
                modules[i] = Checkpointed(m)


def undo(unet: nn.Module) -> None:
    for modules in _lists(unet):
        for i, m in enumerate(modules):
            if isinstance(m, Checkpointed):
                modules[i] = m.block
