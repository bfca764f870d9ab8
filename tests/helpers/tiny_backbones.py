"""Tiny random backbones written in the layouts the loaders read, as a user's download would be:

  animatediff            an SD1.5 directory (unet/ vae/ text_encoder/ tokenizer/) + a MotionAdapter directory
  animatediff_lightning  the same SD1.5 directory + a MotionAdapter state dict in one .safetensors file
                         (animatediff_lightning_<n>step_diffusers.safetensors)
  videocrafter2          a converted directory (what `python -m vip.models.videocrafter2.convert` writes:
                         the published model.ckpt always builds the real-size U-Net)
  wan2.1                 the Diffusers layout (transformer/ vae/ text_encoder/ tokenizer/ scheduler/)

Each writer returns the model.* overrides that point a config at what it wrote (and set its tiny
shape); the caller adds steps, guidance and the rest."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

LIGHTNING_STEPS = 2


@contextmanager
def one_torch_thread():
    """torch at one intra-op thread while the with-block runs (a module fixture's body): the tensors are
    tiny, so a second thread only adds waiting on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def write_sd15(root: Path, seed: int = 0, vae_size: int = 32) -> Path:
    """A tiny SD1.5 directory (unet/, vae/, text_encoder/, tokenizer/). vae_size is the VAE's
    config sample_size (not a weight shape)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from vip.toyvid.text import build_text_encoder, build_tokenizer

    torch.manual_seed(seed)
    root = Path(root)
    UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, in_channels=4, out_channels=4, sample_size=16,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=2, norm_num_groups=16).save_pretrained(root / "unet")
    AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=16,
                  layers_per_block=1, sample_size=vae_size).save_pretrained(root / "vae")
    build_text_encoder(hidden=16).save_pretrained(root / "text_encoder")
    build_tokenizer().save_pretrained(root / "tokenizer")
    return root


def tiny_adapter(mid: bool = True, heads: int = 8, groups: int = 32, seed: int | None = 1):
    """A MotionAdapter of the U-Net above (mid: a mid-block motion module, as v1-5-2; v3 has none).
    The defaults, 8 heads and 32 norm groups, are what AnimateDiff publishes and what the Lightning
    loader assumes (they are not in a state dict's shapes). seed None: draw from torch's generator
    as it stands (after write_sd15, say) instead of reseeding it."""
    from diffusers import MotionAdapter

    if seed is not None:
        torch.manual_seed(seed)
    return MotionAdapter(block_out_channels=(32, 64), motion_layers_per_block=1, motion_num_attention_heads=heads,
                         motion_norm_num_groups=groups, motion_max_seq_length=8, use_motion_mid_block=mid)


def write_animatediff(root: Path) -> list[str]:
    root = Path(root)
    sd15 = write_sd15(root / "stable-diffusion-v1-5")
    tiny_adapter().save_pretrained(root / "animatediff-motion-adapter-v1-5-2")
    return ["model.backbone=animatediff", f"model.path={sd15}",
            f"model.adapter={root / 'animatediff-motion-adapter-v1-5-2'}",
            "model.frames=4", "model.height=32", "model.width=32"]


def write_animatediff_lightning(root: Path) -> list[str]:
    from safetensors.torch import save_file

    root = Path(root)
    sd15 = write_sd15(root / "stable-diffusion-v1-5")
    file = root / f"animatediff_lightning_{LIGHTNING_STEPS}step_diffusers.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_adapter(seed=2).state_dict().items()}, str(file))
    return ["model.backbone=animatediff_lightning", f"model.path={sd15}", f"model.adapter={file}",
            f"model.steps={LIGHTNING_STEPS}", "model.guidance=1.0",
            "model.frames=4", "model.height=32", "model.width=32"]


def write_videocrafter2(root: Path, seed: int = 0) -> list[str]:
    from vip.models.videocrafter2 import VideoCrafter2Model
    from vip.models.videocrafter2.build import TINY_META, tiny_components

    torch.manual_seed(seed)
    path = Path(root) / "VideoCrafter2-tiny"
    VideoCrafter2Model(*tiny_components(), TINY_META).save(path)
    return ["model.backbone=videocrafter2", f"model.path={path}", "model.frames=4", "model.height=16",
            "model.width=16"]


WAN_WORDS = ("a red blue green yellow circle square triangle moving moves left right up down on black gray white "
             "background staying still").split()
WAN_DIR = "Wan2.1-T2V-tiny-Diffusers"


def wan_tokenizer(words: list[str] = WAN_WORDS):
    """A word-level tokenizer (whitespace split) over words, after <pad> </s> <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def write_wan(root: Path, seed: int = 0, layers: int = 3, words: list[str] = WAN_WORDS,
              text_vocab: int | None = None) -> list[str]:
    """root/WAN_DIR; text_vocab: the text encoder's vocabulary size (None: the tokenizer's)."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from vip.models.published_configs import WAN21_SCHEDULER

    torch.manual_seed(seed)
    d = Path(root) / WAN_DIR
    WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8, in_channels=4,
                          out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32, num_layers=layers,
                          rope_max_seq_len=32).save_pretrained(d / "transformer")
    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[True],
                     latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0]).save_pretrained(d / "vae")
    tok = wan_tokenizer(words)
    UMT5EncoderModel(UMT5Config(vocab_size=text_vocab or len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=2,
                                num_heads=2, relative_attention_num_buckets=8)).save_pretrained(d / "text_encoder")
    tok.save_pretrained(d / "tokenizer")
    UniPCMultistepScheduler(**{k: v for k, v in WAN21_SCHEDULER.items() if not k.startswith("_")}).save_pretrained(
        d / "scheduler")
    return ["model.backbone=wan2.1", f"model.path={d}", "model.frames=5", "model.height=16", "model.width=16"]


WRITERS = {"animatediff": write_animatediff, "animatediff_lightning": write_animatediff_lightning,
           "videocrafter2": write_videocrafter2, "wan2.1": write_wan}
