"""The rewards at their published sizes (vip/bench/reward_configs.py, random weights), on a GPU:
clips/s, peak memory and MFU per batch size; their share of one leave-one-out clip against the
generators' seconds per clip; and leave-one-out end to end with the real reward, scoring
overlapped with generation (FastLooOptions.overlap_score) against the serial order and the
per-unit pipeline loop followed by the same reward.

Everything also runs on the CPU with `scale` > 1 (tiny widths), which is how the tests keep it alive.
"""
from __future__ import annotations

import time
from contextlib import contextmanager

import numpy as np
import torch

from vip.bench.flops import count_flops, mfu, peak_flops
from vip.bench.gpu import PROMPTS, median_time, peak_mem_gb, reset_peak, sync

# the clips each generator makes: (frames, height, width, frames per second)
CLIPS = {"animatediff-256": (16, 256, 256, 8.0), "animatediff-512": (16, 512, 512, 8.0),
         "wan2.1-1.3b": (81, 480, 832, 16.0),
         "48x256x256": (48, 256, 256, 8.0)}  # VideoScore-v1.1's 48 frames at AnimateDiff's size


def synthetic_clips(n: int, frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """[n, frames, 3, H, W] float in [0, 1] on the CPU (as FastLoo's decode returns them): a
    moving gradient plus noise, so that frames differ and no clip is constant."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, 1, frames).view(1, frames, 1, 1, 1)
    y = torch.linspace(0, 1, height).view(1, 1, 1, height, 1)
    x = torch.linspace(0, 1, width).view(1, 1, 1, 1, width)
    phase = torch.rand(n, 1, 3, 1, 1, generator=g)
    base = 0.5 + 0.4 * torch.sin(6.28 * (x + y + t + phase))
    return (base + 0.1 * torch.rand(n, frames, 3, height, width, generator=g)).clamp(0, 1)


def forward_call(reward, clips: torch.Tensor, prompts: list[str]):
    """(a no-argument forward of the reward's network on this batch, already encoded and on the
    device; tokens per clip): the model's part of reward.score, for FLOPs and MFU."""
    from vip.rewards.frames import to_uint8
    from vip.rewards.videoreward import VideoReward

    dev = reward.device
    if isinstance(reward, VideoReward):
        frames = to_uint8(clips[:, reward.frame_indices(clips.shape[1])])
        pix, grid = reward.pixels(frames)
        enc = reward.tokenizer(reward.queries(prompts, grid), padding=True, return_tensors="pt")
        ids, mask = enc["input_ids"].to(dev), enc["attention_mask"].to(dev)
        thw = torch.tensor([grid] * len(prompts), device=dev)
        return (lambda: reward.net(ids, mask, pix, thw, reward.token_ids)), ids.shape[1]
    enc = reward.encode(reward.sample(clips), prompts)
    args = (enc["input_ids"].to(dev), enc["attention_mask"].to(dev), enc["pixel_values"].to(dev, reward.dtype),
            enc["pixel_attention_mask"].to(dev))
    return (lambda: reward.net(*args)), args[0].shape[1]


@contextmanager
def eager_attention(net: torch.nn.Module):
    """transformers' eager attention (matmul, softmax, matmul: the same FLOPs) for FLOP counting:
    torch 2.11's flop counter rejects grouped-query SDPA (the perceiver's and Mistral's kv heads)."""
    configs = {id(c): c for m in net.modules() if (c := getattr(m, "config", None)) is not None
               and hasattr(c, "_attn_implementation")}
    old = {k: c._attn_implementation for k, c in configs.items()}
    try:
        for c in configs.values():
            c._attn_implementation = "eager"
        yield
    finally:
        for k, c in configs.items():
            c._attn_implementation = old[k]


def bench_reward(reward, clip: tuple, batches: list[int], iters: int = 2, seed: int = 0) -> list[dict]:
    """Per batch size: reward.score end to end (frame sampling, the processor on the CPU, the forward),
    and the forward alone on encoded inputs; FLOPs counted once at batch 1 (they scale with the batch:
    every query of a batch has the same length)."""
    frames, h, w, fps = clip
    dev = reward.device
    cuda = dev.type == "cuda"
    peak_name, peak = peak_flops() if cuda else ("cpu (no peak)", None)
    if hasattr(reward, "source_fps"):
        reward.source_fps = fps
    one = synthetic_clips(1, frames, h, w, seed)
    fwd, tokens = forward_call(reward, one, PROMPTS[:1])
    with torch.inference_mode(), eager_attention(reward.net):
        flops_per_clip = count_flops(fwd)
    rows = []
    for b in batches:
        clips = synthetic_clips(b, frames, h, w, seed)
        prompts = (PROMPTS * b)[:b]
        reward.batch_size = b
        row = {"batch": b, "tokens_per_clip": tokens, "tflop_per_clip": flops_per_clip / 1e12, "peak_assumed": peak_name}
        try:
            reset_peak(dev)
            s = median_time(lambda: reward.score(clips, prompts), iters, 1, dev)
            row.update(score_s=s, clips_per_s=b / s, peak_gb=peak_mem_gb(dev),
                       mfu_end_to_end=mfu(b * flops_per_clip, s, peak))
            fwd, _ = forward_call(reward, clips, prompts)
            with torch.inference_mode():
                f = median_time(fwd, iters, 1, dev)
            row.update(forward_s=f, forward_clips_per_s=b / f, mfu=mfu(b * flops_per_clip, f, peak))
        except torch.OutOfMemoryError:
            row["error"] = "OOM"
        except Exception as e:  # one batch a kernel refuses must not cost the others
            row["error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"
        rows.append(row)
        if cuda:
            torch.cuda.empty_cache()
    return rows


def animatediff_gen_s_per_clip(size: int, n_prompts: int, batch_clips: int, steps: int, device: str,
                               scale: int = 1) -> dict:
    """Seconds per leave-one-out clip of FastLoo (eager bf16, channels-last, stand-in reward) at
    16 x size x size: text, denoising (25 DDIM steps, CFG) and VAE decode, over full + one unit."""
    from vip.bench import gpu as gpu_bench
    from vip.bench.standin_reward import StandInReward
    from vip.steps.loo.engine import FULL, FastLoo, FastLooOptions

    cuda = torch.device(device).type == "cuda"
    shape = gpu_bench.Shape(16, size, size, steps, 7.5, scale)
    model, parts = gpu_bench.build(shape, device)
    del parts
    opts = FastLooOptions(batch_clips=batch_clips, dtype="bfloat16" if cuda else "float32", channels_last=cuda)
    prompts = (PROMPTS * n_prompts)[:n_prompts]
    variants = [FULL, model.units()[0]]
    with FastLoo(model, StandInReward(), opts) as fl:
        fl.run(variants[:1], prompts[:1], [0], steps=1)  # warm-up: kernels, cuDNN plans
        fl.timings.clear()
        sync(device)
        t0 = time.perf_counter()
        fl.run(variants, prompts, list(range(n_prompts)), steps, 7.5)
        sync(device)
        s = time.perf_counter() - t0
        split = dict(fl.timings)
    clips = len(variants) * n_prompts
    del model
    if cuda:
        torch.cuda.empty_cache()
    return {"what": f"AnimateDiff 16x{size}x{size}, FastLoo eager bf16, batch {batch_clips} clips", "clips": clips,
            "seconds": s, "s_per_clip": (s - split.get("score", 0.0)) / clips, "split_s": split}


def wan_gen_s_per_clip(frames: int, height: int, width: int, steps: int, device: str, scale: int = 1,
                       iters: int = 2) -> dict:
    """Wan2.1 T2V 1.3B: one CFG forward (batch 2, eager bf16) x `steps`; the VAE decode and text
    encoder are not counted (so the reward's share is an upper bound)."""
    from vip.bench import backbones

    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    d = backbones.build("wan2.1-1.3b", frames, height, width, scale, device)
    d.module.to(dtype).eval().requires_grad_(False)
    call = backbones.caller(d, *backbones.inputs(d, 2, device, dtype))(d.module)
    with torch.no_grad():
        s = median_time(call, iters, 1, device)
    del d
    if cuda:
        torch.cuda.empty_cache()
    return {"what": f"Wan2.1 1.3B {frames}x{height}x{width}, {steps} steps x one CFG forward (batch 2, eager bf16)",
            "forward_s": s, "s_per_clip": steps * s}


def reward_share(reward_s_per_clip: float, gen_s_per_clip: float) -> float:
    """The reward's fraction of one leave-one-out clip (generation + scoring, serial)."""
    return reward_s_per_clip / (reward_s_per_clip + gen_s_per_clip)


def bench_loo_reward(fl_factory, parts: dict, shape, n_prompts: int, n_variants: int, baseline_variants: int,
                     device: str) -> dict:
    """Leave-one-out end to end with the real reward: FastLoo serial (generate, decode, score each batch
    in turn), FastLoo with overlap_score (batch n scored on a worker thread and its own CUDA stream
    while batch n+1 is generated), and the per-unit AnimateDiffPipeline loop followed by the same
    reward, in this process, on the same variants' prompts and seeds. `fl_factory(overlap)` gives an
    engine (not yet open); the overlapped scores must equal the serial ones exactly."""
    from vip.bench import gpu as gpu_bench
    from vip.steps.loo.engine import FULL

    prompts = (PROMPTS * n_prompts)[:n_prompts]
    seeds = list(range(n_prompts))
    out, scores = {}, {}
    for name, overlap in (("serial", False), ("overlapped", True)):
        with fl_factory(overlap) as fl:
            variants = [FULL] + fl.model.units()[: n_variants - 1]
            if name == "serial":  # warm-up: kernels and cuDNN plans, the reward's first call
                fl.run(variants[:1], prompts[:1], seeds[:1], steps=1)
            fl.timings.clear()
            reset_peak(device)
            sync(device)
            t0 = time.perf_counter()
            scores[name] = fl.run(variants, prompts, seeds, shape.steps, shape.guidance)
            sync(device)
            s = time.perf_counter() - t0
            clips = len(variants) * n_prompts
            out[name] = {"clips": clips, "seconds": s, "clips_per_s": clips / s, "split_s": dict(fl.timings),
                         "peak_gb": peak_mem_gb(device)}
            reward, base_variants = fl.reward, variants[:baseline_variants]
    out["overlapped_equals_serial"] = bool(np.array_equal(scores["serial"], scores["overlapped"]))
    out["max_abs_diff_overlapped_vs_serial"] = float(np.abs(scores["serial"] - scores["overlapped"]).max())
    reset_peak(device)
    sync(device)
    t0 = time.perf_counter()
    base, times = gpu_bench.pipeline_loo(parts, base_variants, prompts, seeds, shape, reward, device)
    sync(device)
    base_s = time.perf_counter() - t0
    n = len(base_variants) * n_prompts
    out["baseline"] = {"clips": n, "seconds": base_s, "clips_per_s": n / base_s, "split_s": times,
                       "clips_per_s_without_build": n / times["generate_and_score"], "peak_gb": peak_mem_gb(device)}
    out["max_score_diff_vs_baseline"] = float(np.nanmax(np.abs(scores["serial"][:len(base_variants)] - base)))
    out["speedup_overlapped_vs_baseline"] = out["overlapped"]["clips_per_s"] / out["baseline"]["clips_per_s"]
    out["speedup_overlapped_vs_serial"] = out["overlapped"]["clips_per_s"] / out["serial"]["clips_per_s"]
    return out
