"""Golden outputs of the published VideoScore inference (v1: 16 frames, v1.1: 48 frames) on a tiny random
checkpoint in the published layout.

Reference: TIGER-AI-Lab/VideoScore examples/run_videoscore.py (run as published, see `run_reference`),
with mantis-vl 0.0.5 (mantis.models.idefics2.Idefics2ForSequenceClassification) under transformers 4.45.2
(Mantis' setup.py pins transformers<4.46.0).

Venv (throwaway, not ours):
    python3 -m venv /work/venvs/mantis
    /work/venvs/mantis/bin/pip install torch==2.13.0            # first: the local CPU wheel
    /work/venvs/mantis/bin/pip install --no-deps mantis-vl==0.0.5  # its datasets/torchvision/decord pins are unused here
    /work/venvs/mantis/bin/pip install transformers==4.45.2 tokenizers==0.20.3 sentencepiece accelerate \
        safetensors numpy Pillow protobuf
Run (from the repository root):
    /work/venvs/mantis/bin/python scripts/goldens/videoscore.py --ref /work/refs/VideoScore \
        --out tests/goldens/videoscore

Writes tests/goldens/videoscore/:
  ckpt/          the tiny checkpoint, saved by the reference stack itself (Idefics2ForSequenceClassification
                 .save_pretrained, sharded; Idefics2Processor.save_pretrained): config.json, 2 safetensors shards
                 + index, tokenizer.json (a legacy Mistral-style sentencepiece-BPE pipeline: normalizer
                 Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, byte fallback, as Mistral-7B's / Idefics2's),
                 tokenizer_config.json, special_tokens_map.json, preprocessor_config.json, processor_config.json
  clips.safetensors  uint8 clips [B, F, H, W, 3] (rgb24, as a decoder gives them): v1 (F=24) and v11 (F=60)
  outputs.safetensors  per version (v1, v11 = v1.1) and clip i, "<v>.<i>.<name>": input_ids, attention_mask,
                 logits [5], the sampled frame indices;
                 and the full pixel_values of v1 clip 0
  prompts.json   the three text prompts
  SOURCE.json    reference, versions, commit, command, date
"""
from __future__ import annotations

import argparse
import ast
import datetime
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

VERSIONS = {"v1": 16, "v11": 48}        # MAX_NUM_FRAMES of VideoScore and VideoScore-v1.1
CLIP_FRAMES = {"v1": 24, "v11": 60}     # longer than MAX_NUM_FRAMES, so the script's stride sampling runs
H, W = 20, 32                            # resized by the image processor to 24 x 28 (both clamps apply)
PROMPTS = [
    "a red circle moves left",
    "A café at night, 3 people walk past the window",
    "a green triangle bounces on a white background while the camera pans slowly to the right",
]
IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]


def build_tokenizer():
    """A tiny legacy Mistral-style tokenizer.json built with `tokenizers`: BPE with byte fallback, normalizer
    Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, the sentencepiece decoder, "<s> $A" template.
    Lower-case letters and a little punctuation are pieces; everything else (capitals, digits, newlines,
    non-ASCII) falls back to bytes, as in the real vocabulary for rare characters."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in "▁abcdefghijklmnopqrstuvwxyz,.:()\"-/":
        vocab[ch] = len(vocab)
    merges = [("▁", "▁"), ("▁", "t"), ("h", "e"), ("▁t", "he"), ("i", "n"), ("▁", "a"), ("o", "f"), ("▁", "o"),
              ("▁o", "f"), ("e", "r"), ("o", "n"), ("r", "e"), ("a", "n"), ("▁", "s"), ("▁", "c"), ("e", "o"),
              ("v", "i"), ("d", "eo"), ("vi", "deo"), ("▁", "video"), ("i", "t"), ("y", ":")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.pre_tokenizer = None
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 1)])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in ("<unk>", "<s>", "</s>")])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in IMAGE_TOKENS])
    return tok


def randomize(model, seed: int):
    """Weights of a useful scale (the published init, N(0, 0.02), leaves the head's outputs nearly constant):
    matrices N(0, 1/fan_in), norms 1 + N(0, 0.1^2), other vectors N(0, 0.1^2), embeddings N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if p.dim() >= 2:
                fan_in = p[0].numel()
                std = 1.0 if "embed" in name else fan_in ** -0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "norm" in name or "layernorm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        model.score.bias.copy_(torch.tensor([2.5, 2.0, 3.0, 1.5, 2.2]))


def write_checkpoint(ckpt: Path):
    from transformers import Idefics2Config, Idefics2ImageProcessor, Idefics2Processor, LlamaTokenizerFast
    from mantis.models.idefics2 import Idefics2ForSequenceClassification

    ckpt.mkdir(parents=True, exist_ok=True)
    tok = LlamaTokenizerFast(tokenizer_object=build_tokenizer(), unk_token="<unk>", bos_token="<s>",
                             eos_token="</s>", pad_token="<unk>", add_bos_token=True, add_eos_token=False,
                             legacy=False, additional_special_tokens=IMAGE_TOKENS)
    # VideoScore's processor settings (do_image_splitting False, Idefics2 defaults: bilinear, mean = std = 0.5,
    # pad); only the edge limits are small (published: shortest 378, longest 980).
    image_processor = Idefics2ImageProcessor(do_image_splitting=False, size={"shortest_edge": 24, "longest_edge": 28})
    n_latents = 4
    processor = Idefics2Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=n_latents)
    config = Idefics2Config(
        text_config=dict(model_type="mistral", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=len(tok), max_position_embeddings=4096,
                         rms_norm_eps=1e-2, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=4),
        # hidden_size equal to the text model's, as the real config reads under transformers 5 (its default
        # 4096 is Mistral-7B's width): the published perceiver ignores it and takes the text model's width
        # and rms_norm_eps, and a large eps (1e-2) makes the eps the perceiver uses visible in the logits.
        perceiver_config=dict(resampler_n_latents=n_latents, resampler_depth=2, resampler_n_heads=2,
                              resampler_head_dim=8, num_key_value_heads=1, hidden_size=32),
        image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False,
        num_labels=5, problem_type="regression", torch_dtype="float32")
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Idefics2ForSequenceClassification(config).eval()
    randomize(model, seed=1)
    model.save_pretrained(ckpt, max_shard_size="250KB", safe_serialization=True)
    processor.save_pretrained(ckpt)
    return model


def make_clips(frames: int, seed: int) -> np.ndarray:
    """Three uint8 clips [3, F, H, W, 3] that differ in kind: a moving bright square on grey, smooth colour
    ramps drifting over time, and uniform noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None]
    y, x = np.mgrid[0:H, 0:W]
    a = np.full((frames, H, W, 3), 90, np.uint8)
    for f in range(frames):
        cx = (2 + f) % (W - 6)
        a[f, 6:12, cx:cx + 6] = (230, 40, 40)
    b = np.stack([(x * 8 + 5 * t) % 256, (y * 12 + 3 * t) % 256, ((x + y) * 4 + 0 * t) % 256], -1).astype(np.uint8)
    c = rng.integers(0, 256, (frames, H, W, 3), dtype=np.uint8)
    return np.stack([a, b, c])


class _Frame:
    def __init__(self, rgb):
        self.rgb = rgb

    def to_ndarray(self, format):
        assert format == "rgb24"
        return self.rgb


class _Container:
    """What `av.open(path)` gives the script: a stream with a frame count, seek and decode."""

    def __init__(self, clip):
        self.clip = clip
        self.streams = types.SimpleNamespace(video=[types.SimpleNamespace(frames=len(clip))])

    def seek(self, offset):
        assert offset == 0

    def decode(self, video):
        assert video == 0
        return (_Frame(f) for f in self.clip)


def run_reference(script: Path, ckpt: Path, frames: int, clip: np.ndarray, prompt: str) -> dict:
    """Execute examples/run_videoscore.py itself, changing only what points it at our inputs: the four
    settings it assigns (MAX_NUM_FRAMES, model_name, video_path, video_prompt), the video file behind
    `av.open` (a fake PyAV module yielding our rgb24 frames), and torch.bfloat16 -> torch.float32 (the
    golden is compared in float32)."""
    tree = ast.parse(script.read_text())
    settings = {"MAX_NUM_FRAMES": frames, "model_name": str(ckpt), "video_path": "clip.mp4", "video_prompt": prompt}
    seen, dtypes = set(), []

    class Patch(ast.NodeTransformer):
        def visit_Assign(self, node):
            if len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) and node.targets[0].id in settings:
                seen.add(node.targets[0].id)
                node.value = ast.Constant(settings[node.targets[0].id])
            return self.generic_visit(node)

        def visit_Attribute(self, node):
            self.generic_visit(node)
            if isinstance(node.value, ast.Name) and node.value.id == "torch" and node.attr == "bfloat16":
                dtypes.append(node.lineno)
                return ast.copy_location(ast.Attribute(value=node.value, attr="float32", ctx=node.ctx), node)
            return node

    tree = ast.fix_missing_locations(Patch().visit(tree))
    assert seen == set(settings), f"the script no longer assigns {set(settings) - seen}"
    assert len(dtypes) == 2, f"expected torch.bfloat16 in the processor and model loads, found lines {dtypes}"
    fake_av = types.ModuleType("av")
    fake_av.open = lambda path: _Container(clip)
    saved = sys.modules.get("av")
    sys.modules["av"] = fake_av
    g = {"__name__": "__videoscore_example__", "__file__": str(script)}
    try:
        exec(compile(tree, str(script), "exec"), g)
    finally:
        if saved is None:
            sys.modules.pop("av", None)
        else:
            sys.modules["av"] = saved
    return {"input_ids": g["inputs"]["input_ids"][0].cpu(), "attention_mask": g["inputs"]["attention_mask"][0].cpu(),
            "pixel_values": g["inputs"]["pixel_values"][0].cpu(), "logits": g["logits"][0].float().cpu(),
            "indices": torch.as_tensor(np.asarray(g["indices"][:frames]), dtype=torch.int64),
            "n_frames": len(g["frames"]), "eval_prompt": g["eval_prompt"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", required=True, type=Path, help="a checkout of TIGER-AI-Lab/VideoScore")
    ap.add_argument("--out", required=True, type=Path, help="tests/goldens/videoscore")
    args = ap.parse_args()
    from safetensors.torch import save_file
    import importlib.metadata
    import tokenizers
    import transformers

    torch.set_num_threads(1)
    script = args.ref / "examples" / "run_videoscore.py"
    ckpt = args.out / "ckpt"
    write_checkpoint(ckpt)
    clips = {v: make_clips(CLIP_FRAMES[v], seed=i) for i, v in enumerate(VERSIONS)}
    out, summary = {}, {}
    for v, n in VERSIONS.items():
        for i, prompt in enumerate(PROMPTS):
            r = run_reference(script, ckpt, n, clips[v][i], prompt)
            assert r["n_frames"] == n and r["eval_prompt"].count("<image>") == n
            for k in ("input_ids", "attention_mask", "logits", "indices"):
                out[f"{v}.{i}.{k}"] = r[k].contiguous()
            if v == "v1" and i == 0:
                out["v1.0.pixel_values"] = r["pixel_values"].contiguous()
            summary[f"{v} clip {i}"] = [round(x, 4) for x in r["logits"].tolist()]
            print(v, i, "tokens", len(r["input_ids"]), "logits", summary[f"{v} clip {i}"], flush=True)
    save_file({f"{v}": torch.from_numpy(c) for v, c in clips.items()}, str(args.out / "clips.safetensors"))
    save_file(out, str(args.out / "outputs.safetensors"))
    (args.out / "prompts.json").write_text(json.dumps(PROMPTS, indent=1, ensure_ascii=False) + "\n")
    commit = subprocess.run(["git", "-C", str(args.ref), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    source = {
        "reference": "TIGER-AI-Lab/VideoScore examples/run_videoscore.py with mantis-vl "
                     "(mantis.models.idefics2.Idefics2ForSequenceClassification); VideoScore v1 (16 frames) and "
                     "v1.1 (48 frames)",
        "repo": "https://github.com/TIGER-AI-Lab/VideoScore", "repo_commit": commit,
        "versions": {"mantis-vl": importlib.metadata.version("mantis-vl"), "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "mantis": "mantis-vl 0.0.5 from PyPI; its mantis/models/idefics2/modeling_idefics2.py is identical to "
                  "TIGER-AI-Lab/Mantis f3a319202d882a1794d28440b77bba7c58869a9e",
        "keys": "v1 = VideoScore (16 frames, clips of 24), v11 = VideoScore-v1.1 (48 frames, clips of 60)",
        "command": " ".join([sys.executable] + sys.argv),
        "date": datetime.date.today().isoformat(),
        "logits": summary,
    }
    (args.out / "SOURCE.json").write_text(json.dumps(source, indent=1) + "\n")


if __name__ == "__main__":
    main()
