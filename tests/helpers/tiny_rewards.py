"""Tiny random reward checkpoints in the published layouts, loaded through load_reward as a user's
download would be: VideoScore (an Idefics2 directory, sharded safetensors: the committed golden
checkpoint) and VideoReward (the KwaiVGI directory: model_config.json, checkpoint-<step>/model.pth
with the PEFT LoRA names, and the Qwen2-VL base model's files: the one writer, also of
tests/unit/rewards/test_videoreward.py). copy_checkpoint: a copy of a checkpoint directory to edit
(less one of its files, for the tests that a missing file is named)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

# ---- VideoScore (TIGER-Lab/VideoScore): Idefics2 + Linear(hidden, 5) ----
# The committed tiny checkpoint in the published layout (sharded safetensors, the Mistral-style
# tokenizer.json, processor files) that tests/goldens/test_golden_videoscore.py compares against the
# published code: its scores vary with the clip, so it serves as a stage's reward as it is.
VIDEOSCORE_GOLDEN = Path(__file__).resolve().parents[1] / "goldens" / "videoscore" / "ckpt"


def videoscore_checkpoint() -> Path:
    if not (VIDEOSCORE_GOLDEN / "config.json").is_file():
        raise FileNotFoundError(f"{VIDEOSCORE_GOLDEN} is missing (scripts/goldens/videoscore.py writes it)")
    return VIDEOSCORE_GOLDEN


def _byte_bpe(specials: list[str], **tokens):
    """Byte-level BPE over the 256 byte symbols, no merges (every byte a token), built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {t: i for i, t in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], **tokens))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


# ---- VideoReward (KwaiVGI/VideoReward): Qwen2-VL-2B + a LoRA fine-tune and a reward head ----
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
VIDEOREWARD_NORM = {"VQ_mean": 3.6757, "VQ_std": 2.2476, "MQ_mean": 1.1646, "MQ_std": 1.3811,
                    "TA_mean": 2.8105, "TA_std": 2.5121}
LORA_R, LORA_ALPHA = 4, 8
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def qwen_tokenizer():
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=_byte_bpe([]), eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS[1:]})
    return fast


def _qwen_config(tok, vocab: int):
    from transformers import Qwen2VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    return Qwen2VLConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=vocab,
                         rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, in_channels=3,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def _published_state_dict(net, g: torch.Generator) -> dict:
    """net's weights as the published model.pth holds them: PEFT prefix, transformers 4.45 module
    names, LoRA on the language model's linears (W0 + alpha/r B A = net's weight), and a generation
    head the reward does not use."""
    out, scale = {}, LORA_ALPHA / LORA_R
    for k, v in net.state_dict().items():
        if k.startswith("model.language_model."):
            old = "base_model.model.model." + k.removeprefix("model.language_model.")
        elif k.startswith("model.visual."):
            old = "base_model.model.visual." + k.removeprefix("model.visual.")
        else:
            old = "base_model.model." + k
        layer = old.rsplit(".", 1)[0]
        if old.startswith("base_model.model.model.layers.") and layer.endswith(LORA_TARGETS):
            if k.endswith(".weight"):
                a = torch.randn(LORA_R, v.shape[1], generator=g) * 0.1
                b = torch.randn(v.shape[0], LORA_R, generator=g) * 0.1
                out[f"{layer}.base_layer.weight"] = v - scale * b @ a
                out[f"{layer}.lora_A.default.weight"], out[f"{layer}.lora_B.default.weight"] = a, b
            else:
                out[f"{layer}.base_layer.bias"] = v
        else:
            out[old] = v
    out["base_model.model.lm_head.weight"] = torch.randn(net.model.language_model.embed_tokens.weight.shape, generator=g)
    return out


def write_videoreward(path: Path, seed: int = 0, output_dim: int = 1) -> Path:
    """A KwaiVGI/VideoReward directory (tiny, random) with the base model's files in a subdirectory."""
    videoreward_net(path, seed, output_dim)
    return Path(path)


def videoreward_net(path: Path, seed: int = 0, output_dim: int = 1):
    """write_videoreward's directory, returning the VideoRewardNet whose weights model.pth holds
    (W0 + alpha/r B A by construction)."""
    from vip.rewards.videoreward import SPECIAL_TOKENS, VideoRewardNet

    path = Path(path)
    base = path / "Qwen2-VL-2B-Instruct"
    base.mkdir(parents=True)
    tok = qwen_tokenizer()
    tok.save_pretrained(base)
    vocab = len(tok) + len(SPECIAL_TOKENS)  # the published code resized the embedding after adding them
    config = _qwen_config(tok, vocab)
    config.save_pretrained(base)
    (base / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}))
    torch.manual_seed(seed)
    net = VideoRewardNet(config, output_dim)
    (path / "checkpoint-11352").mkdir()
    torch.save(_published_state_dict(net, torch.Generator().manual_seed(seed)), path / "checkpoint-11352" / "model.pth")
    (path / "model_config.json").write_text(json.dumps({
        "data_config": {"max_frame_pixels": 200704, "num_frames": None, "fps": 2.0, "eval_dim": ["VQ", "MQ", "TA"],
                        "prompt_template_type": "detailed_special", "sample_type": "uniform"},
        "model_config": {"model_name_or_path": "Qwen/Qwen2-VL-2B-Instruct", "output_dim": output_dim,
                         "use_special_tokens": True, "reward_token": "special"},
        "peft_lora_config": {"lora_enable": True, "lora_r": LORA_R, "lora_alpha": LORA_ALPHA, "use_rslora": False,
                             "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens", "visual"]},
        "inference_config": VIDEOREWARD_NORM}))
    return net


def copy_checkpoint(src: Path, dst: Path, remove: str | None = None) -> Path:
    """dst: a copy of the checkpoint directory src, less its file or folder `remove` (relative) if given."""
    shutil.copytree(src, dst)
    if remove is not None:
        target = Path(dst) / remove
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    return Path(dst)
