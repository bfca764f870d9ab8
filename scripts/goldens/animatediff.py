"""Golden outputs of AnimateDiff v1-5-2 sampling with diffusers' AnimateDiffPipeline (SD1.5 components + a
MotionAdapter), on tiny random weights in the published layouts, for both of our DDIM presets
(model.sampler_preset):

  diffusers             the diffusers AnimateDiff docs page (docs/source/en/api/pipelines/animatediff.md):
                        DDIMScheduler.from_pretrained(<SD1.5 model>, subfolder="scheduler", clip_sample=False,
                        timestep_spacing="linspace", beta_schedule="linear", steps_offset=1); set_alpha_to_one=False
                        comes from SD1.5's own scheduler_config.json
  animatediff_official  guoyww/AnimateDiff scripts/animate.py:124, DDIMScheduler(**noise_scheduler_kwargs of
                        configs/inference/inference-v2.yaml:16-21) = beta_start 0.00085, beta_end 0.012,
                        beta_schedule linear, steps_offset 1, clip_sample false; everything else is the DDIMScheduler
                        default (diffusers 0.11.1 scheduling_ddim.py:128 set_alpha_to_one=True, :205-210 "leading"
                        timesteps + steps_offset, the same defaults in 0.42.1)

Reference: diffusers 0.42.1 AnimateDiffPipeline.from_pretrained(<sd15 dir>, motion_adapter=MotionAdapter.from_pretrained(
<adapter dir>)), then pipe.scheduler = <preset>; called with a negative prompt, guidance 7.5, few steps, one
torch.Generator().manual_seed(seed) per sample (our per-seed noise), output_type="latent"; the latents are then
decoded by the pipeline's own decode_latents + video_processor.postprocess_video.

Venv (throwaway, not ours):
    python3 -m venv /work/venvs/diffusers-ref
    /work/venvs/diffusers-ref/bin/pip install torch==2.13.0           # first: the local CPU wheel
    /work/venvs/diffusers-ref/bin/pip install diffusers==0.42.1 transformers==5.24.0 accelerate==1.15.0
    (accelerate: WanPipeline.from_pretrained needs it for the transformer's float32-kept modules)
Run (from the repository root):
    /work/venvs/diffusers-ref/bin/python scripts/goldens/animatediff.py --out tests/goldens/animatediff

The official code runs on diffusers 0.11.1 (its requirements.txt). Its whole pipeline (its own UNet3DConditionModel
and motion-module checkpoint format, transformers 4.25.1) is not run here; its sampler is: a second venv runs
diffusers 0.11.1's own DDIMScheduler, built exactly as scripts/animate.py:124 builds it, through a fixed chain of
steps, so the animatediff_official preset is checked against the code the official script executes:
    python3 -m venv /work/venvs/diffusers-0111
    /work/venvs/diffusers-0111/bin/pip install torch==2.13.0
    /work/venvs/diffusers-0111/bin/pip install diffusers==0.11.1 huggingface_hub==0.25.2 safetensors==0.8.0  # 0.11.1 imports cached_download
    /work/venvs/diffusers-0111/bin/python scripts/goldens/animatediff.py --official-ddim --out tests/goldens/animatediff
(run after the main run, which keeps official_ddim/).

Writes tests/goldens/animatediff/:
  sd15/             a tiny Stable Diffusion 1.5 in the published diffusers layout: model_index.json, unet/, vae/,
                    text_encoder/ (CLIPTextModel), tokenizer/ (CLIP BPE: vocab.json + merges.txt), scheduler/
                    (SD1.5's published PNDMScheduler config)
  motion_adapter/   a tiny MotionAdapter directory like guoyww/animatediff-motion-adapter-v1-5-2 (with a mid block)
  settings.json     prompts, seeds, negative prompt, steps, guidance, frames, height, width, the presets' kwargs
  outputs.safetensors  input_ids, prompt/negative embeddings, initial noise, and per preset: timesteps (for the
                    golden's steps and for 25), final latents, decoded frames
  SOURCE.json       reference, versions, command, date
  official_ddim/    (--official-ddim) ddim.safetensors: per step count (3, 25) the timesteps and the samples of a
                    DDIM chain on fixed model outputs, from diffusers 0.11.1's DDIMScheduler(**OFFICIAL_KWARGS);
                    SOURCE.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
from importlib.metadata import version
from pathlib import Path

import torch
from safetensors.torch import save_file

PROMPTS = ["a red circle moves left", "a blue square moves up", "a red circle moves left"]
SEEDS = [3, 3, 4]  # samples 0/1: same seed, other prompt; 0/2: same prompt, other seed
NEGATIVE = "blurry, low quality"
STEPS, GUIDANCE, FRAMES, SIZE = 3, 7.5, 4, 16
MAX_LENGTH = 16
# runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json, as published
SD15_SCHEDULER = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
                  "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
                  "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
                  "clip_sample": False}
# AnimateDiff configs/inference/inference-v2.yaml (the v2 / v1-5-2 motion module) noise_scheduler_kwargs
OFFICIAL_KWARGS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "linear", "steps_offset": 1,
                   "clip_sample": False}
DOCS_KWARGS = {"clip_sample": False, "timestep_spacing": "linspace", "beta_schedule": "linear", "steps_offset": 1}


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (GPT-2's) byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def write_clip_tokenizer(folder: Path, words: list[str], max_length: int) -> int:
    """CLIP's published tokenizer files (vocab.json, merges.txt, tokenizer_config.json,
    special_tokens_map.json) for a byte-level BPE whose merges make each word one token. Returns the vocab size."""
    chars = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in words:  # a left-to-right chain of merges per word
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left = left + right
            vocab.setdefault(left, len(vocab))
    for tok in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(tok, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length, "do_lower_case": True,
         "add_prefix_space": False, "errors": "replace", **special}, indent=2) + "\n")
    return len(vocab)


def write_sd15(sd: Path, channels: tuple[int, ...], groups: int, down: tuple[str, ...], up: tuple[str, ...],
               words: list[str]) -> None:
    """A tiny SD1.5 directory (random weights) in the published diffusers layout."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    vocab_size = write_clip_tokenizer(sd / "tokenizer", words, MAX_LENGTH)
    vocab = json.loads((sd / "tokenizer" / "vocab.json").read_text())
    CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"])).save_pretrained(sd / "text_encoder")
    UNet2DConditionModel(
        block_out_channels=channels, layers_per_block=1, in_channels=4, out_channels=4, sample_size=SIZE // 2,
        down_block_types=down, up_block_types=up, cross_attention_dim=16, attention_head_dim=4,
        norm_num_groups=groups).save_pretrained(sd / "unet")
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  layers_per_block=1, sample_size=SIZE).save_pretrained(sd / "vae")
    (sd / "scheduler").mkdir(parents=True, exist_ok=True)
    (sd / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD15_SCHEDULER, indent=2) + "\n")
    (sd / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
        "feature_extractor": [None, None], "safety_checker": [None, None],
        "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=2) + "\n")


def words_of(*texts: str) -> list[str]:
    return sorted({w for t in texts for w in t.replace(",", " ").split()} | {","})


def seeded_noise(shape, seeds) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])


def preset_schedulers(sd: Path) -> dict:
    from diffusers import DDIMScheduler

    return {"diffusers": lambda: DDIMScheduler.from_pretrained(sd, subfolder="scheduler", **DOCS_KWARGS),
            "animatediff_official": lambda: DDIMScheduler(**OFFICIAL_KWARGS)}


def sample(pipe, prompts, seeds, negative, steps, guidance, tensors: dict, tag: str) -> torch.Tensor:
    """One pipeline call as a user makes it; latents and the pipeline's own decode of them into tensors."""
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    kw = dict(negative_prompt=[negative] * len(prompts)) if negative is not None else {}
    latents = pipe(prompt=list(prompts), num_frames=FRAMES, height=SIZE, width=SIZE, num_inference_steps=steps,
                   guidance_scale=guidance, generator=gens, output_type="latent", **kw).frames
    video = pipe.video_processor.postprocess_video(video=pipe.decode_latents(latents, decode_chunk_size=16),
                                                   output_type="pt")
    tensors[f"latents_{tag}"], tensors[f"frames_{tag}"] = latents.contiguous(), video.contiguous()
    return latents


def source(out: Path, reference: str, extra: dict | None = None) -> None:
    (out / "SOURCE.json").write_text(json.dumps({
        "reference": reference,
        "versions": {p: version(p) for p in ("diffusers", "transformers", "tokenizers", "torch", "safetensors",
                                             "numpy", "accelerate")},
        "python": sys.version.split()[0],
        "command": "python " + " ".join([f"scripts/goldens/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "date": datetime.date.today().isoformat(), **(extra or {})}, indent=1) + "\n")


def ddim_chain(scheduler, steps: int) -> dict[str, torch.Tensor]:
    """A DDIM run on made-up model outputs that depend on the sample (so every step's error carries on)."""
    scheduler.set_timesteps(steps)
    x = torch.randn((2, 4, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    samples = [x]
    for k, t in enumerate(scheduler.timesteps):
        eps = torch.sin(x * (1 + 0.1 * k)) + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(k + 1))
        x = scheduler.step(eps, t, x).prev_sample
        samples.append(x)
    return {f"timesteps{steps}": scheduler.timesteps.clone(), f"samples{steps}": torch.stack(samples)}


def official_ddim(out: Path) -> None:
    """Run in the diffusers 0.11.1 venv: the official script's scheduler object, nothing else."""
    from diffusers import DDIMScheduler

    assert version("diffusers") == "0.11.1", version("diffusers")
    d = out / "official_ddim"
    d.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for steps in (STEPS, 25):
        tensors.update(ddim_chain(DDIMScheduler(**OFFICIAL_KWARGS), steps))
    save_file(tensors, d / "ddim.safetensors")
    (d / "SOURCE.json").write_text(json.dumps({
        "reference": "diffusers 0.11.1 DDIMScheduler(**noise_scheduler_kwargs) as guoyww/AnimateDiff scripts/animate.py:124 "
                     "builds it from configs/inference/inference-v2.yaml",
        "kwargs": OFFICIAL_KWARGS,
        "versions": {p: version(p) for p in ("diffusers", "torch", "numpy", "huggingface_hub", "safetensors")},
        "python": sys.version.split()[0],
        "command": "python scripts/goldens/animatediff.py --official-ddim --out tests/goldens/animatediff",
        "animatediff_commit": "e92bd5671ba62c0d774a32951453e328018b7c5b",
        "date": datetime.date.today().isoformat()}, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tests/goldens/animatediff"))
    ap.add_argument("--official-ddim", action="store_true", help="only the diffusers 0.11.1 DDIM chain (its venv)")
    args = ap.parse_args()
    out = args.out
    if args.official_ddim:
        return official_ddim(out)
    from diffusers import AnimateDiffPipeline, MotionAdapter

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():  # official_ddim/ comes from the other venv
        if old.name != "official_ddim":
            shutil.rmtree(old) if old.is_dir() else old.unlink()
    sd = out / "sd15"
    write_sd15(sd, (8, 16), 4, ("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D"),
               words_of(*PROMPTS, NEGATIVE))
    # v1-5-2 shape: motion modules in every block and in the mid block
    MotionAdapter(block_out_channels=(8, 16), motion_layers_per_block=1, motion_num_attention_heads=2,
                  motion_norm_num_groups=4, motion_max_seq_length=8, use_motion_mid_block=True
                  ).save_pretrained(out / "motion_adapter")

    torch.set_grad_enabled(False)
    pipe = AnimateDiffPipeline.from_pretrained(sd, motion_adapter=MotionAdapter.from_pretrained(out / "motion_adapter"))
    pipe.set_progress_bar_config(disable=True)
    tensors: dict[str, torch.Tensor] = {}
    tok = pipe.tokenizer(PROMPTS + [NEGATIVE], padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    tensors["input_ids"] = tok.input_ids.contiguous()
    cond, uncond = pipe.encode_prompt(PROMPTS, torch.device("cpu"), 1, True, [NEGATIVE] * len(PROMPTS))
    tensors["prompt_embeds"], tensors["negative_embeds"] = cond.contiguous(), uncond.contiguous()
    tensors["noise"] = seeded_noise((4, FRAMES, SIZE // 2, SIZE // 2), SEEDS)
    presets = preset_schedulers(sd)
    for name, make in presets.items():
        for n in (STEPS, 25):
            s = make()
            s.set_timesteps(n)
            tensors[f"timesteps{n}_{name}"] = s.timesteps.clone()
        pipe.scheduler = make()
        latents = sample(pipe, PROMPTS, SEEDS, NEGATIVE, STEPS, GUIDANCE, tensors, name)
        print(name, "timesteps", tensors[f"timesteps{STEPS}_{name}"].tolist(), "latent std", f"{latents.std():.4f}",
              "prompt effect", f"{(latents[0] - latents[1]).abs().max():.4f}",
              "seed effect", f"{(latents[0] - latents[2]).abs().max():.4f}")
    print("preset effect", f"{(tensors['latents_diffusers'] - tensors['latents_animatediff_official']).abs().max():.4f}")
    save_file(tensors, out / "outputs.safetensors")
    (out / "settings.json").write_text(json.dumps({
        "prompts": PROMPTS, "seeds": SEEDS, "negative_prompt": NEGATIVE, "steps": STEPS, "guidance": GUIDANCE,
        "frames": FRAMES, "height": SIZE, "width": SIZE,
        "presets": {"diffusers": {"from_pretrained": "sd15/scheduler", **DOCS_KWARGS},
                    "animatediff_official": OFFICIAL_KWARGS}}, indent=1) + "\n")
    source(out, "diffusers AnimateDiffPipeline (SD1.5 + MotionAdapter, v1-5-2 layout), DDIM presets: diffusers' "
                "AnimateDiff docs recipe and guoyww/AnimateDiff's scripts/animate.py + configs/inference/inference-v2.yaml",
           {"animatediff_repo": "https://github.com/guoyww/AnimateDiff",
            "animatediff_commit": "e92bd5671ba62c0d774a32951453e328018b7c5b"})


if __name__ == "__main__":
    main()
