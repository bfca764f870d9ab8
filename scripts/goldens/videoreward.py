"""Golden outputs of the published VideoReward inference (KwaiVGI/VideoAlign inference.py
VideoVLMRewardInference: its model loading, vision_process.py, prompt_template.py and trainer.py
Qwen2VLRewardModelBT) on a tiny random checkpoint in the published layout.

Reference: KwaiVGI/VideoAlign (commit recorded in SOURCE.json), run under transformers 4.45.2 (its
environment.yaml pin), peft 0.10.0, trl 0.8.6, accelerate 0.34.0, datasets 2.19.2, decord 0.6.0.

Venv (throwaway, not ours):
    python3 -m venv /work/venvs/videoalign
    /work/venvs/videoalign/bin/pip install torch==2.13.0           # first: the local CPU wheel
    /work/venvs/videoalign/bin/pip install transformers==4.45.2 tokenizers==0.20.3 peft==0.10.0 trl==0.8.6 \
        accelerate==0.34.0 datasets==2.19.2 pyarrow==16.1.0 pandas==2.2.2 numpy==1.26.4 rich==13.7.1 \
        tyro==0.8.4 decord==0.6.0 qwen-vl-utils==0.0.14 av safetensors torchvision==0.28.0
    # torchvision 0.28.0 on PyPI is a CUDA build: pip pulls nvidia-* wheels, which are unused here and may
    # be removed (pip uninstall nvidia-* cuda-* triton); keep torch at 2.13.0+cpu.
Run (from the repository root):
    /work/venvs/videoalign/bin/python scripts/goldens/videoreward.py --videoalign /work/refs/videoalign \
        --out tests/goldens/videoreward

What runs unchanged: VideoVLMRewardInference (inference.py) end to end: load_configs_from_json,
create_model_and_processor (AutoProcessor, the three reward tokens, Qwen2VLRewardModelBT.from_pretrained,
resize_token_embeddings, get_peft_model with find_target_linear_names), load_model_from_checkpoint
(checkpoint-*/model.pth, strict), prepare_batch (build_prompt 'detailed_special', process_vision_info with
decord reading real .mp4 files, the Qwen2-VL processor and chat template), reward() (use_norm False / True).
What is adjusted, none of it touching the numbers:
  * attention: inference.py hard-codes disable_flash_attn2=False (flash_attention_2, CUDA only); the
    TrainingConfig it builds is given disable_flash_attn2=True, so the same model runs with 'sdpa' on CPU
    (the switch train_reward.py offers); float32 (dtype=torch.float32, device='cpu').
  * torchvision: the PyPI 0.28.0 wheel is a CUDA build whose C extension cannot load beside torch+cpu, and
    its import then fails registering fake kernels for torchvision::nms/qnms. Those two op schemas are
    declared first so that `import torchvision` completes; vision_process uses only
    transforms.functional.resize on tensors (pure torch.nn.functional.interpolate), never those ops.
  * base weights: the published model_config.json names Qwen/Qwen2-VL-2B-Instruct; the reference's
    from_pretrained needs weights there, so it runs on a temporary copy of the checkpoint whose
    model_name_or_path points at a temporary base directory (the committed config/tokenizer/preprocessor
    files plus random weights). model.pth then replaces every weight (strict load_state_dict), so the base
    weights do not reach the outputs.
  * videos: the clips are written as lossless H.264 RGB (libx264rgb, qp 0) .mp4 files at their frame rate
    and read by the reference through decord, as published; the script checks that decord gives back the
    exact stored bytes and frame rate.

The checkpoint is made by the reference stack itself: create_model_and_processor builds the PEFT-wrapped
Qwen2VLRewardModelBT (output_dim 3, the published train.sh: lora r 64 / alpha 128 there, r 4 / alpha 8
here, lora_namespan_exclude ['lm_head', 'rm_head', 'embed_tokens'] + ['visual']), every weight is drawn at
random (LoRA B too, so the merge matters) and model.state_dict() is saved as checkpoint-<step>/model.pth,
which is what trainer.py's _save writes with save_full_model.

Writes tests/goldens/videoreward/:
  VideoReward/   the checkpoint: model_config.json, checkpoint-11352/model.pth (PEFT-wrapped keys),
                 Qwen2-VL-2B-Instruct/ (config.json flat as published, rope_scaling type 'mrope';
                 tokenizer.json with Qwen2's pipeline and 512 merges learnt on the prompt template, vocab.json,
                 merges.txt, tokenizer_config.json (Qwen2Tokenizer), special_tokens_map.json,
                 chat_template.json (Qwen2-VL-2B-Instruct's), preprocessor_config.json; no weights)
  clips.safetensors   uint8 clips [F, H, W, 3] (rgb24 as decoded), one per case; case 'e' is stored at
                 1/14 size and is np.repeat-ed 14x along H and W (the test does the same; SOURCE.json holds
                 the sha256 of every full clip)
  cases.json     per case: prompt, fps of the file, shape
  outputs.safetensors  per case: input_ids (unpadded), position_ids [3, L] as they reach the language
                 model's rotary embedding, raw [3] and normalised [3] rewards (VQ, MQ, TA), the number of
                 frames the reference sampled and the video grid (t, h, w)
  SOURCE.json    reference, versions, commit, command, date
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
# Qwen2-VL-2B-Instruct's chat template (chat_template.json / tokenizer_config.json), verbatim.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")
# The published inference_config (KwaiVGI/VideoReward model_config.json).
NORM = {"VQ_mean": 3.6757, "VQ_std": 2.2476, "MQ_mean": 1.1646, "MQ_std": 1.3811, "TA_mean": 2.8105, "TA_std": 2.5121}
LORA_R, LORA_ALPHA = 4, 8
STEP = 11352
REPEAT_E = 14
# name: (frames, H, W, fps of the file, prompt). Frame counts chosen so the 2-fps rule matters:
#   a, b: 16 @ 8 fps -> 4 (same shape: batched together on our side, different prompt lengths)
#   c: 20 @ 8 fps -> 5 -> round(2.5) * 2 = 4 (Python's round half to even; half up would give 6)
#   d: 44 @ 8 fps -> 11 -> round(5.5) * 2 = 12 (6 temporal patches)
#   e: 36 @ 16 fps -> 4.5 -> 4; 420 x 504 > max_frame_pixels: downscaled (antialiased) to 392 x 476
CASES = {
    "a": (16, 32, 32, 8.0, "a red circle moves left"),
    "b": (16, 32, 32, 8.0, "A café at night — 3 people walk past the window, 日本の猫"),
    "c": (20, 40, 56, 8.0, "stripes drift slowly to the right"),
    "d": (44, 24, 40, 8.0, "a flickering green light in a dark room, the camera shakes"),
    "e": (36, 30 * REPEAT_E, 36 * REPEAT_E, 16.0, "large blocks of colour swap places"),
}


def make_clips() -> dict[str, np.ndarray]:
    """uint8 clips [F, H, W, 3] with varied content (case 'e' returned at 1/14 size)."""
    rng = np.random.default_rng(20240611)
    out = {}
    f, h, w = CASES["a"][:3]  # a bright square moving left over a gradient, mild noise
    t, y, x = np.meshgrid(np.arange(f), np.arange(h), np.arange(w), indexing="ij")
    a = np.stack([x * 6 + 20, y * 5 + 40, np.full_like(x, 90)], -1).astype(np.int32)
    sq = (np.abs(y - 14) < 5) & (np.abs(x - (26 - t)) < 5)
    a[sq] = [250, 30, 30]
    out["a"] = np.clip(a + rng.integers(-8, 9, a.shape), 0, 255).astype(np.uint8)
    out["b"] = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)  # noise
    f, h, w = CASES["c"][:3]  # diagonal stripes drifting right
    t, y, x = np.meshgrid(np.arange(f), np.arange(h), np.arange(w), indexing="ij")
    s = ((x - 2 * t + y // 2) // 4) % 2
    c = np.stack([200 * s + 20, 120 * (1 - s) + 60, 40 + 3 * y], -1)
    out["c"] = np.clip(c, 0, 255).astype(np.uint8)
    f, h, w = CASES["d"][:3]  # dark, flickering green blob, shaking
    t, y, x = np.meshgrid(np.arange(f), np.arange(h), np.arange(w), indexing="ij")
    dy, dx = rng.integers(-3, 4, (2, f))
    r2 = (y - 12 - dy[t]) ** 2 + (x - 20 - dx[t]) ** 2
    g = (255 * np.exp(-r2 / 40.0) * (0.4 + 0.6 * (t % 3 == 0))).astype(np.int32)
    d = np.stack([g // 6, g, g // 4], -1) + rng.integers(0, 12, (f, h, w, 3))
    out["d"] = np.clip(d, 0, 255).astype(np.uint8)
    out["e"] = rng.integers(0, 256, (36, 30, 36, 3), dtype=np.uint8)  # blocks, after the 14x repeat
    out["e"][18:] = out["e"][18:, ::-1]  # halfway the blocks swap places
    return out


def full_clip(name: str, stored: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(stored, REPEAT_E, 1), REPEAT_E, 2) if name == "e" else stored


QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                 r"\s*[\r\n]+|\s+(?!\S)|\s+")
VOCAB_SIZE = 768  # 256 bytes + merges learnt on the prompt template, so the query is ~1k tokens, not ~4k


def build_tokenizer(corpus: list[str]):
    """A tiny tokenizer.json with Qwen2's pipeline (NFC normaliser; Split on Qwen2's pattern, isolated,
    then ByteLevel without its own regex; byte-level BPE; ByteLevel decoder), its BPE merges learnt here on
    `corpus`, plus Qwen2-VL's chat/vision special tokens; saved as the published files are
    (tokenizer_class Qwen2Tokenizer, vocab.json + merges.txt beside tokenizer.json)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=VOCAB_SIZE, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None)
    fast.add_special_tokens({"additional_special_tokens": QWEN_SPECIALS[1:]})
    fast.add_special_tokens({"pad_token": "<|endoftext|>"})
    return fast


def write_base(base: Path, corpus: list[str]):
    """The base model's non-weight files (as in Qwen/Qwen2-VL-2B-Instruct), tiny."""
    from transformers import Qwen2VLConfig

    base.mkdir(parents=True)
    fast = build_tokenizer(corpus)
    fast.save_pretrained(base)
    model = json.loads((base / "tokenizer.json").read_text())["model"]
    (base / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False))
    merges = [" ".join(m) if isinstance(m, list) else m for m in model["merges"]]
    (base / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    tc = json.loads((base / "tokenizer_config.json").read_text())
    tc.update(tokenizer_class="Qwen2Tokenizer", chat_template=CHAT_TEMPLATE, model_max_length=32768,
              padding_side="left", errors="replace", split_special_tokens=False)
    (base / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False))
    (base / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2))
    ids = {t: fast.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    config = Qwen2VLConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=32768,
        tie_word_embeddings=False, rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]},
        vision_config=dict(depth=2, embed_dim=16, hidden_size=32, num_heads=2, mlp_ratio=2, in_channels=3,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"], torch_dtype="float32")
    config.save_pretrained(base)
    # As published (Qwen2-VL-2B-Instruct's config.json): rope_scaling type 'mrope' (4.45 saves it renamed
    # 'default') and the vision config written out in full (4.45 drops its defaults).
    cj = json.loads((base / "config.json").read_text())
    cj["rope_scaling"] = {"type": "mrope", "mrope_section": [1, 1, 2]}
    cj["vision_config"] = {"depth": 2, "embed_dim": 16, "mlp_ratio": 2, "num_heads": 2, "in_chans": 3,
                           "hidden_size": 32, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                           "temporal_patch_size": 2}
    (base / "config.json").write_text(json.dumps(cj, indent=2) + "\n")
    config = Qwen2VLConfig.from_pretrained(base)
    (base / "preprocessor_config.json").write_text(json.dumps({
        "min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}, indent=2))
    return config


def model_config_json(base_name: str) -> dict:
    """model_config.json as train_reward.py's save_configs_to_json writes it (train.sh's values; the tiny
    LoRA rank), plus the published inference_config; training_args trimmed to a few keys."""
    return {
        "data_config": {"meta_data": "/path/to/dataset/meta_data.csv", "data_dir": "/path/to/dataset",
                        "meta_data_test": None, "max_frame_pixels": 200704, "num_frames": None, "fps": 2.0,
                        "p_shuffle_frames": 0.0, "p_color_jitter": 0.0, "eval_dim": ["VQ", "MQ", "TA"],
                        "prompt_template_type": "detailed_special", "add_noise": False, "sample_type": "uniform",
                        "use_tied_data": True},
        "training_args": {"output_dir": "rm_output", "bf16": True, "learning_rate": 2e-06},
        "model_config": {"model_name_or_path": base_name, "model_revision": "main", "output_dim": 3,
                         "use_special_tokens": True, "freeze_vision_tower": False, "freeze_llm": False,
                         "tune_merger": True, "torch_dtype": "float32", "trust_remote_code": False,
                         "attn_implementation": None, "load_in_8bit": False, "load_in_4bit": False,
                         "bnb_4bit_quant_type": "nf4", "use_bnb_nested_quant": False, "reward_token": "special",
                         "loss_type": "btt"},
        "peft_lora_config": {"lora_enable": True, "vision_lora": False, "lora_r": LORA_R, "lora_alpha": LORA_ALPHA,
                             "lora_dropout": 0.05, "lora_target_modules": None,
                             "lora_namespan_exclude": ["lm_head", "rm_head", "embed_tokens", "visual"],
                             "lora_modules_to_save": None, "lora_task_type": "CAUSAL_LM", "use_rslora": False,
                             "num_lora_modules": -1},
        "inference_config": NORM,
    }


def randomise(model, seed: int) -> None:
    """Every weight drawn at random, scaled so the tiny network's outputs differ visibly between inputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                base = 1.0 if name.endswith("weight") else 0.0  # norm scales about 1, biases about 0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name or "lm_head" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            else:
                fan_in = math.prod(p.shape[1:])
                scale = (0.5 if "lora_" in name else 1.0) / math.sqrt(fan_in)
                p.copy_(scale * torch.randn(p.shape, generator=g))


def write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    """Lossless H.264 RGB: decord gives back exactly these bytes (checked)."""
    import av
    from fractions import Fraction

    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264rgb", rate=Fraction(fps).limit_denominator(1000))
        s.width, s.height, s.pix_fmt, s.options = frames.shape[2], frames.shape[1], "rgb24", {"qp": "0"}
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def import_reference(videoalign: Path):
    # torchvision 0.28.0 (PyPI, CUDA build) beside torch+cpu: its _C cannot load, and _meta_registrations
    # then fails on these two schemas. Declared here, unused (see the docstring).
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import_reference.lib = lib  # keep the library alive
    sys.path.insert(0, str(videoalign))
    import inference
    import train_reward
    import utils
    import vision_process
    return inference, train_reward, utils, vision_process


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videoalign", required=True, type=Path, help="KwaiVGI/VideoAlign checkout")
    ap.add_argument("--out", default="tests/goldens/videoreward", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    inference, train_reward, utils, vision_process = import_reference(args.videoalign.resolve())
    from safetensors.torch import save_file

    out = args.out
    if out.exists():
        shutil.rmtree(out)
    ckpt = out / "VideoReward"
    base = ckpt / "Qwen2-VL-2B-Instruct"
    from prompt_template import build_prompt
    config = write_base(base, [build_prompt(p, ["VQ", "MQ", "TA"], "detailed_special") for p in
                               ("a cat on a mat", "two dogs run on the beach at sunset")])
    (ckpt / "model_config.json").write_text(json.dumps(model_config_json("Qwen/Qwen2-VL-2B-Instruct"), indent=4))

    tmp = Path(tempfile.mkdtemp(prefix="videoreward_golden_"))
    try:
        # The reference's from_pretrained needs base weights: a temporary base dir with random ones.
        tmp_base = tmp / "Qwen2-VL-2B-Instruct"
        shutil.copytree(base, tmp_base)
        from transformers import Qwen2VLForConditionalGeneration
        Qwen2VLForConditionalGeneration(config).save_pretrained(tmp_base)
        tmp_ckpt = tmp / "VideoReward"
        tmp_ckpt.mkdir()
        (tmp_ckpt / "model_config.json").write_text(json.dumps(model_config_json(str(tmp_base)), indent=4))

        # 1. The checkpoint, made by the reference's own model construction (train_reward.py).
        mc = model_config_json(str(tmp_base))
        del mc["data_config"]["meta_data"], mc["data_config"]["data_dir"]
        model, processor, _ = train_reward.create_model_and_processor(
            model_config=utils.ModelConfig(**mc["model_config"]),
            peft_lora_config=utils.PEFTLoraConfig(**mc["peft_lora_config"]),
            training_args=utils.TrainingConfig(output_dir="", disable_flash_attn2=True, bf16=False, fp16=False,
                                               gradient_checkpointing=False))
        randomise(model, seed=1)
        sd = model.state_dict()
        assert any(k.endswith("lora_B.default.weight") for k in sd) and "base_model.model.rm_head.weight" in sd
        (ckpt / f"checkpoint-{STEP}").mkdir()
        torch.save(sd, ckpt / f"checkpoint-{STEP}" / "model.pth")
        shutil.copytree(ckpt / f"checkpoint-{STEP}", tmp_ckpt / f"checkpoint-{STEP}")
        del model

        # 2. Clips as video files.
        clips = make_clips()
        paths, prompts, meta, hashes = [], [], {}, {}
        for name, (f, h, w, fps, prompt) in CASES.items():
            full = full_clip(name, clips[name])
            assert full.shape == (f, h, w, 3), (name, full.shape)
            p = tmp / f"{name}.mp4"
            write_mp4(p, full, fps)
            import decord
            vr = decord.VideoReader(str(p))
            assert len(vr) == f and vr.get_avg_fps() == fps, (name, len(vr), vr.get_avg_fps())
            assert np.array_equal(vr.get_batch(list(range(f))).asnumpy(), full), f"{name}: decode is not lossless"
            paths.append(str(p))
            prompts.append(prompt)
            meta[name] = {"prompt": prompt, "fps": fps, "frames": f, "height": h, "width": w,
                          "stored_repeat": REPEAT_E if name == "e" else 1}
            hashes[name] = hashlib.sha256(np.ascontiguousarray(full).tobytes()).hexdigest()

        # 3. The published inference, as inference.py runs it (flash-attn 2 -> sdpa, see the docstring).
        TrainingConfig = inference.TrainingConfig

        def training_config(**kw):
            kw["disable_flash_attn2"] = True
            return TrainingConfig(**kw)

        inference.TrainingConfig = training_config
        inferencer = inference.VideoVLMRewardInference(str(tmp_ckpt), device="cpu", dtype=torch.float32)
        assert inferencer.model.base_model.model.model.config._attn_implementation == "sdpa"
        captured = {}

        def grab(_module, a, kw):
            captured["position_ids"] = (a[1] if len(a) > 1 else kw["position_ids"]).detach().clone()

        lm = inferencer.model.base_model.model.model
        hook = lm.rotary_emb.register_forward_pre_hook(grab, with_kwargs=True)
        sampled = {}
        read = vision_process.VIDEO_READER_BACKENDS["decord"]

        def counting_reader(ele):
            v = read(ele)
            sampled[Path(ele["video"]).stem] = v.shape[0]
            return v

        vision_process.VIDEO_READER_BACKENDS["decord"] = counting_reader
        with torch.no_grad():
            batch = inferencer.prepare_batch(paths, prompts)
            raw = inferencer.reward(paths, prompts, use_norm=False)
            pos = captured["position_ids"]
            normed = inferencer.reward(paths, prompts, use_norm=True)
        hook.remove()

        outputs = {}
        ids, mask = batch["input_ids"], batch["attention_mask"]
        grids = batch["video_grid_thw"]
        for i, name in enumerate(CASES):
            n = int(mask[i].sum())
            assert bool(mask[i, :n].all()) and not bool(mask[i, n:].any())  # right padding
            outputs[f"{name}.input_ids"] = ids[i, :n].to(torch.int32).contiguous()
            outputs[f"{name}.position_ids"] = pos[:, i, :n].to(torch.int32).contiguous()
            outputs[f"{name}.raw"] = torch.tensor([raw[i][k] for k in ("VQ", "MQ", "TA")], dtype=torch.float64)
            outputs[f"{name}.normalised"] = torch.tensor([normed[i][k] for k in ("VQ", "MQ", "TA")], dtype=torch.float64)
            outputs[f"{name}.frames"] = torch.tensor([sampled[name]], dtype=torch.int32)
            outputs[f"{name}.grid_thw"] = grids[i].to(torch.int32).contiguous()
        out.mkdir(exist_ok=True)
        save_file(outputs, out / "outputs.safetensors")
        save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in clips.items()}, out / "clips.safetensors")
        (out / "cases.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    import decord
    import peft
    import tokenizers
    import transformers
    import trl
    commit = subprocess.run(["git", "-C", str(args.videoalign), "rev-parse", "HEAD"], capture_output=True,
                            text=True, check=True).stdout.strip()
    source = {
        "reference": "KwaiVGI/VideoAlign inference.py VideoVLMRewardInference (trainer.py Qwen2VLRewardModelBT, "
                     "vision_process.py, prompt_template.py 'detailed_special', utils.load_model_from_checkpoint)",
        "repo": "https://github.com/KwaiVGI/VideoAlign",
        "repo_commit": commit,
        "versions": {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "peft": peft.__version__, "trl": trl.__version__, "decord": decord.__version__,
                     "torch": torch.__version__, "numpy": np.__version__},
        "adjustments": ["attention sdpa instead of flash_attention_2 (TrainingConfig.disable_flash_attn2=True), "
                        "float32 on CPU",
                        "torchvision::nms/qnms schemas declared before importing the CUDA torchvision wheel",
                        "base weights: random, in a temporary base dir named by a temporary model_config.json; "
                        "model.pth replaces them all",
                        "videos: lossless libx264rgb .mp4 files read by decord (decoded bytes checked)"],
        "command": "python scripts/goldens/videoreward.py --videoalign <VideoAlign checkout> "
                   "--out tests/goldens/videoreward",
        "date": datetime.date.today().isoformat(),
        "clip_sha256": hashes,
        "rewards": {name: {"raw": [round(float(v), 4) for v in outputs[f"{name}.raw"]],
                           "normalised": [round(float(v), 4) for v in outputs[f"{name}.normalised"]],
                           "frames": int(outputs[f"{name}.frames"]), "grid_thw": outputs[f"{name}.grid_thw"].tolist()}
                    for name in CASES},
    }
    (out / "SOURCE.json").write_text(json.dumps(source, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(source["rewards"], indent=1))


if __name__ == "__main__":
    main()
