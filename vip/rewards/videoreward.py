"""VideoReward (KwaiVGI/VideoReward, VideoAlign): Qwen2-VL-2B-Instruct with a linear reward head
read at three special tokens, <|VQ_reward|>, <|MQ_reward|>, <|TA_reward|>.

Inference follows the published code (KwaiVGI/VideoAlign inference.py, vision_process.py,
prompt_template.py, trainer.py Qwen2VLRewardModelBT), reading its model_config.json:
  frames  qwen-vl-utils 'uniform' sampling at data_config.fps (2) frames per second of the clip
          (clip rate: SOURCE_FPS), at least 4, an even count; reward.frames = N samples N instead
  pixels  each frame resized (bicubic, antialiased, back to 8 bit) to a multiple of 28 with
          128*28*28 <= h*w <= data_config.max_frame_pixels (200704 = 448*448)
  input   the chat template's text for one user turn: the video, then the
          'detailed_special' prompt holding the three reward tokens and the text prompt
  patches rescale 1/255, normalise with the base model's preprocessor_config.json, 14-px
          patches in pairs of frames, 2x2 merge: Qwen2-VL's video processor, written in torch
  model   Qwen2-VL with plain sequential positions 0..L-1 on all three M-RoPE axes (the published
          reward model never computes Qwen2-VL's 3-D video positions: sequential_positions)
  output  rm_head (bias-free) at each reward token; (r - mean) / std with the checkpoint's
          inference_config (the published default, use_norm=True)
The published checkpoint is a LoRA fine-tune saved whole (checkpoint-*/model.pth with the
PEFT wrapper's keys, transformers 4.45 layout); it is merged here into plain Qwen2-VL
weights (W + alpha/r * B A), so no peft is needed at run time.

Aspects (docs/decisions.md): VQ -> visual_quality, TA -> text_alignment, MQ (motion quality:
stability, naturalness and amplitude) -> both temporal_consistency and dynamic_degree, plus
'motion_quality'. Scores stay on VideoReward's normalised scale (not 1-4).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as Fn
from torch import nn

from vip.config import ConfigError, RewardConfig
from vip.rewards.base import RewardModel
from vip.rewards.frames import check_clips, linspace_indices, require_frames, to_uint8
from vip.rewards.loading import checkpoint_dir, device_and_dtype, empty_init, load_weights, read_json, require_file

# The published 'detailed_special' prompt, verbatim (whitespace included: it is tokenised).
DETAILED_PROMPT_WITH_SPECIAL_TOKEN = """
You are tasked with evaluating a generated video based on three distinct criteria: Visual Quality, Motion Quality, and Text Alignment. Please provide a rating from 0 to 10 for each of the three categories, with 0 being the worst and 10 being the best. Each evaluation should be independent of the others.

**Visual Quality:**  
Evaluate the overall visual quality of the video, with a focus on static factors. The following sub-dimensions should be considered:
- **Reasonableness:** The video should not contain any significant biological or logical errors, such as abnormal body structures or nonsensical environmental setups.
- **Clarity:** Evaluate the sharpness and visibility of the video. The image should be clear and easy to interpret, with no blurring or indistinct areas.
- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other visual elements (e.g., hair, clothing, shadows).
- **Aesthetic and Creativity:** Assess the artistic aspects of the video, including the color scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should convey a sense of harmony and balance.
- **Safety:** The video should not contain harmful or inappropriate content, such as political, violent, or adult material. If such content is present, the image quality and satisfaction score should be the lowest possible. 

Please provide the ratings of Visual Quality: <|VQ_reward|>
END

**Motion Quality:**  
Assess the dynamic aspects of the video, with a focus on dynamic factors. Consider the following sub-dimensions:
- **Stability:** Evaluate the continuity and stability between frames. There should be no sudden, unnatural jumps, and the video should maintain stable attributes (e.g., no fluctuating colors, textures, or missing body parts).
- **Naturalness:** The movement should align with physical laws and be realistic. For example, clothing should flow naturally with motion, and facial expressions should change appropriately (e.g., blinking, mouth movements).
- **Aesthetic Quality:** The movement should be smooth and fluid. The transitions between different motions or camera angles should be seamless, and the overall dynamic feel should be visually pleasing.
- **Fusion:** Ensure that elements in motion (e.g., edges of the subject, hair, clothing) blend naturally with the background, without obvious artifacts or the feeling of cut-and-paste effects.
- **Clarity of Motion:** The video should be clear and smooth in motion. Pay attention to any areas where the video might have blurry or unsteady sections that hinder visual continuity.
- **Amplitude:** If the video is largely static or has little movement, assign a low score for motion quality.

Please provide the ratings of Motion Quality: <|MQ_reward|>
END

**Text Alignment:**  
Assess how well the video matches the textual prompt across the following sub-dimensions:
- **Subject Relevance** Evaluate how accurately the subject(s) in the video (e.g., person, animal, object) align with the textual description. The subject should match the description in terms of number, appearance, and behavior.
- **Motion Relevance:** Evaluate if the dynamic actions (e.g., gestures, posture, facial expressions like talking or blinking) align with the described prompt. The motion should match the prompt in terms of type, scale, and direction.
- **Environment Relevance:** Assess whether the background and scene fit the prompt. This includes checking if real-world locations or scenes are accurately represented, though some stylistic adaptation is acceptable.  
- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate how well the video adheres to this style.
- **Camera Movement Relevance:** Check if the camera movements (e.g., following the subject, focus shifts) are consistent with the expected behavior from the prompt.

Textual prompt - {text_prompt}
Please provide the ratings of Text Alignment: <|TA_reward|>
END
"""

SPECIAL_TOKENS = ("<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>")  # head outputs in this order
DIMENSIONS = ("VQ", "MQ", "TA")
SYSTEM_PROMPT = "You are a helpful assistant."
VIDEO_PAD = "<|video_pad|>"

# qwen-vl-utils (VideoAlign vision_process.py) constants
IMAGE_FACTOR = 28
VIDEO_MIN_PIXELS = 128 * 28 * 28
FRAME_FACTOR = 2
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
# The clips' frame rate, which the published code reads from the video file: AnimateDiff and
# VideoCrafter2 clips are 16 frames played at 8 fps; reward.fps sets it for other backbones (Wan2.1: 16).
SOURCE_FPS = 8.0
# MQ fills two of our aspects: curation must not ask one to out-gap its own copy (vip.curation).
ASPECT_SOURCES = {"temporal_consistency": "motion_quality", "dynamic_degree": "motion_quality"}


def chat_text(prompt: str, video_tokens: int) -> str:
    """What Qwen2-VL-2B-Instruct's chat template renders for [user: video, text] with
    add_generation_prompt, with the video placeholder expanded to its merged patch count."""
    text = DETAILED_PROMPT_WITH_SPECIAL_TOKEN.format(text_prompt=prompt)
    return (f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
            f"<|vision_start|>{VIDEO_PAD * video_tokens}<|vision_end|>{text}<|im_end|>\n<|im_start|>assistant\n")


def published_frame_count(total: int, source_fps: float, fps: float) -> int:
    """qwen-vl-utils smart_nframes for the fps path (Python's round, as published)."""
    min_frames = math.ceil(FPS_MIN_FRAMES / FRAME_FACTOR) * FRAME_FACTOR
    max_frames = math.floor(min(FPS_MAX_FRAMES, total) / FRAME_FACTOR) * FRAME_FACTOR
    n = min(max(total / source_fps * fps, min_frames), max_frames)
    return min(round(n / FRAME_FACTOR) * FRAME_FACTOR, total)


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = IMAGE_FACTOR):
    """qwen-vl-utils: sides divisible by `factor`, area within [min_pixels, max_pixels], aspect kept."""
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h, w = math.floor(height / beta / factor) * factor, math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


def patchify(frames: torch.Tensor, patch: int, temporal: int, merge: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Normalised frames [T, C, H, W] -> Qwen2-VL patches [t*h*w, C*temporal*patch*patch] and
    the grid (t, h, w); an odd frame count repeats the last frame (as the processor does)."""
    if pad := -frames.shape[0] % temporal:
        frames = torch.cat([frames, frames[-1:].expand(pad, -1, -1, -1)])
    T, C, H, W = frames.shape
    t, h, w = T // temporal, H // patch, W // patch
    x = frames.reshape(t, temporal, C, h // merge, merge, patch, w // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(t * h * w, C * temporal * patch * patch), (t, h, w)


def reward_positions(input_ids: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """[B, L] -> [B, 3] position of each reward token; each must occur exactly once per query."""
    cols = []
    for tid in token_ids:
        hit = input_ids == tid
        if not bool((hit.sum(1) == 1).all()):
            raise ValueError(f"reward token id {tid} must occur once per query; counts {hit.sum(1).tolist()} "
                             "(a prompt containing a reward token's text?)")
        cols.append(hit.to(torch.long).argmax(1))
    return torch.stack(cols, 1)


def sequential_positions(input_ids: torch.Tensor) -> torch.Tensor:
    """[B, L] -> [3, B, L] = 0..L-1 on each M-RoPE axis, video tokens included: what the published
    Qwen2VLRewardModelBT runs with. Its forward (VideoAlign trainer.py) embeds the video itself and calls
    the language model with position_ids=None, never computing get_rope_index / rope_deltas, and
    transformers 4.45's Qwen2VLModel then takes cache_position (0..L-1) for all three axes. Transformers 5's
    Qwen2VLModel would otherwise build 3-D (t, h, w) positions for the video tokens."""
    B, L = input_ids.shape
    return torch.arange(L, device=input_ids.device).view(1, 1, L).expand(3, B, L)


class VideoRewardNet(nn.Module):
    """Qwen2VLModel + rm_head = Linear(hidden, 1 or 3, bias=False) at the reward tokens."""

    def __init__(self, config, head_outputs: int):
        super().__init__()
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

        self.model = Qwen2VLModel(config)
        self.rm_head = nn.Linear(config.text_config.hidden_size, head_outputs, bias=False)

    def forward(self, input_ids, attention_mask, pixel_values_videos, video_grid_thw, token_ids) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values_videos=pixel_values_videos,
                            video_grid_thw=video_grid_thw, position_ids=sequential_positions(input_ids),
                            use_cache=False).last_hidden_state
        pos = reward_positions(input_ids, token_ids)  # [B, 3]
        h = hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))  # [B, 3, D]
        s = self.rm_head(h)  # [B, 3, 1 or 3]
        # One output: token k's scalar is dimension k. Three outputs (train.sh's output_dim 3):
        # dimension k is output k at token k (the published diagonal).
        return s[..., 0] if s.shape[-1] == 1 else s.diagonal(dim1=1, dim2=2)


class VideoReward(RewardModel):
    name = "videoreward"

    def __init__(self, net: VideoRewardNet, tokenizer, token_ids: list[int], settings: dict, device: torch.device,
                 dtype: torch.dtype, batch_size: int, frames: int = 0, source_fps: float = SOURCE_FPS):
        self.net, self.tokenizer, self.token_ids = net.eval().requires_grad_(False), tokenizer, token_ids
        self.s, self.device, self.dtype, self.batch_size, self.frames = settings, device, dtype, batch_size, frames
        self.source_fps = source_fps

    def frame_indices(self, total: int) -> list[int]:
        if self.frames:
            require_frames(total, self.frames, "VideoReward")
            n = min(round(self.frames / FRAME_FACTOR) * FRAME_FACTOR, total)
        else:
            require_frames(total, FRAME_FACTOR, "VideoReward (published minimum)", key="model.frames")
            n = published_frame_count(total, self.source_fps, self.s["fps"])
        return linspace_indices(total, n)

    def pixels(self, clips: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """uint8 [B, T, 3, H, W] -> patches [B * t*h*w, D] (model dtype) and the per-clip grid."""
        B, T, C, H, W = clips.shape
        h, w = smart_resize(H, W, VIDEO_MIN_PIXELS, self.s["max_pixels"])
        x = clips.reshape(B * T, C, H, W).to(self.device, torch.float32)
        if (h, w) != (H, W):  # torchvision's resize of uint8 frames: bicubic, antialiased, rounded back to 8 bit
            x = Fn.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=True)
            x = x.round().clamp(0, 255)
        mean = torch.tensor(self.s["mean"], device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.s["std"], device=self.device).view(1, 3, 1, 1)
        x = ((x / 255.0 - mean) / std).reshape(B, T, C, h, w)
        out = [patchify(v, self.s["patch"], self.s["temporal"], self.s["merge"]) for v in x]
        return torch.cat([p for p, _ in out]).to(self.dtype), out[0][1]

    def queries(self, prompts: list[str], grid: tuple[int, int, int]) -> list[str]:
        t, h, w = grid
        return [chat_text(p, t * h * w // self.s["merge"] ** 2) for p in prompts]

    @torch.inference_mode()
    def raw(self, videos: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """Head outputs [B, 3] (VQ, MQ, TA) before normalisation."""
        check_clips(videos, prompts)
        clips = to_uint8(videos[:, self.frame_indices(videos.shape[1])])
        out = []
        for b in range(0, len(prompts), self.batch_size):
            pix, grid = self.pixels(clips[b:b + self.batch_size])
            texts = self.queries(prompts[b:b + self.batch_size], grid)
            enc = self.tokenizer(texts, padding=True, return_tensors="pt")
            thw = torch.tensor([grid] * len(texts), device=self.device)
            s = self.net(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device), pix, thw,
                         self.token_ids)
            out.append(s.float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 3)

    def score(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        r = self.raw(videos, prompts)
        if self.s["norm"]:
            r = (r - torch.tensor(self.s["norm"]["mean"])) / torch.tensor(self.s["norm"]["std"])
        vq, mq, ta = r.unbind(1)
        return {"visual_quality": vq, "temporal_consistency": mq, "dynamic_degree": mq.clone(),
                "text_alignment": ta, "motion_quality": mq.clone()}


def _expect(cfg: dict, section: str, key: str, allowed, file: Path) -> None:
    v = cfg.get(section, {}).get(key)
    if v not in allowed:
        raise ConfigError(f"reward file {str(file)!r}: key '{section}.{key}' is {v!r}; VideoReward's inference "
                          f"here supports {allowed}")


def _checkpoint_file(path: Path) -> Path:
    """The newest checkpoint-<step>/model.pth, as the published loader picks it."""
    steps = sorted((d for d in path.glob("checkpoint-*") if d.is_dir() and d.name.split("-")[-1].isdigit()),
                   key=lambda d: int(d.name.split("-")[-1]))
    if not steps:
        raise ConfigError(f"reward checkpoint {str(path)!r} lacks a 'checkpoint-<step>/' directory with 'model.pth' "
                          "(see docs/rewards.md)")
    return require_file(steps[-1], "model.pth", "the whole fine-tuned model, as published")


def merged_weights(sd: dict, scale: float, source: str) -> tuple[dict, dict]:
    """The published state dict (PEFT wrapper, transformers 4.45 names) -> loaders and shapes
    under VideoRewardNet's names, LoRA merged: W = W0 + scale * B @ A."""
    def rename(k: str) -> str | None:
        k = k.removeprefix("base_model.model.")
        if k.startswith("lm_head."):
            return None  # generation head: unused by the reward
        if k.startswith("visual."):
            return "model." + k
        if k.startswith("model."):
            return "model.language_model." + k.removeprefix("model.")
        return k

    loaders, shapes = {}, {}
    for k in sd:
        if ".lora_" in k:
            if not (k.endswith(".lora_A.default.weight") or k.endswith(".lora_B.default.weight")):
                raise ConfigError(f"{source}: LoRA weight {k!r} is of a kind this loader does not merge")
            continue
        name = rename(k.replace(".base_layer.", "."))
        if name is None:
            continue
        lora = k.removesuffix(".base_layer.weight") if k.endswith(".base_layer.weight") else None
        if lora is not None and f"{lora}.lora_A.default.weight" in sd:
            a, b = sd[f"{lora}.lora_A.default.weight"], sd[f"{lora}.lora_B.default.weight"]
            loaders[name] = (lambda w=sd[k], a=a, b=b: (w.float() + scale * (b.float() @ a.float())))
        else:
            loaders[name] = (lambda t=sd[k]: t)
        shapes[name] = tuple(sd[k].shape)
    return loaders, shapes


def load(cfg: RewardConfig) -> VideoReward:
    """A downloaded KwaiVGI/VideoReward directory with the base Qwen2-VL-2B-Instruct's config,
    preprocessor and tokenizer files in a subdirectory (docs/rewards.md)."""
    from transformers import AutoTokenizer, Qwen2VLConfig

    path = checkpoint_dir(cfg, "KwaiVGI/VideoReward")
    device, dtype = device_and_dtype(cfg)
    mc_file = require_file(path, "model_config.json")
    mc = read_json(mc_file)
    for section in ("data_config", "model_config", "peft_lora_config"):
        if not isinstance(mc.get(section), dict):
            raise ConfigError(f"reward file {str(mc_file)!r} lacks the section {section!r}")
    _expect(mc, "data_config", "prompt_template_type", ("detailed_special",), mc_file)
    _expect(mc, "data_config", "sample_type", ("uniform",), mc_file)
    _expect(mc, "model_config", "reward_token", ("special",), mc_file)
    _expect(mc, "model_config", "use_special_tokens", (True,), mc_file)
    if list(mc["data_config"].get("eval_dim") or []) != list(DIMENSIONS):
        raise ConfigError(f"reward file {str(mc_file)!r}: key 'data_config.eval_dim' is "
                          f"{mc['data_config'].get('eval_dim')!r}; expected {list(DIMENSIONS)}")
    base_name = str(mc["model_config"].get("model_name_or_path") or "")
    base = Path(base_name) if Path(base_name).is_dir() else path / Path(base_name).name
    if not base.is_dir():
        raise ConfigError(f"reward checkpoint {str(path)!r} lacks the base model directory {base.name!r} "
                          f"(model_config.json 'model_name_or_path' = {base_name!r}): put "
                          "Qwen2-VL-2B-Instruct's config, preprocessor and tokenizer files there (docs/rewards.md)")
    for name in ("config.json", "preprocessor_config.json", "tokenizer_config.json", "tokenizer.json"):
        require_file(base, name, "from the base model Qwen2-VL-2B-Instruct")
    try:
        config = Qwen2VLConfig.from_pretrained(base, local_files_only=True)
    except Exception as e:  # transformers' validators raise several kinds; name the file
        raise ConfigError(f"reward file {str(base / 'config.json')!r} is not a valid Qwen2-VL config: "
                          f"{str(e).splitlines()[-1]}") from None
    pp_file = base / "preprocessor_config.json"
    pp = read_json(pp_file)
    for key in ("image_mean", "image_std", "patch_size", "temporal_patch_size", "merge_size"):
        if key not in pp:
            raise ConfigError(f"reward file {str(pp_file)!r} lacks the key {key!r}")
    inference = mc.get("inference_config")
    norm = None
    if inference:
        try:
            norm = {"mean": [float(inference[f"{d}_mean"]) for d in DIMENSIONS],
                    "std": [float(inference[f"{d}_std"]) for d in DIMENSIONS]}
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"reward file {str(mc_file)!r}: 'inference_config' needs numeric "
                              f"{', '.join(f'{d}_mean/{d}_std' for d in DIMENSIONS)}") from None
    settings = {"fps": float(mc["data_config"].get("fps") or 2.0),
                "max_pixels": int(mc["data_config"].get("max_frame_pixels") or 200704),
                "mean": [float(v) for v in pp["image_mean"]], "std": [float(v) for v in pp["image_std"]],
                "patch": int(pp["patch_size"]), "temporal": int(pp["temporal_patch_size"]),
                "merge": int(pp["merge_size"]), "norm": norm}

    # Tokenizer as published: the base tokenizer plus the three reward tokens, right padding.
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True, padding_side="right")
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    token_ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))

    ckpt = _checkpoint_file(path)
    source = f"reward checkpoint {str(ckpt)!r}"
    try:
        sd = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which
        raise ConfigError(f"{source} could not be read as a state dict: {str(e).splitlines()[0]}") from None
    peft = mc["peft_lora_config"]
    r, alpha = float(peft.get("lora_r") or 1), float(peft.get("lora_alpha") or 1)
    scale = alpha / math.sqrt(r) if peft.get("use_rslora") else alpha / r
    loaders, shapes = merged_weights(sd, scale, source)
    for key in ("rm_head.weight", "model.language_model.embed_tokens.weight"):
        if key not in shapes:
            raise ConfigError(f"{source} lacks the weight {key!r}: not a VideoReward checkpoint?")
    head_outputs, vocab = shapes["rm_head.weight"][0], shapes["model.language_model.embed_tokens.weight"][0]
    if head_outputs not in (1, 3) or int(mc["model_config"].get("output_dim", head_outputs)) != head_outputs:
        raise ConfigError(f"{source}: 'rm_head.weight' has {head_outputs} outputs; model_config.json 'output_dim' "
                          f"is {mc['model_config'].get('output_dim')!r} (1 or 3 expected, equal)")
    if len(tokenizer) != vocab:
        raise ConfigError(f"{source}: the embedding has {vocab} rows but the tokenizer in {str(base)!r} plus the "
                          f"reward tokens has {len(tokenizer)}: a different base tokenizer?")

    config.text_config.vocab_size = vocab  # the published code resized the embedding to the tokenizer
    with empty_init(device, dtype):
        net = VideoRewardNet(config, head_outputs)
    load_weights(net, loaders, shapes, source)
    return VideoReward(net, tokenizer, token_ids, settings, device, dtype, cfg.batch_size, cfg.frames,
                       cfg.fps or SOURCE_FPS)
