"""Golden outputs of Wan2.1 text-to-video sampling with diffusers' WanPipeline, on tiny random weights in the
published Diffusers layout (Wan-AI/Wan2.1-T2V-1.3B-Diffusers: model_index.json, transformer/, vae/,
text_encoder/ (UMT5EncoderModel), tokenizer/, scheduler/ (UniPC, flow_prediction, flow_shift 3.0)).

Reference: the published usage,
    vae = AutoencoderKLWan.from_pretrained(model_id, subfolder="vae", torch_dtype=torch.float32)
    pipe = WanPipeline.from_pretrained(model_id, vae=vae, torch_dtype=<dtype>)
    output = pipe(prompt=..., negative_prompt=..., height=..., width=..., num_frames=..., guidance_scale=...)
in float32, with one torch.Generator().manual_seed(seed) per sample (our per-seed noise), guidance 3.0 with a
negative prompt, 3 steps, output_type="latent"; then output_type="pt" for the decoded frames. One prompt holds
an HTML entity and runs of spaces: WanPipeline cleans prompts (html.unescape twice, whitespace; ftfy.fix_text
when ftfy is installed, which it is not here) before tokenizing.

Venv: the one of scripts/goldens/animatediff.py (torch==2.13.0, diffusers==0.42.1, transformers==5.24.0, accelerate==1.15.0).
Run (from the repository root):
    /work/venvs/diffusers-ref/bin/python scripts/goldens/wan.py --out tests/goldens/wan

Writes tests/goldens/wan/:
  Wan2.1-T2V-tiny-Diffusers/  the tiny model
  settings.json        prompts, seeds, negative prompt, steps, guidance, frames, height, width, max_sequence_length
  outputs.safetensors  input_ids, attention masks, prompt/negative embeddings, initial noise, timesteps, final
                       latents, decoded frames
  SOURCE.json          reference, versions, command, date
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from animatediff import seeded_noise, source  # noqa: E402

PROMPTS = ["a red circle moves left", "a blue square moves up", "a red circle moves left",
           "a red &amp; blue   square moves  right"]
SEEDS = [5, 5, 6, 7]  # samples 0/1: same seed, other prompt; 0/2: same prompt, other seed
NEGATIVE = "blurry low quality"
STEPS, GUIDANCE, FRAMES, SIZE, MAX_SEQ = 3, 3.0, 5, 16, 512
# Wan-AI/Wan2.1-T2V-1.3B-Diffusers scheduler/scheduler_config.json (the fields that differ from UniPC's defaults)
SCHEDULER = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0,
             "num_train_timesteps": 1000, "solver_order": 2, "final_sigmas_type": "zero"}


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "a red blue circle square moves left up right down blurry low quality &".split()
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])  # as T5's
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=MAX_SEQ)


def write_model(d: Path) -> None:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    transformer = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=8,
                                        in_channels=4, out_channels=4, text_dim=16, freq_dim=16, ffn_dim=32,
                                        num_layers=3, rope_max_seq_len=32)
    with torch.no_grad():  # random init leaves the text's effect near 1e-2; louder cross-attention: a test that bites
        for block in transformer.blocks:
            block.attn2.to_out[0].weight.mul_(10)
        transformer.condition_embedder.text_embedder.linear_2.weight.mul_(10)
    transformer.save_pretrained(d / "transformer")
    # 2x in time and space; scale_factor_* say so to WanPipeline (the real VAE: 4x, 8x)
    AutoencoderKLWan(base_dim=8, z_dim=4, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[True],
                     latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0],
                     scale_factor_temporal=2, scale_factor_spatial=2).save_pretrained(d / "vae")
    tok = tiny_tokenizer()
    UMT5EncoderModel(UMT5Config(vocab_size=len(tok), d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                                relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                decoder_start_token_id=0)).save_pretrained(d / "text_encoder")
    tok.save_pretrained(d / "tokenizer")
    UniPCMultistepScheduler(**SCHEDULER).save_pretrained(d / "scheduler")
    (d / "model_index.json").write_text(json.dumps({
        "_class_name": "WanPipeline", "_diffusers_version": "0.33.0.dev0",
        "scheduler": ["diffusers", "UniPCMultistepScheduler"], "text_encoder": ["transformers", "UMT5EncoderModel"],
        "tokenizer": ["transformers", "PreTrainedTokenizerFast"], "transformer": ["diffusers", "WanTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLWan"]}, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tests/goldens/wan"))
    out = ap.parse_args().out
    from diffusers import AutoencoderKLWan, WanPipeline
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean

    torch.manual_seed(0)
    if out.exists():
        shutil.rmtree(out)
    d = out / "Wan2.1-T2V-tiny-Diffusers"
    d.mkdir(parents=True)
    write_model(d)

    torch.set_grad_enabled(False)
    vae = AutoencoderKLWan.from_pretrained(d, subfolder="vae", torch_dtype=torch.float32)
    pipe = WanPipeline.from_pretrained(d, vae=vae, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    tensors: dict[str, torch.Tensor] = {}
    tok = pipe.tokenizer([prompt_clean(p) for p in PROMPTS + [NEGATIVE]], padding="max_length", max_length=MAX_SEQ,
                         truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    tensors["input_ids"], tensors["attention_mask"] = tok.input_ids.contiguous(), tok.attention_mask.contiguous()
    cond, uncond = pipe.encode_prompt(PROMPTS, [NEGATIVE] * len(PROMPTS), True, max_sequence_length=MAX_SEQ,
                                      device=torch.device("cpu"))
    tensors["prompt_embeds"], tensors["negative_embeds"] = cond.contiguous(), uncond.contiguous()
    f = (FRAMES - 1) // pipe.vae_scale_factor_temporal + 1
    tensors["noise"] = seeded_noise((4, f, SIZE // 2, SIZE // 2), SEEDS)
    s = type(pipe.scheduler).from_config(pipe.scheduler.config)
    s.set_timesteps(STEPS)
    tensors["timesteps"] = s.timesteps.clone()
    kw = dict(prompt=PROMPTS, negative_prompt=[NEGATIVE] * len(PROMPTS), height=SIZE, width=SIZE, num_frames=FRAMES,
              num_inference_steps=STEPS, guidance_scale=GUIDANCE, max_sequence_length=MAX_SEQ)
    gens = lambda: [torch.Generator().manual_seed(x) for x in SEEDS]  # noqa: E731
    latents = pipe(**kw, generator=gens(), output_type="latent").frames
    tensors["latents"] = latents.contiguous()
    tensors["frames"] = pipe(**kw, generator=gens(), output_type="pt").frames.contiguous()
    print("timesteps", tensors["timesteps"].tolist(), "latent std", f"{latents.std():.4f}",
          "prompt effect", f"{(latents[0] - latents[1]).abs().max():.4f}",
          "seed effect", f"{(latents[0] - latents[2]).abs().max():.4f}",
          "frames", tuple(tensors["frames"].shape), "cleaned", prompt_clean(PROMPTS[3]))
    save_file(tensors, out / "outputs.safetensors")
    (out / "settings.json").write_text(json.dumps({
        "model": d.name, "prompts": PROMPTS, "seeds": SEEDS, "negative_prompt": NEGATIVE, "steps": STEPS,
        "guidance": GUIDANCE, "frames": FRAMES, "height": SIZE, "width": SIZE, "max_sequence_length": MAX_SEQ},
        indent=1) + "\n")
    source(out, "diffusers WanPipeline (WanTransformer3DModel + AutoencoderKLWan + UMT5, UniPC flow_prediction, "
                "flow_shift 3.0), the published Wan2.1-T2V Diffusers usage")


if __name__ == "__main__":
    main()
