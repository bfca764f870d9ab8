"""VideoCrafter2's 3D U-Net (lvdm `UNetModel`, configs/inference_t2v_512_v2.0.yaml) as a diffusers model.

Frames are folded into the batch ("(b f) c h w") everywhere except in the temporal
layers, which unfold them: a temporal convolution after every level ResBlock, and a
temporal self-attention transformer after every spatial (cross-attention) transformer.
Only the published configuration is implemented: linear projections in the block
transformers, a conv-projected temporal transformer (`init_attn`) after the input conv,
absolute fps conditioning added to the timestep embedding, no relative positions, no
causal mask, no scale-shift norm, no ResBlock up/down sampling.

Module paths follow lvdm's block indices (input_blocks.i / middle_block / output_blocks.i),
so a unit name here is the block the paper and the VideoCrafter code call by that index;
inside a block the children have names instead of Sequential indices (convert.py maps them).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """lvdm computes the U-Net's ResBlock and output norms in float32 whatever the weights' dtype."""

    def forward(self, x):  # float32 affine parameters too: group_norm refuses a float input with bf16 weights
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.group_norm(x.float(), self.num_groups, w, b, self.eps).type(x.dtype)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding, cos half first (lvdm's order)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def fold(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[b, c, f, h, w] -> [(b f), c, h, w]"""
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 1, 3, 4).reshape(b * f, c, h, w)


def unfold(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[(b f), c, h, w] -> [b, c, f, h, w]"""
    bf, c, h, w = x.shape
    return x.reshape(bf // frames, frames, c, h, w).permute(0, 2, 1, 3, 4)


class Embedding(nn.Module):
    def __init__(self, dim: int, out: int):
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(dim, out), nn.Linear(out, out)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


# ---------------------------------------------------------------- convolutions
class TemporalConv(nn.Module):
    """Four (GroupNorm, SiLU, [Dropout], Conv3d over time) stages with a residual (from ModelScope T2V)."""

    def __init__(self, channels: int, groups: int, dropout: float):
        super().__init__()
        self.stages = nn.ModuleList(TemporalConvStage(channels, groups, dropout if i else 0.0) for i in range(4))

    def forward(self, x):  # [b, c, f, h, w]
        h = x
        for stage in self.stages:
            h = stage(h)
        return x + h


class TemporalConvStage(nn.Module):
    def __init__(self, channels: int, groups: int, dropout: float):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.dropout = nn.Dropout(dropout)
        self.conv = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x):
        return self.conv(self.dropout(F.silu(self.norm(x))))


class ResBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, temporal_conv: bool,
                 temporal_dropout: float):
        super().__init__()
        self.norm1 = GroupNorm32(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = GroupNorm32(groups, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else None
        self.temporal_conv = TemporalConv(out_ch, groups, temporal_dropout) if temporal_conv else None

    def forward(self, x, emb, context, frames):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time_emb_proj(F.silu(emb)).type(h.dtype)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        h = h + (x if self.conv_shortcut is None else self.conv_shortcut(x))
        if self.temporal_conv is not None:
            h = fold(self.temporal_conv(unfold(h, frames)), frames)
        return h


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x, emb, context, frames):
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x, emb, context, frames):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


# ---------------------------------------------------------------- attention
class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim or dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def forward(self, x, context=None):
        ctx = x if context is None else context
        b, n, _ = x.shape
        q, k, v = (p(s).reshape(b, s.shape[1], self.heads, -1).transpose(1, 2)
                   for p, s in ((self.to_q, x), (self.to_k, ctx), (self.to_v, ctx)))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class FeedForward(nn.Module):
    """GEGLU, inner width 4 x dim."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj_in = nn.Linear(dim, dim * 8)
        self.proj_out = nn.Linear(dim * 4, dim)

    def forward(self, x):
        x, gate = self.proj_in(x).chunk(2, dim=-1)
        return self.proj_out(x * F.gelu(gate))


class TransformerBlock(nn.Module):
    """Self-attention, then cross-attention to `context` (or a second self-attention when
    context_dim is None: lvdm's temporal transformers), then a GEGLU feed-forward."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn1 = Attention(dim, heads, head_dim)
        self.attn2 = Attention(dim, heads, head_dim, context_dim)
        self.ff = FeedForward(dim)

    def forward(self, x, context=None):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(nn.Module):
    """Attention over the h*w positions of each frame; cross-attention to the prompt."""

    def __init__(self, ch: int, heads: int, head_dim: int, depth: int, context_dim: int, groups: int):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.proj_in = nn.Linear(ch, inner)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, context_dim) for _ in range(depth))
        self.proj_out = nn.Linear(inner, ch)

    def forward(self, x, emb, context, frames):
        bf, c, h, w = x.shape
        y = self.proj_in(self.norm(x).reshape(bf, c, h * w).transpose(1, 2))
        for block in self.transformer_blocks:
            y = block(y, context)
        return x + self.proj_out(y).transpose(1, 2).reshape(bf, c, h, w)


class TemporalTransformer(nn.Module):
    """Self-attention over the frames at each position (the GroupNorm sees all frames at once)."""

    def __init__(self, ch: int, heads: int, head_dim: int, depth: int, groups: int):
        super().__init__()
        inner = heads * head_dim
        self.norm = nn.GroupNorm(groups, ch, eps=1e-6)
        self.proj_in = nn.Linear(ch, inner)
        self.transformer_blocks = nn.ModuleList(
            TransformerBlock(inner, heads, head_dim, None) for _ in range(depth))
        self.proj_out = nn.Linear(inner, ch)

    def forward(self, x, emb, context, frames):
        x5 = unfold(x, frames)
        b, c, f, h, w = x5.shape
        y = self.norm(x5).permute(0, 3, 4, 2, 1).reshape(b * h * w, f, c)  # [(b h w), f, c]
        y = self.proj_in(y)
        for block in self.transformer_blocks:
            y = block(y)
        y = self.proj_out(y).reshape(b, h, w, f, c).permute(0, 4, 3, 1, 2)
        return fold(x5 + y, frames)


# ---------------------------------------------------------------- blocks
class Block(nn.Module):
    """One lvdm TimestepEmbedSequential: its layers run in LAYERS order. An output block
    first concatenates the skip from its input block."""

    LAYERS = ("resnet", "spatial_attn", "temporal_attn", "resnet2", "downsample", "upsample")

    def __init__(self, in_ch: int, out_ch: int, **layers: nn.Module):
        super().__init__()
        self.in_channels, self.out_channels = in_ch, out_ch
        for name in self.LAYERS:
            if layers.get(name) is not None:
                setattr(self, name, layers[name])

    def layer_names(self) -> list[str]:
        return [n for n in self.LAYERS if hasattr(self, n)]

    @property
    def keeps_shape(self) -> bool:
        """Whether an identity can stand in for the block (its output has its input's shape)."""
        return self.in_channels == self.out_channels and not hasattr(self, "downsample") \
            and not hasattr(self, "upsample")

    def forward(self, x, emb, context, frames, skip=None):
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        for name in self.layer_names():
            x = getattr(self, name)(x, emb, context, frames)
        return x


class SkippedBlock(nn.Module):
    """Identity stand-in for a removed block. A removed output block still takes its skip
    (so every input block's activation is consumed as before) and ignores it."""

    def forward(self, x, emb=None, context=None, frames=None, skip=None):
        return x


class ConvIn(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x, emb, context, frames):
        return self.conv(x)


class VideoCrafterUNet3D(ModelMixin, ConfigMixin):
    """forward(sample [B, C, F, H, W], timestep [B] or scalar, encoder_hidden_states [B, L, D], fps) -> eps [B, C, F, H, W]."""

    _supports_gradient_checkpointing = False

    @register_to_config
    def __init__(self, in_channels: int = 4, out_channels: int = 4, model_channels: int = 320,
                 channel_mult: tuple[int, ...] = (1, 2, 4, 4), num_res_blocks: int = 2,
                 attention_resolutions: tuple[int, ...] = (4, 2, 1), num_head_channels: int = 64,
                 transformer_depth: int = 1, context_dim: int = 1024, norm_num_groups: int = 32,
                 temporal_conv: bool = True, temporal_conv_dropout: float = 0.1, temporal_attention: bool = True,
                 addition_attention: bool = True, addition_attention_heads: int = 8, fps_cond: bool = True):
        super().__init__()
        mc, g, emb_dim = model_channels, norm_num_groups, model_channels * 4
        self.time_embedding = Embedding(mc, emb_dim)
        self.fps_embedding = Embedding(mc, emb_dim) if fps_cond else None

        def res(i, o):
            return ResBlock(i, o, emb_dim, g, temporal_conv, temporal_conv_dropout)

        def attn(ch):
            heads = ch // num_head_channels
            return dict(spatial_attn=SpatialTransformer(ch, heads, num_head_channels, transformer_depth, context_dim, g),
                        temporal_attn=TemporalTransformer(ch, heads, num_head_channels, transformer_depth, g)
                        if temporal_attention else None)

        self.input_blocks = nn.ModuleList([ConvIn(in_channels, mc)])
        self.init_attn = TemporalTransformer(mc, addition_attention_heads, num_head_channels, transformer_depth, g) \
            if addition_attention else None
        skips, ch, ds = [mc], mc, 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                out = mult * mc
                extra = attn(out) if ds in attention_resolutions else {}
                self.input_blocks.append(Block(ch, out, resnet=res(ch, out), **extra))
                ch = out
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Block(ch, ch, downsample=Downsample(ch)))
                skips.append(ch)
                ds *= 2
        self.middle_block = Block(ch, ch, resnet=res(ch, ch), **attn(ch), resnet2=res(ch, ch))
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                out = mult * mc
                extra = attn(out) if ds in attention_resolutions else {}
                up = Upsample(out) if level and i == num_res_blocks else None
                # in_channels counts only the path from below (the skip is concatenated inside)
                self.output_blocks.append(Block(ch, out, resnet=res(ch + skips.pop(), out), **extra, upsample=up))
                ch = out
                if up is not None:
                    ds //= 2
        self.norm_out = GroupNorm32(g, ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                fps: int | torch.Tensor = 16) -> torch.Tensor:
        b, _, frames, _, _ = sample.shape
        dtype = self.conv_out.weight.dtype
        t = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(b)
        emb = self.time_embedding(timestep_embedding(t, self.config.model_channels).to(dtype))
        if self.fps_embedding is not None:
            f = torch.as_tensor(fps, device=sample.device).reshape(-1).expand(b)
            emb = emb + self.fps_embedding(timestep_embedding(f, self.config.model_channels).to(dtype))
        emb = emb.repeat_interleave(frames, dim=0)
        context = encoder_hidden_states.to(dtype).repeat_interleave(frames, dim=0)

        h = fold(sample.to(dtype), frames)
        h = self.input_blocks[0](h, emb, context, frames)
        if self.init_attn is not None:
            h = self.init_attn(h, emb, context, frames)
        skips = [h]
        for block in self.input_blocks[1:]:
            h = block(h, emb, context, frames)
            skips.append(h)
        h = self.middle_block(h, emb, context, frames)
        for block in self.output_blocks:
            h = block(h, emb, context, frames, skip=skips.pop())
        h = self.conv_out(F.silu(self.norm_out(h)))
        return unfold(h, frames).to(sample.dtype)
