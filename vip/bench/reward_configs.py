"""The reward models at their published sizes with random weights (nothing downloaded), built
through our reward code path: vip.rewards.videoscore.VideoScore over VideoScoreNet, and
vip.rewards.videoreward.VideoReward over VideoRewardNet, the classes a stage scores clips with.

The configs are the published config.json / preprocessor_config.json values, written here as
dicts (as vip/bench/real_configs.py does for AnimateDiff):
  * VideoScore (TIGER-Lab/VideoScore, VideoScore-v1.1) = HuggingFaceM4/idefics2-8b's architecture
    (Mistral-7B text model, SigLIP-so400m vision tower at 980 px positions, perceiver resampler to
    64 latents) + Linear(4096, 5). Idefics2ForConditionalGeneration at this config has
    8,402,768,112 parameters, the figure HuggingFace lists for idefics2-8b (8.4B, safetensors);
    the reward drops the 131M lm_head and adds the 5-output head: 8,271,704,309.
  * VideoReward (KwaiVGI/VideoReward) = Qwen/Qwen2-VL-2B-Instruct (tied embeddings): 2,208,985,600
    parameters as published (2.21B); the reward model is Qwen2VLModel (the embedding resized to the
    tokenizer plus three reward tokens) + a bias-free Linear(1536, 1).

What is not the published artefact: the weights (random, normal std 0.02, drawn on the device)
and the tokenizers. Neither tokenizer can be downloaded here, so each is a word-level stand-in
with the published special tokens at the published ids (VideoScore: <fake_token_around_image>,
<image>, <end_of_utterance> = 32000-32002 after a 32000-entry vocabulary; VideoReward: Qwen's
<|vision_start|> ... <|video_pad|> at 151652-151656). Image and video tokens are exact; the text
is one token per word or punctuation mark, which makes it longer than the published BPE would:
VideoScore's query is 477 text tokens here (of 1533 for v1, 3677 for v1.1; Mistral's tokenizer
would give an estimated 300-350), VideoReward's 1451 (docs/rewards.md estimates about 900 with
Qwen's). Sequences are so up to about 10% (VideoScore v1) and 45% (VideoReward, 16x256x256
clips) longer than published, and the rewards' times upper bounds on that account.

The weights are built in memory (empty_init, then random values in place on the device), not
written to a directory and read back: 16.5 GB of VideoScore shards would cost a minute of device
time to write and read and test nothing the tiny-checkpoint tests (tests/unit/rewards) do not.
`scale` > 1 shrinks every width, depth and the image sizes, for the CPU tests.
"""
from __future__ import annotations

import copy
import re

import torch

# ---- VideoScore: HuggingFaceM4/idefics2-8b (TIGER-Lab/VideoScore's config.json, 5 labels) ----
IDEFICS2_8B = {
    "architectures": ["Idefics2ForSequenceClassification"],
    "model_type": "idefics2",
    "image_token_id": 32001,
    "tie_word_embeddings": False,
    "num_labels": 5,
    "perceiver_config": {"model_type": "idefics2", "hidden_act": "silu", "resampler_n_latents": 64,
                         "resampler_depth": 3, "resampler_n_heads": 16, "resampler_head_dim": 96,
                         "num_key_value_heads": 4, "attention_dropout": 0.0},
    "text_config": {"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
                    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                    "max_position_embeddings": 32768, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                    "sliding_window": 4096, "vocab_size": 32003, "pad_token_id": 0, "hidden_act": "silu"},
    "vision_config": {"model_type": "idefics2", "hidden_size": 1152, "image_size": 980, "intermediate_size": 4304,
                      "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14,
                      "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6},
}
IDEFICS2_PREPROCESSOR = {  # preprocessor_config.json (Idefics2ImageProcessor)
    "do_convert_rgb": True, "do_image_splitting": False, "do_normalize": True, "do_pad": True,
    "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
    "resample": 2, "rescale_factor": 1 / 255, "size": {"longest_edge": 980, "shortest_edge": 378},
}
IDEFICS2_IMAGE_SEQ_LEN = 64  # processor_config.json
IDEFICS2_8B_PARAMS = 8_402_768_112  # Idefics2ForConditionalGeneration, as HuggingFace lists idefics2-8b

# ---- VideoReward: Qwen/Qwen2-VL-2B-Instruct config.json ----
QWEN2_VL_2B_INSTRUCT = {
    "architectures": ["Qwen2VLForConditionalGeneration"], "model_type": "qwen2_vl",
    "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
    "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
    "max_window_layers": 28, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "sliding_window": 32768,
    "use_sliding_window": False, "tie_word_embeddings": True, "hidden_act": "silu", "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                      "hidden_size": 1536, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                      "temporal_patch_size": 2},
}
QWEN2_VL_PREPROCESSOR = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
                         "merge_size": 2, "image_mean": [0.48145466, 0.4578275, 0.40821073],
                         "image_std": [0.26862954, 0.26130258, 0.27577711]}
QWEN2_VL_2B_PARAMS = 2_208_985_600  # as HuggingFace lists Qwen2-VL-2B-Instruct (2.21B, safetensors)
QWEN_TOKENIZER_LEN = 151657  # Qwen2-VL's tokenizer: 151643 BPE tokens + 14 specials (<|endoftext|> ... <|video_pad|>)
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
VIDEOREWARD_SETTINGS = {"fps": 2.0, "max_frame_pixels": 200704}  # model_config.json data_config
VIDEOREWARD_NORM = {"mean": [3.6757, 1.1646, 2.8105], "std": [2.2476, 1.3811, 2.5121]}  # inference_config


def _shrink_idefics2(cfg: dict, scale: int) -> dict:
    cfg = copy.deepcopy(cfg)
    if scale > 1:
        cfg["text_config"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2)
        cfg["vision_config"].update(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=56)
        cfg["perceiver_config"].update(resampler_n_latents=4, resampler_depth=1, resampler_n_heads=2,
                                       resampler_head_dim=8, num_key_value_heads=1)
    return cfg


def idefics2_config(scale: int = 1):
    """The published config as our loader leaves it (vip.rewards.videoscore.load: the perceiver reads
    the text model's hidden_size and rms_norm_eps)."""
    from transformers import Idefics2Config

    config = Idefics2Config(**_shrink_idefics2(IDEFICS2_8B, scale))
    config.perceiver_config.hidden_size = config.text_config.hidden_size
    config.perceiver_config.rms_norm_eps = config.text_config.rms_norm_eps
    return config


def qwen2vl_config(scale: int = 1, vocab: int | None = None):
    from transformers import Qwen2VLConfig

    cfg = copy.deepcopy(QWEN2_VL_2B_INSTRUCT)
    if scale > 1:
        cfg.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]})
        cfg["vision_config"].update(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2)
    if vocab is not None:
        cfg["vocab_size"] = vocab
    config = Qwen2VLConfig(**cfg)
    if vocab is not None:
        config.text_config.vocab_size = vocab  # as vip.rewards.videoreward.load does
    return config


def param_counts() -> dict[str, int]:
    """Parameters of the published architectures and of our reward networks, on the meta device."""
    from transformers import Idefics2ForConditionalGeneration, Qwen2VLForConditionalGeneration

    from vip.rewards.videoreward import SPECIAL_TOKENS, VideoRewardNet
    from vip.rewards.videoscore import VideoScoreNet

    def n(m):
        return sum(p.numel() for p in m.parameters())  # tied weights once
    with torch.device("meta"):
        return {"idefics2-8b": n(Idefics2ForConditionalGeneration(idefics2_config())),
                "videoscore": n(VideoScoreNet(idefics2_config())),
                "qwen2-vl-2b-instruct": n(Qwen2VLForConditionalGeneration(qwen2vl_config())),
                "videoreward": n(VideoRewardNet(qwen2vl_config(vocab=QWEN_TOKENIZER_LEN + len(SPECIAL_TOKENS)), 1))}


# ---- stand-in tokenizers (see the module docstring) ----
WORD = r"\w+|[^\w\s]"


def _word_tokenizer(texts: list[str], size: int, specials: list[str], **tokens):
    """A WordLevel tokenizer over the words of `texts`, padded with filler entries to `size` ids."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(WORD, t)})
    vocab = {t: i for i, t in enumerate(specials)}
    for w in words:
        vocab.setdefault(w, len(vocab))
    for i in range(len(vocab), size):
        vocab[f"<filler_{i}>"] = i
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[0]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(WORD), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, **tokens)


def videoscore_tokenizer(prompts: list[str]):
    """32000 base ids (<unk>, <s>, </s> first, as Mistral's); the processor adds its three specials."""
    from vip.rewards.videoscore import QUERY_TEMPLATE
    tok = _word_tokenizer([QUERY_TEMPLATE, *prompts], 32000, ["<unk>", "<s>", "</s>"], unk_token="<unk>",
                          bos_token="<s>", eos_token="</s>", pad_token="<unk>", padding_side="right")
    tok.add_bos_token = True
    return tok


def videoreward_tokenizer(prompts: list[str]):
    """Qwen's 151643 base ids then its 14 specials at 151643-151656 (the reward adds its three)."""
    from vip.rewards.videoreward import DETAILED_PROMPT_WITH_SPECIAL_TOKEN, SYSTEM_PROMPT
    tok = _word_tokenizer([DETAILED_PROMPT_WITH_SPECIAL_TOKEN, SYSTEM_PROMPT, "system user assistant", *prompts],
                          151643, ["<filler_unk>"], eos_token="<|im_end|>", padding_side="right")
    tok.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS})
    tok.pad_token = "<|endoftext|>"
    assert tok.convert_tokens_to_ids("<|video_pad|>") == QWEN2_VL_2B_INSTRUCT["video_token_id"]
    return tok


# ---- random weights in place ----
@torch.no_grad()
def randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.02) -> None:
    """Every floating parameter ~ N(0, std) (norm weights 1 + N(0, std)), drawn on its device; buffers
    (rotary tables, computed at construction) are left as built."""
    g = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    for name, p in module.named_parameters():
        if not p.is_floating_point():
            continue
        noise = torch.randn(p.shape, generator=g, device=p.device, dtype=torch.float32) * std
        p.copy_(noise + 1.0 if "norm" in name and name.endswith("weight") else noise)


def videoscore(frames: int = 16, device: str = "cpu", dtype: torch.dtype = torch.float32, scale: int = 1,
               batch_size: int = 4, prompts: list[str] | None = None, seed: int = 0):
    """VideoScore (v1: 16 frames; v1.1: 48) at the published size with random weights."""
    from transformers import Idefics2Processor
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

    from vip.rewards.loading import empty_init
    from vip.rewards.videoscore import VideoScore, VideoScoreNet

    config = idefics2_config(scale)
    config._attn_implementation = "sdpa"
    for sub in (config.text_config, config.vision_config, config.perceiver_config):
        sub._attn_implementation = "sdpa"
    pp = dict(IDEFICS2_PREPROCESSOR)
    if scale > 1:
        pp["size"] = {"longest_edge": 56, "shortest_edge": 28}
    processor = Idefics2Processor(image_processor=Idefics2ImageProcessorPil(**pp),
                                  tokenizer=videoscore_tokenizer(prompts or []),
                                  image_seq_len=config.perceiver_config.resampler_n_latents)
    assert processor.image_token_id == config.image_token_id, (processor.image_token_id, config.image_token_id)
    dev = torch.device(device)
    with empty_init(dev, dtype):
        net = VideoScoreNet(config)
    randomize(net, seed)
    return VideoScore(net, processor, frames, dev, dtype, batch_size)


def videoreward(device: str = "cpu", dtype: torch.dtype = torch.float32, scale: int = 1, batch_size: int = 4,
                prompts: list[str] | None = None, frames: int = 0, source_fps: float = 8.0, seed: int = 0):
    """VideoReward at the published size with random weights; frames 0 = the published fps sampling."""
    from vip.rewards.loading import empty_init
    from vip.rewards.videoreward import SPECIAL_TOKENS, VideoReward, VideoRewardNet

    tok = videoreward_tokenizer(prompts or [])
    tok.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    config = qwen2vl_config(scale, vocab=len(tok))
    config._attn_implementation = "sdpa"
    for sub in (config.text_config, config.vision_config):
        sub._attn_implementation = "sdpa"
    pp = QWEN2_VL_PREPROCESSOR
    settings = {"fps": VIDEOREWARD_SETTINGS["fps"], "max_pixels": VIDEOREWARD_SETTINGS["max_frame_pixels"],
                "mean": pp["image_mean"], "std": pp["image_std"], "patch": pp["patch_size"],
                "temporal": pp["temporal_patch_size"], "merge": pp["merge_size"], "norm": VIDEOREWARD_NORM}
    dev = torch.device(device)
    with empty_init(dev, dtype):
        net = VideoRewardNet(config, 1)
    randomize(net, seed)
    return VideoReward(net, tok, tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)), settings, dev, dtype, batch_size,
                       frames, source_fps)


REWARDS = ("videoscore-v1", "videoscore-v1.1", "videoreward")


def build(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32, scale: int = 1, batch_size: int = 4,
          prompts: list[str] | None = None, source_fps: float = 8.0):
    if name == "videoscore-v1":
        return videoscore(16, device, dtype, scale, batch_size, prompts)
    if name == "videoscore-v1.1":
        return videoscore(48, device, dtype, scale, batch_size, prompts)
    if name == "videoreward":
        return videoreward(device, dtype, scale, batch_size, prompts, source_fps=source_fps)
    raise ValueError(f"reward must be one of {REWARDS}, got {name!r}")
