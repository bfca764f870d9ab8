"""Golden outputs of AnimateDiff-Lightning sampling as its model card (ByteDance/AnimateDiff-Lightning) publishes
it, on tiny random weights in the published layouts:

    adapter = MotionAdapter()
    adapter.load_state_dict(load_file("animatediff_lightning_{step}step_diffusers.safetensors"))
    pipe = AnimateDiffPipeline.from_pretrained(base, motion_adapter=adapter)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing",
                                                        beta_schedule="linear")
    output = pipe(prompt=..., guidance_scale=1.0, num_inference_steps=step)

The one change: MotionAdapter(...) takes the tiny file's config instead of the real one's defaults, with the
heads (8) and norm groups (32) of the defaults, which the state dict cannot tell. base = a tiny SD1.5 directory
(published layout, SD1.5's own scheduler_config.json, which from_config starts from). One
torch.Generator().manual_seed(seed) per sample (our per-seed noise), output_type="latent", steps = the file's 2.

Venv: the one of scripts/goldens/animatediff.py (torch==2.13.0, diffusers==0.42.1, transformers==5.24.0, accelerate==1.15.0).
Run (from the repository root):
    /work/venvs/diffusers-ref/bin/python scripts/goldens/animatediff_lightning.py \
        --out tests/goldens/animatediff_lightning

Writes tests/goldens/animatediff_lightning/:
  sd15/            tiny SD1.5 (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)
  animatediff_lightning_2step_diffusers.safetensors  the bare MotionAdapter state dict, as published
                   (this file and unet/'s weights hold float16 tensors: half the bytes; both sides load them
                   into float32 modules and sample in float32)
  settings.json    prompts, seeds, steps, guidance, frames, height, width, the adapter's config
  outputs.safetensors  initial noise, timesteps, sigmas, final latents, decoded frames
  SOURCE.json      reference, versions, command, date
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from animatediff import FRAMES, SIZE, sample, seeded_noise, source, words_of, write_sd15  # noqa: E402

PROMPTS = ["a red circle moves left", "a blue square moves up", "a red circle moves left"]
SEEDS = [5, 5, 6]  # samples 0/1: same seed, other prompt; 0/2: same prompt, other seed
STEPS, GUIDANCE = 2, 1.0
FILE = f"animatediff_lightning_{STEPS}step_diffusers.safetensors"
# one U-Net level of 32 channels: the fewest that 32 norm groups and 8 heads allow
ADAPTER = {"block_out_channels": [32], "motion_layers_per_block": 1, "motion_max_seq_length": 8,
           "use_motion_mid_block": True, "motion_num_attention_heads": 8, "motion_norm_num_groups": 32}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("tests/goldens/animatediff_lightning"))
    out = ap.parse_args().out
    from diffusers import AnimateDiffPipeline, EulerDiscreteScheduler, MotionAdapter

    torch.manual_seed(0)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    sd = out / "sd15"
    write_sd15(sd, (32,), 8, ("DownBlock2D",), ("UpBlock2D",), words_of(*PROMPTS))  # text enters at the mid block
    # float16 files (as the hub's fp16 weights; both sides load them into float32 modules): half the bytes
    unet_file = sd / "unet" / "diffusion_pytorch_model.safetensors"
    save_file({k: v.half() for k, v in load_file(unet_file).items()}, unet_file)
    save_file({k: v.half().contiguous() for k, v in MotionAdapter(**ADAPTER).state_dict().items()}, out / FILE)

    torch.set_grad_enabled(False)
    adapter = MotionAdapter(**ADAPTER)
    adapter.load_state_dict(load_file(out / FILE))
    pipe = AnimateDiffPipeline.from_pretrained(sd, motion_adapter=adapter)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing",
                                                        beta_schedule="linear")
    pipe.set_progress_bar_config(disable=True)
    tensors: dict[str, torch.Tensor] = {"noise": seeded_noise((4, FRAMES, SIZE // 2, SIZE // 2), SEEDS)}
    s = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    s.set_timesteps(STEPS)
    tensors["timesteps"], tensors["sigmas"] = s.timesteps.clone(), s.sigmas.clone()
    latents = sample(pipe, PROMPTS, SEEDS, None, STEPS, GUIDANCE, tensors, "lightning")
    print("timesteps", tensors["timesteps"].tolist(), "latent std", f"{latents.std():.4f}",
          "prompt effect", f"{(latents[0] - latents[1]).abs().max():.4f}",
          "seed effect", f"{(latents[0] - latents[2]).abs().max():.4f}")
    save_file(tensors, out / "outputs.safetensors")
    (out / "settings.json").write_text(json.dumps({
        "prompts": PROMPTS, "seeds": SEEDS, "steps": STEPS, "guidance": GUIDANCE, "frames": FRAMES, "height": SIZE,
        "width": SIZE, "adapter": FILE, "adapter_config": ADAPTER,
        "scheduler": {"class": "EulerDiscreteScheduler", "from_config": "sd15/scheduler",
                      "timestep_spacing": "trailing", "beta_schedule": "linear"}}, indent=1) + "\n")
    source(out, "diffusers AnimateDiffPipeline as the ByteDance/AnimateDiff-Lightning model card uses it "
                "(MotionAdapter state dict, EulerDiscreteScheduler trailing + linear, guidance 1.0, 2 steps)")


if __name__ == "__main__":
    main()
