"""The published component configurations (configs/inference_t2v_512_v2.0.yaml) and tiny
ones of the same architecture for tests."""
from __future__ import annotations

from diffusers import AutoencoderKL
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from vip.models.videocrafter2.scheduler import VideoCrafterDDIMScheduler
from vip.models.videocrafter2.unet3d import VideoCrafterUNet3D

# Sampling defaults of the published text-to-video script (scripts/run_text2video.sh, base_512_v2).
PUBLISHED_META = {"backbone": "videocrafter2", "frames": 16, "height": 320, "width": 512, "fps": 28,
                  "steps": 50, "guidance": 12.0, "eta": 1.0}

UNET = {}  # VideoCrafterUNet3D's defaults are the published 512 v2.0 U-Net
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
           block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215)
# OpenCLIP ViT-H-14's text tower cut after its 23rd of 24 blocks: VideoCrafter reads the
# penultimate block's output through ln_final, which is exactly CLIPTextModel's
# last_hidden_state with 23 layers (as diffusers does for Stable Diffusion 2).
TEXT = dict(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
            num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5,
            projection_dim=1024, bos_token_id=49406, eos_token_id=49407, pad_token_id=0)
OPEN_CLIP_LAYERS = 24

TINY_UNET = dict(model_channels=16, channel_mult=(1, 2), num_res_blocks=2, attention_resolutions=(1,),
                 num_head_channels=8, context_dim=16, norm_num_groups=4, addition_attention_heads=2)
TINY_VAE = dict(VAE, layers_per_block=1, norm_num_groups=4, block_out_channels=(8, 16),
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                sample_size=16)
TINY_META = dict(PUBLISHED_META, frames=4, height=16, width=16, steps=3, guidance=3.0)
TINY_TEXT_LENGTH = 16


def byte_tokenizer(max_length: int = TINY_TEXT_LENGTH) -> CLIPTokenizer:
    """A CLIP BPE tokenizer without merges (every byte a token), built offline. Byte tokens come
    in CLIP's order, so "!" is id 0: the pad id open_clip uses (VideoCrafter2Model.token_ids pads with it)."""
    chars = list(bytes_to_unicode().values())
    vocab = {tok: i for i, tok in enumerate(chars + [c + "</w>" for c in chars])}
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                          num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
                          hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=0)


def tiny_components():
    """(unet, vae, text_encoder, tokenizer, scheduler) of the tiny architecture, random weights."""
    tok = byte_tokenizer()
    return (VideoCrafterUNet3D(**TINY_UNET), AutoencoderKL(**TINY_VAE), CLIPTextModel(tiny_text_config(tok)),
            tok, VideoCrafterDDIMScheduler())
