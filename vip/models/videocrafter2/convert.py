"""Published VideoCrafter2 checkpoint (model.ckpt) <-> our components.

The checkpoint is a Lightning pickle whose "state_dict" holds three models by prefix:
model.diffusion_model.* (the 3D U-Net), first_stage_model.* (Stable Diffusion's
AutoencoderKL in LDM naming) and cond_stage_model.model.* (the OpenCLIP ViT-H-14 text
tower), plus the DDPM schedule buffers. Each component's mapping is a list of Links
derived from our module tree; the same list converts both ways, so the inverse used by
the round-trip test is not a second hand-written table.

    python -m vip.models.videocrafter2.convert model.ckpt OUT_DIR --tokenizer TOKENIZER_DIR
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from vip.config import ConfigError
from vip.models.videocrafter2 import build
from vip.models.videocrafter2.scheduler import VideoCrafterDDIMScheduler
from vip.models.videocrafter2.model import VideoCrafter2Model, open_clip_tokenizer
from vip.models.videocrafter2.unet3d import Block, VideoCrafterUNet3D

UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX = "model.diffusion_model.", "first_stage_model.", "cond_stage_model.model."
# LatentDiffusion's schedule buffers: not weights; alphas_cumprod and scale_arr are checked against our scheduler.
SCHEDULE_BUFFERS = {"betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                    "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                    "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                    "posterior_mean_coef1", "posterior_mean_coef2", "scale_arr", "logvar", "scale_factor"}
# Present in the published text tower, unused by VideoCrafter (it reads the penultimate block).
TEXT_UNUSED = re.compile(r"^(text_projection|logit_scale|transformer\.resblocks\.(\d+)\..*)$")


@dataclass(frozen=True)
class Link:
    published: str  # key inside its component (no prefix)
    ours: str
    chunk: int = -1  # >= 0: ours is chunk `chunk` of 3 along dim 0 of published (fused q/k/v)
    squeeze: int = 0  # published has this many trailing singleton dims (1x1 conv / conv1d weight; ours a Linear)


# ---------------------------------------------------------------- U-Net
_RESNET = [(r"^norm1\.", "in_layers.0."), (r"^conv1\.", "in_layers.2."), (r"^time_emb_proj\.", "emb_layers.1."),
           (r"^norm2\.", "out_layers.0."), (r"^conv2\.", "out_layers.3."), (r"^conv_shortcut\.", "skip_connection.")]
_TRANSFORMER = [(r"(attn[12])\.to_out\.", r"\1.to_out.0."), (r"ff\.proj_in\.", "ff.net.0.proj."),
                (r"ff\.proj_out\.", "ff.net.2.")]


def _sub_first(rules, name: str) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, name, count=1)
        if n:
            return new
    return name


def _layer_key(kind: str, rest: str) -> str:
    if kind in ("resnet", "resnet2"):
        m = re.match(r"temporal_conv\.stages\.(\d)\.(norm|conv)\.(.*)", rest)
        if m:
            k, part, leaf = int(m[1]), m[2], m[3]
            return f"temopral_conv.conv{k + 1}.{0 if part == 'norm' else (2 if k == 0 else 3)}.{leaf}"
        return _sub_first(_RESNET, rest)
    if kind in ("spatial_attn", "temporal_attn"):
        return _sub_first(_TRANSFORMER, rest)
    if kind == "downsample":
        return rest.replace("conv.", "op.", 1)
    return rest  # upsample.conv.* keeps its name


def unet_links(unet: VideoCrafterUNet3D) -> list[Link]:
    links = []
    for key in unet.state_dict():
        head, _, rest = key.partition(".")
        squeeze = 0
        if head in ("time_embedding", "fps_embedding"):
            pub = f"{'time_embed' if head == 'time_embedding' else head}.{rest.replace('linear_1', '0').replace('linear_2', '2')}"
        elif head in ("norm_out", "conv_out"):
            pub = f"out.{0 if head == 'norm_out' else 2}.{rest}"
        elif head == "init_attn":  # lvdm builds it with conv1d projections (use_linear defaults to False)
            pub = f"init_attn.0.{_sub_first(_TRANSFORMER, rest)}"
            squeeze = 1 if rest in ("proj_in.weight", "proj_out.weight") else 0
        elif key.startswith("input_blocks.0.conv."):
            pub = "input_blocks.0.0." + key.removeprefix("input_blocks.0.conv.")
        else:
            path = head if head == "middle_block" else f"{head}.{rest.split('.')[0]}"
            block = unet.get_submodule(path)
            assert isinstance(block, Block), key
            kind, _, inner = key.removeprefix(path + ".").partition(".")
            pub = f"{path}.{block.layer_names().index(kind)}.{_layer_key(kind, inner)}"
        links.append(Link(pub, key, squeeze=squeeze))
    return links


# ---------------------------------------------------------------- VAE (LDM AutoencoderKL <-> diffusers)
def vae_links(vae: AutoencoderKL) -> list[Link]:
    levels = len(vae.config.block_out_channels)
    links = []
    for key in vae.state_dict():
        pub, squeeze = key, 0
        pub = re.sub(r"conv_norm_out\.", "norm_out.", pub)
        pub = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", pub)
        pub = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", pub)
        pub = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.{m[2]}.", pub)
        pub = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", pub)
        pub = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", pub)
        m = re.search(r"mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.", pub)
        if m:
            name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[m[1]]
            pub = pub.replace(m[0], f"mid.attn_1.{name}.")
            squeeze = 2 if name != "norm" and pub.endswith(".weight") else 0
        pub = pub.replace(".conv_shortcut.", ".nin_shortcut.")
        links.append(Link(pub, key, squeeze=squeeze))
    return links


# ---------------------------------------------------------------- text (open_clip <-> CLIPTextModel)
def text_links(text_encoder: CLIPTextModel) -> list[Link]:
    links = []
    for key in text_encoder.state_dict():
        k = key.removeprefix("text_model.")
        pub, chunk = None, -1
        if k == "embeddings.token_embedding.weight":
            pub = "token_embedding.weight"
        elif k == "embeddings.position_embedding.weight":
            pub = "positional_embedding"
        elif k.startswith("final_layer_norm."):
            pub = "ln_final." + k.removeprefix("final_layer_norm.")
        else:
            m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", k)
            if m is None:
                raise AssertionError(f"unmapped text encoder key {key}")
            i, mod, leaf = m.groups()
            qkv = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}
            if mod in qkv:
                pub, chunk = f"transformer.resblocks.{i}.attn.in_proj_{leaf}", qkv[mod]
            else:
                name = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
                        "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}[mod]
                pub = f"transformer.resblocks.{i}.{name}.{leaf}"
        links.append(Link(pub, key, chunk=chunk))
    return links


def text_unused(key: str, ours: int, published: int) -> bool:
    """The projection, the logit scale and the blocks after our last (VideoCrafter reads the penultimate)."""
    m = TEXT_UNUSED.match(key)
    return bool(m) and (m[2] is None or ours <= int(m[2]) < published)


# ---------------------------------------------------------------- both directions
def to_ours(published: dict[str, torch.Tensor], links: list[Link], module: nn.Module, where: str,
            unused=lambda key: False) -> dict[str, torch.Tensor]:
    """One component's published tensors -> our state dict; a missing, unexpected or
    mis-shaped key is a ConfigError naming it."""
    needed = {link.published for link in links}
    for link in links:
        if link.published not in published:
            raise ConfigError(f"{where}: checkpoint key {link.published!r} is missing "
                              f"(needed for {link.ours!r}; is this a VideoCrafter2 512 v2.0 checkpoint?)")
    extra = [k for k in published if k not in needed and not unused(k)]
    if extra:
        raise ConfigError(f"{where}: unexpected checkpoint key {extra[0]!r} ({len(extra)} unmapped); "
                          "the checkpoint does not match the VideoCrafter2 512 v2.0 architecture")
    shapes = {k: v.shape for k, v in module.state_dict().items()}
    out = {}
    for link in links:
        t = published[link.published]
        if link.chunk >= 0:  # a copy: views of one fused tensor would share storage, which safetensors refuses
            t = t.chunk(3, dim=0)[link.chunk].clone()
        if link.squeeze:
            t = t.reshape(t.shape[:2])
        if t.shape != shapes[link.ours]:
            raise ConfigError(f"{where}: checkpoint key {link.published!r} has shape {tuple(t.shape)}, "
                              f"expected {tuple(shapes[link.ours])} for {link.ours!r}")
        out[link.ours] = t
    return out


def to_published(ours: dict[str, torch.Tensor], links: list[Link]) -> dict[str, torch.Tensor]:
    out, chunks = {}, {}
    for link in links:
        t = ours[link.ours]
        if link.squeeze:
            t = t.reshape(*t.shape, *([1] * link.squeeze))
        if link.chunk >= 0:
            chunks.setdefault(link.published, [None] * 3)[link.chunk] = t
        else:
            out[link.published] = t
    for key, parts in chunks.items():
        out[key] = torch.cat(parts, dim=0)
    return out


def export_checkpoint(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """Our components in the published naming (the converter's inverse; used by the round-trip test)."""
    sd = {}
    for prefix, module, links in ((UNET_PREFIX, unet, unet_links(unet)), (VAE_PREFIX, vae, vae_links(vae)),
                                  (TEXT_PREFIX, text_encoder, text_links(text_encoder))):
        sd.update({prefix + k: v for k, v in to_published(module.state_dict(), links).items()})
    return sd


def split_checkpoint(state_dict: dict[str, torch.Tensor]) -> tuple[dict, dict, dict, dict]:
    parts = ({}, {}, {}, {})  # unet, vae, text, schedule buffers
    for key, value in state_dict.items():
        for i, prefix in enumerate((UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)):
            if key.startswith(prefix):
                parts[i][key.removeprefix(prefix)] = value
                break
        else:
            if key in SCHEDULE_BUFFERS:
                parts[3][key] = value
            elif not key.startswith("model_ema."):  # EMA weights, if a checkpoint carries them, are not used
                raise ConfigError(f"checkpoint: unexpected key {key!r} (expected model.diffusion_model.*, "
                                  "first_stage_model.*, cond_stage_model.model.* or DDPM schedule buffers)")
    return parts


def check_schedule(buffers: dict[str, torch.Tensor], scheduler: VideoCrafterDDIMScheduler) -> None:
    """The checkpoint's own alphas_cumprod and scale_arr against our scheduler's (catches a wrong
    linear_start/linear_end or signal scale)."""
    for key, ours in (("alphas_cumprod", scheduler.alphas_cumprod), ("scale_arr", scheduler.scale)):
        if key in buffers:
            theirs = buffers[key].float()[: len(ours)]
            if theirs.shape != ours.shape or (theirs - ours).abs().max() > 1e-5:
                raise ConfigError(f"checkpoint buffer {key!r} does not match the scheduler "
                                  f"({scheduler.config.beta_start}, {scheduler.config.beta_end}, "
                                  f"scale_b {scheduler.config.scale_b})")


def load_components(state_dict: dict[str, torch.Tensor], unet: VideoCrafterUNet3D, vae: AutoencoderKL,
                    text_encoder: CLIPTextModel, scheduler: VideoCrafterDDIMScheduler,
                    text_layers: int = build.OPEN_CLIP_LAYERS) -> None:
    """Fill our components in place from a published state dict (tensors are assigned, not copied,
    so a U-Net built on the meta device works). `text_layers`: blocks in the published text tower."""
    u, v, t, buffers = split_checkpoint(state_dict)
    check_schedule(buffers, scheduler)
    for module, part, links, where, unused in (
            (unet, u, unet_links(unet), "U-Net (model.diffusion_model.*)", lambda k: False),
            (vae, v, vae_links(vae), "VAE (first_stage_model.*)", lambda k: False),
            (text_encoder, t, text_links(text_encoder), "text encoder (cond_stage_model.model.*)",
             lambda k: text_unused(k, text_encoder.config.num_hidden_layers, text_layers))):
        module.load_state_dict(to_ours(part, links, module, where, unused), strict=True, assign=True)


def read_checkpoint(path: Path, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint {str(path)!r} does not exist (expected VideoCrafter2's model.ckpt)")
    def read(mmap: bool):
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle, mmap=mmap)

    try:
        try:
            ckpt = read(mmap=True)  # no copy of the 1.4B weights in memory
        except RuntimeError as e:
            if "mmap" not in str(e):  # an old (non-zip) pickle cannot be memory-mapped
                raise
            ckpt = read(mmap=False)
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"checkpoint {str(path)!r} could not be read ({type(e).__name__}: {first}); "
                          "a trusted file that weights_only refuses can be read with --trust-pickle") from e
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict):
        raise ConfigError(f"checkpoint {str(path)!r} holds no state dict (expected a dict with 'state_dict')")
    return sd


def prepare_tokenizer(directory: Path, max_length: int = 77) -> CLIPTokenizer:
    """CLIP's BPE (vocab.json + merges.txt). The model pads with id 0 ("!") like open_clip.tokenize
    (VideoCrafter2Model.token_ids); "!" is not made the pad token here, since a special token is split out of
    the prompt text (see model.open_clip_tokenizer)."""
    directory = Path(directory)
    missing = [f for f in ("vocab.json", "merges.txt") if not (directory / f).is_file()]
    if missing and not (directory / "tokenizer.json").is_file():
        raise ConfigError(f"tokenizer directory {str(directory)!r}: {missing[0]} is missing "
                          "(a CLIP BPE tokenizer, e.g. the tokenizer/ folder of stabilityai/stable-diffusion-2-1-base)")
    tok = open_clip_tokenizer(CLIPTokenizer.from_pretrained(directory, model_max_length=max_length))
    if tok.convert_tokens_to_ids("!") != 0:
        raise ConfigError(f"tokenizer {str(directory)!r}: '!' has id {tok.convert_tokens_to_ids('!')}, expected 0 "
                          "(open_clip pads with token 0; this is not CLIP's vocabulary)")
    return tok


def convert_checkpoint(ckpt: Path, tokenizer_dir: Path, trust_pickle: bool = False):
    """model.ckpt -> a VideoCrafter2Model (float32, CPU) with the published sampling defaults."""
    sd = read_checkpoint(ckpt, trust_pickle)
    tokenizer = prepare_tokenizer(tokenizer_dir)
    with torch.device("meta"):  # no random init of 1.4B parameters that the checkpoint overwrites
        unet = VideoCrafterUNet3D(**build.UNET)
    vae, text = AutoencoderKL(**build.VAE), CLIPTextModel(CLIPTextConfig(**build.TEXT))
    scheduler = VideoCrafterDDIMScheduler()
    load_components(sd, unet, vae, text, scheduler)
    unet, vae, text = (m.float() for m in (unet, vae, text))
    return VideoCrafter2Model(unet, vae, text, tokenizer, scheduler, dict(build.PUBLISHED_META))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", type=Path, help="VideoCrafter2's model.ckpt")
    p.add_argument("out", type=Path, help="output model directory (must not exist)")
    p.add_argument("--tokenizer", type=Path, required=True,
                   help="a CLIP BPE tokenizer directory (vocab.json, merges.txt)")
    p.add_argument("--trust-pickle", action="store_true", help="load the checkpoint with weights_only=False")
    args = p.parse_args(argv)
    try:
        if args.out.exists():
            raise ConfigError(f"output directory {str(args.out)!r} already exists")
        model = convert_checkpoint(args.checkpoint, args.tokenizer, args.trust_pickle)
        tmp = args.out.with_name(args.out.name + ".tmp")
        model.save(tmp)
        tmp.rename(args.out)  # nothing half-written under the final name
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out}: U-Net {model.num_params() / 1e9:.3f}B parameters, {len(model.units())} units")
    return 0


if __name__ == "__main__":
    sys.exit(main())
