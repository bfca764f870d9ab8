"""Temporal self-attention over a few frames as two small batched matmuls.

A motion module attends over the frames of each latent pixel: sequences of 16, and as many of
them as batch x height x width (262,144 sequences x heads at 16x256x256, batch 32). Flash-style
kernels tile 64-128 queries at a time, so a 16-long sequence fills an eighth of each tile; on
an H100 the attention kernels took 82 ms of a 656 ms forward for 3.5% of its FLOPs
(docs/benchmarks.md). Written out, softmax(QKᵀ/√d)V is a bmm over [16 x d] blocks, a softmax
over 16 values and another bmm, which torch.compile fuses around.
"""
from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0


class ShortSequenceAttnProcessor:
    """For the plain self-attention of motion modules (no mask, no extra norms, 3-D input); any
    other use falls back to diffusers' SDPA processor, so setting it is never wrong."""

    def __init__(self):
        self._fallback = AttnProcessor2_0()

    def __call__(self, attn: Attention, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        plain = (hidden_states.ndim == 3 and attention_mask is None and encoder_hidden_states is None
                 and attn.spatial_norm is None and attn.group_norm is None
                 and attn.norm_q is None and attn.norm_k is None)
        if not plain:
            return self._fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        b, n, _ = hidden_states.shape
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        d = k.shape[-1] // attn.heads
        q, k, v = (x.view(b, n, attn.heads, d).transpose(1, 2) for x in (q, k, v))
        scores = torch.matmul(q, k.transpose(-1, -2)) * (d ** -0.5)  # SDPA's default scale
        out = torch.matmul(scores.float().softmax(dim=-1).to(v.dtype), v)
        out = out.transpose(1, 2).reshape(b, n, attn.heads * d)
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def motion_attentions(unet: torch.nn.Module) -> list[Attention]:
    return [m for name, m in unet.named_modules() if ".motion_modules." in f".{name}" and isinstance(m, Attention)]


def use_short_attention(unet: torch.nn.Module) -> list:
    """Sets the processor on every motion-module attention; returns what to give to restore()."""
    saved = []
    for m in motion_attentions(unet):
        saved.append((m, m.processor))
        m.set_processor(ShortSequenceAttnProcessor())
    return saved


def restore(saved: list) -> None:
    for m, processor in saved:
        m.set_processor(processor)
