"""VideoScore (TIGER-Lab/VideoScore, VideoScore-v1.1): Mantis-Idefics2-8B with a regression head.

The published model class (mantis.models.idefics2.Idefics2ForSequenceClassification) is an
Idefics2Model plus `score = Linear(hidden, 5)` read at the last token of the query. mantis
does not import with our pinned transformers, so the same network is written here from
transformers' Idefics2Model; the checkpoint's keys (`model.*`, `score.weight`, `score.bias`)
load into it unchanged.

Inference follows the published example (TIGER-AI-Lab/VideoScore examples/run_videoscore.py):
  frames  every total/N-th frame, N = 16 (v1) or 48 (v1.1; set reward.frames: 48), as PIL RGB
  query   REGRESSION_QUERY_PROMPT with the text prompt, then "<image> " once per frame
  inputs  the checkpoint's own Idefics2Processor (tokenizer + image processor settings), with the
          tokenizer as transformers 4 builds it (`load_tokenizer`): the saved tokenizer.json pipeline
  output  logits at the last token: visual quality, temporal consistency, dynamic degree,
          text-to-video alignment, factual consistency (about 1-4)
Clips are batched (reward.batch_size) with right padding; the head reads each query's last
real token (the published code finds it as the first pad minus one: the same token).

Two transformers-5 behaviours are undone here, both checked against the published code run under
transformers 4.45 (tests/goldens/test_golden_videoscore.py):
  * AutoTokenizer rebuilds a Llama/Mistral tokenizer's pipeline (Metaspace in place of the saved
    Prepend("▁") + Replace(" ", "▁") normalizer), which tokenises the " " after each image group, and
    so the last token the head reads, differently ("▁" instead of the published "▁▁").
  * Idefics2Config copies the text model's hidden_size and rms_norm_eps into perceiver_config only
    when the hidden sizes differ; for the real 4096-wide checkpoint they do not, so the perceiver
    would run with the default eps 1e-6, where the published model uses the text model's (1e-5).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vip.config import ConfigError, RewardConfig
from vip.rewards.base import ASPECTS, RewardModel
from vip.rewards.frames import check_clips, require_frames, stride_indices, to_pil, to_uint8
from vip.rewards.loading import checkpoint_dir, device_and_dtype, empty_init, load_weights, read_json, require_file

# The published query, verbatim (whitespace included: it is tokenised).
QUERY_TEMPLATE = """
Suppose you are an expert in judging and evaluating the quality of AI-generated videos,
please watch the following frames of a given video and see the text prompt for generating the video,
then give scores from 5 different dimensions:
(1) visual quality: the quality of the video in terms of clearness, resolution, brightness, and color
(2) temporal consistency, both the consistency of objects or humans and the smoothness of motion or movements
(3) dynamic degree, the degree of dynamic changes
(4) text-to-video alignment, the alignment between the text prompt and the video content
(5) factual consistency, the consistency of the video content with the common-sense and factual knowledge

for each dimension, output a float number from 1.0 to 4.0,
the higher the number is, the better the video performs in that sub-score, 
the lowest 1.0 means Bad, the highest 4.0 means Perfect/Real (the video is like a real video)
Here is an output example:
visual quality: 3.2
temporal consistency: 2.7
dynamic degree: 4.0
text-to-video alignment: 2.3
factual consistency: 1.8

For this video, the text prompt is "{text_prompt}",
all the frames of video are as follows:
"""

# The head's five outputs in order; the first four are our ASPECTS.
OUTPUTS = ASPECTS + ("factual_consistency",)
PUBLISHED_FRAMES = 16  # VideoScore v1; VideoScore-v1.1 reads 48 (reward.frames: 48)
ARCHITECTURE = "Idefics2ForSequenceClassification"
WEIGHTS_INDEX = "model.safetensors.index.json"
WEIGHTS_SINGLE = "model.safetensors"


def build_query(prompt: str, frames: int) -> str:
    """The published query for one clip: the template, then one '<image> ' per frame."""
    return QUERY_TEMPLATE.format(text_prompt=prompt) + "<image> " * frames


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, L] mask -> [B] index of each row's last attended token (left or right padding)."""
    L = attention_mask.shape[1]
    return L - 1 - attention_mask.flip(1).to(torch.long).argmax(1)


class VideoScoreNet(nn.Module):
    """Idefics2Model + Linear(hidden, 5) at the last token: the published network's layout."""

    def __init__(self, config):
        super().__init__()
        from transformers.models.idefics2.modeling_idefics2 import Idefics2Model

        self.model = Idefics2Model(config)
        self.score = nn.Linear(config.text_config.hidden_size, len(OUTPUTS))

    def forward(self, input_ids, attention_mask, pixel_values, pixel_attention_mask) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                            pixel_attention_mask=pixel_attention_mask, use_cache=False).last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
        return self.score(last)  # [B, 5]


class VideoScore(RewardModel):
    name = "videoscore"

    def __init__(self, net: VideoScoreNet, processor, frames: int, device: torch.device, dtype: torch.dtype,
                 batch_size: int):
        self.net, self.processor, self.frames = net.eval().requires_grad_(False), processor, frames
        self.device, self.dtype, self.batch_size = device, dtype, batch_size

    def queries(self, prompts: list[str]) -> list[str]:
        return [build_query(p, self.frames) for p in prompts]

    def sample(self, videos: torch.Tensor) -> torch.Tensor:
        """[B, F, 3, H, W] float -> [B, N, 3, H, W] uint8, the frames the model sees."""
        require_frames(videos.shape[1], self.frames, "VideoScore")
        return to_uint8(videos[:, stride_indices(videos.shape[1], self.frames)])

    def encode(self, frames: torch.Tensor, prompts: list[str]):
        """Sampled uint8 frames [B, N, 3, H, W] and their prompts -> the processor's tensors for one batch
        (input_ids, attention_mask right-padded; pixel_values, pixel_attention_mask)."""
        return self.processor(text=self.queries(prompts), images=[to_pil(c) for c in frames], padding=True,
                              return_tensors="pt")

    @torch.inference_mode()
    def score(self, videos: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        check_clips(videos, prompts)
        frames = self.sample(videos)
        out = []
        for b in range(0, len(prompts), self.batch_size):
            enc = self.encode(frames[b:b + self.batch_size], prompts[b:b + self.batch_size])
            logits = self.net(enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device),
                              enc["pixel_values"].to(self.device, self.dtype),
                              enc["pixel_attention_mask"].to(self.device))
            out.append(logits.float().cpu())
        logits = torch.cat(out) if out else torch.zeros(0, len(OUTPUTS))
        return {a: logits[:, i] for i, a in enumerate(OUTPUTS)}


def _weights(path: Path) -> tuple[dict, dict, str]:
    """name -> loader and name -> shape over the checkpoint's safetensors file(s), lazily."""
    from safetensors import safe_open

    if (path / WEIGHTS_INDEX).is_file():
        index = read_json(path / WEIGHTS_INDEX)
        if not isinstance(index.get("weight_map"), dict):
            raise ConfigError(f"reward file {str(path / WEIGHTS_INDEX)!r} lacks its 'weight_map'")
        by_file: dict[str, list[str]] = {}
        for k, f in index["weight_map"].items():
            by_file.setdefault(f, []).append(k)
        source = WEIGHTS_INDEX
    else:
        require_file(path, WEIGHTS_SINGLE, f"or a sharded {WEIGHTS_INDEX} with its shards")
        by_file, source = {WEIGHTS_SINGLE: None}, WEIGHTS_SINGLE
    loaders, shapes = {}, {}
    for fname, keys in by_file.items():
        handle = safe_open(str(require_file(path, fname, f"a weight shard named in {source}")), framework="pt")
        for k in (handle.keys() if keys is None else keys):
            shapes[k] = tuple(handle.get_slice(k).get_shape())
            loaders[k] = (lambda h=handle, k=k: h.get_tensor(k))
    return loaders, shapes, f"reward checkpoint {str(path / source)!r}"


# LlamaTokenizerFast's defaults (transformers 4), for keys a tokenizer_config.json leaves out.
LLAMA_TOKEN_DEFAULTS = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": None}
LLAMA_CLASSES = (None, "LlamaTokenizer", "LlamaTokenizerFast")


def _content(token):
    return token.get("content") if isinstance(token, dict) else token


def load_tokenizer(path: Path):
    """The checkpoint's tokenizer as the published code gets it: AutoProcessor under transformers 4
    gives a LlamaTokenizerFast, which runs tokenizer.json's saved pipeline (normalizer, model, decoder,
    added tokens) as is and rebuilds only the post-processor ("<s> $A" from add_bos_token /
    add_eos_token). transformers 5's AutoTokenizer would rebuild the whole pipeline instead (see the
    module docstring), so the file is loaded directly. Right padding (see VideoScore.score)."""
    from transformers import PreTrainedTokenizerFast

    cfg_file = require_file(path, "tokenizer_config.json", "the published processor")
    cfg = read_json(cfg_file)
    if cfg.get("tokenizer_class") not in LLAMA_CLASSES:
        raise ConfigError(f"reward file {str(cfg_file)!r}: 'tokenizer_class' {cfg.get('tokenizer_class')!r} is not "
                          "VideoScore's LlamaTokenizer (Mistral)")
    if cfg.get("add_prefix_space") is not None:  # transformers 4 then rebuilds from tokenizer.model instead
        raise ConfigError(f"reward file {str(cfg_file)!r}: 'add_prefix_space' {cfg['add_prefix_space']!r} is not "
                          "supported (the published VideoScore leaves it null)")
    specials = {k: _content(cfg.get(k, default)) for k, default in LLAMA_TOKEN_DEFAULTS.items()}
    if "added_tokens_decoder" not in cfg and (path / "special_tokens_map.json").is_file():
        # transformers 4's legacy format: special_tokens_map.json overrides tokenizer_config.json
        smap = read_json(path / "special_tokens_map.json")
        specials.update({k: _content(smap[k]) for k in LLAMA_TOKEN_DEFAULTS if k in smap})
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(require_file(path, "tokenizer.json", "the published tokenizer")),
        add_bos_token=bool(cfg.get("add_bos_token", True)), add_eos_token=bool(cfg.get("add_eos_token", False)),
        clean_up_tokenization_spaces=bool(cfg.get("clean_up_tokenization_spaces", False)), padding_side="right",
        **{k: v for k, v in specials.items() if v is not None})
    if tokenizer.pad_token is None:  # right padding: the real tokens never attend to the pads
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def load(cfg: RewardConfig) -> VideoScore:
    """A downloaded TIGER-Lab/VideoScore or VideoScore-v1.1 directory (docs/rewards.md)."""
    from transformers import Idefics2Config, Idefics2Processor
    from transformers.models.idefics2.image_processing_pil_idefics2 import Idefics2ImageProcessorPil

    path = checkpoint_dir(cfg, "TIGER-Lab/VideoScore (or VideoScore-v1.1)")
    device, dtype = device_and_dtype(cfg)
    raw = read_json(require_file(path, "config.json"))
    if ARCHITECTURE not in (raw.get("architectures") or []) or raw.get("model_type") != "idefics2":
        raise ConfigError(f"reward file {str(path / 'config.json')!r}: 'architectures' {raw.get('architectures')} / "
                          f"'model_type' {raw.get('model_type')!r} is not VideoScore's "
                          f"[{ARCHITECTURE!r}] / 'idefics2'")
    labels = len(raw["id2label"]) if isinstance(raw.get("id2label"), dict) else raw.get("num_labels")
    if labels != len(OUTPUTS):
        raise ConfigError(f"reward file {str(path / 'config.json')!r}: key 'id2label' has {labels} labels; "
                          f"VideoScore's head has {len(OUTPUTS)} ({', '.join(OUTPUTS)})")
    for name in ("tokenizer_config.json", "preprocessor_config.json"):
        require_file(path, name, "the published processor")
    require_file(path, "tokenizer.json", "the published tokenizer")
    try:
        config = Idefics2Config.from_pretrained(path, local_files_only=True)
    except Exception as e:  # transformers' validators raise several kinds; name the file
        raise ConfigError(f"reward file {str(path / 'config.json')!r} is not a valid Idefics2 config: "
                          f"{str(e).splitlines()[-1]}") from None
    # The published perceiver reads the text model's hidden_size and rms_norm_eps (mantis'
    # Idefics2PerceiverResampler / Idefics2PerceiverLayer); see the module docstring.
    config.perceiver_config.hidden_size = config.text_config.hidden_size
    config.perceiver_config.rms_norm_eps = config.text_config.rms_norm_eps
    tokenizer = load_tokenizer(path)
    # The PIL image processor, as published (transformers would pick its torchvision variant
    # wherever torchvision is installed, which resizes slightly differently).
    seq_len = read_json(path / "processor_config.json").get("image_seq_len", 64) \
        if (path / "processor_config.json").is_file() else 64
    processor = Idefics2Processor(image_processor=Idefics2ImageProcessorPil.from_pretrained(path, local_files_only=True),
                                  tokenizer=tokenizer, image_seq_len=seq_len)
    n_latents = config.perceiver_config.resampler_n_latents
    if processor.image_seq_len != n_latents:
        raise ConfigError(f"reward checkpoint {str(path)!r}: processor 'image_seq_len' {processor.image_seq_len} "
                          f"differs from config.json 'perceiver_config.resampler_n_latents' {n_latents}")
    if processor.image_token_id != config.image_token_id:
        raise ConfigError(f"reward checkpoint {str(path)!r}: the tokenizer's '<image>' id {processor.image_token_id} "
                          f"differs from config.json 'image_token_id' {config.image_token_id}")
    frames = cfg.frames or PUBLISHED_FRAMES
    loaders, shapes, source = _weights(path)
    with empty_init(device, dtype):
        net = VideoScoreNet(config)
    load_weights(net, loaders, shapes, source)
    return VideoScore(net, processor, frames, device, dtype, cfg.batch_size)
