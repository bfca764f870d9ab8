"""Benchmarks (not tests): print figures for docs/benchmarks.md (`python -m vip.bench <what>`).

    python -m vip.bench loo --config configs/toyvid.yaml [--variants 5] [section.key=value ...]
    python -m vip.bench train --config configs/toyvid.yaml [--steps 10] [section.key=value ...]
    python -m vip.bench gpu-loo [--size 256] [--frames 16] [--steps 25] [--compile] [--json out.json]
                                [--reward standin|videoscore|videoreward]
    python -m vip.bench gpu-reward [--rewards videoscore-v1,videoscore-v1.1,videoreward] [--batches 1,4,8,16]
    python -m vip.bench gpu-denoiser [--size 256] [--profile] [--levers name:key=value,...]
    python -m vip.bench gpu-train [--size 256] [--frames 16] [--compile] [--json out.json]
    python -m vip.bench adaptive [--tables runs/demo2/stage1/loo.h5 ...]
    python -m vip.bench plot-breakdown --tables a.json b.json --out where.png
    python -m vip.bench loo-budget [--workers N] [--seeds 0 1 2] [--stages 3] [--budget-s S] [--json out.json]
                                   [--from-json out.json] [--reuse out.json]

`loo-budget` (vip/bench/loo_budget.py): how much cheaper leave-one-out evaluation (fewer sampler steps, other
samplers, fewer prompts, adaptive rounds, fewer reward frames, and their combinations) still chooses the
units of the exhaustive evaluation, on the teacher and its pruned stand-ins for later stages, per run.seed;
`--from-json` repeats the analysis on a dump's tables without generating; `--reuse` generates only what
a dump lacks (e.g. the fewer-step tables after a run that had time for the references only).

`gpu-loo` and `gpu-train` build AnimateDiff at its published size (SD1.5 U-Net + v1-5-2 motion
adapter, random weights, nothing downloaded; `--scale N` divides every width, for the CPU test
path) and print the denoiser, leave-one-out end to end against the diffusers pipeline loop, and
ReDPO steps per configuration, with MFU (FLOPs from torch.utils.flop_counter).

`gpu-reward` builds VideoScore v1 (16 frames), v1.1 (48) and VideoReward at their published sizes
(random weights, bf16, sdpa; vip/bench/reward_configs.py) and prints clips/s, peak memory and MFU per
batch size, then the reward's share of one leave-one-out clip of AnimateDiff 16x256x256 and
16x512x512 and Wan2.1 1.3B (81x480x832). `gpu-loo --reward videoscore|videoreward` runs leave-one-out
end to end with that reward: serial, overlapped (scoring on its own thread and CUDA stream while the
next batch is generated), and the per-unit pipeline loop followed by the same reward.

`loo` times leave-one-out evaluation as vip runs it (model loaded once, units switched
off in place, batched generation) against the loop a user would otherwise write with
diffusers (reload the model for every variant, one pipeline call per prompt), on the
same variants, prompts and seeds, and checks both give the same scores.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vip import config as vip_config
from vip.cli import fail_cleanly
from vip.models.registry import load_video_model
from vip.rewards.base import ASPECTS
from vip.steps import loo
from vip.steps.context import StageContext
from vip.store import RunDir, ShardSet


def bench_loo(cfg, n_variants: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        ctx = StageContext(RunDir(tmp), cfg, 1)
        es = ctx.eval_set
        _ = ctx.model, ctx.reward
        variants = [loo.FULL] + ctx.model.units()[: n_variants - 1]
        n_clips = len(variants) * len(es.prompts)

        t0 = time.perf_counter()
        ours = []
        for v in variants:
            ours.append(loo.evaluate(ctx, [] if v == loo.FULL else [v], 0, len(es.prompts)))
        with ctx.timed("write"):
            ShardSet(Path(tmp) / "loo").write(0, {"scores": np.stack(ours)}, {})
        ours_s = time.perf_counter() - t0 + ctx.timings["load"]
        split = dict(ctx.timings)

        # baseline: what one writes by hand: reload per variant, one call per prompt
        t0 = time.perf_counter()
        base = []
        for v in variants:
            model = load_video_model(cfg.model, ctx.model_path())
            if v != loo.FULL:
                model = model.pruned([v])
            rows = []
            for p, s in zip(es.prompts, es.seeds):
                clip = model.generate([p], [s])
                sc = ctx.reward.score(clip, [p])
                rows.append([float(sc[a][0]) for a in ASPECTS])
            base.append(np.array(rows))
        base_s = time.perf_counter() - t0
        diff = float(np.abs(np.stack(ours) - np.stack(base)).max())

    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, device {cfg.model.device}")
    print(f"work: {len(variants)} variants x {len(es.prompts)} prompts = {n_clips} clips, "
          f"{cfg.model.steps} steps, batch {cfg.loo.batch_size}")
    print(f"vip loo:      {n_clips / ours_s:7.2f} clips/s  ({ours_s:.1f} s)")
    total = sum(split.values())
    print("  split: " + ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in split.items()))
    print(f"baseline:     {n_clips / base_s:7.2f} clips/s  ({base_s:.1f} s)  reload per variant, batch 1")
    print(f"speed-up:     {base_s / ours_s:.2f}x   max score difference {diff:.2e}")


TRAIN_MODES = {
    "vip": "DeepSpeed ZeRO-2, one policy pass on [winner; loser], one teacher pass for reference + SFT",
    "vip-ref-student": "the same with a separate frozen initial-student reference (3 networks)",
    "baseline": "plain PyTorch AdamW loop, separate forwards: policy w, policy l, ref w, ref l, teacher w",
}


def bench_train_one(cfg, mode: str, steps: int) -> dict:
    """One configuration in this process (the caller runs each in its own process for peak memory).

    On CUDA the precision is the trainer's: frozen teacher (and reference) in bf16, DeepSpeed
    bf16 for the vip modes (bf16 weights, fp32 master copy), and bf16 autocast over fp32
    weights for the plain loop; peak memory is torch.cuda.max_memory_allocated."""
    import resource

    from vip.models.registry import base_model_path
    from vip.redpo import diffusion_target, pair_loss, redpo_loss
    from vip.train import dist
    from vip.train.redpo_trainer import deepspeed_config

    tc, device = cfg.train, cfg.model.device
    cuda = device.startswith("cuda")
    teacher = load_video_model(cfg.model, base_model_path(cfg.model))
    student = teacher.pruned(teacher.units()[:cfg.select.k_at(1)])
    teacher.unet.requires_grad_(False)
    dev = teacher.device  # load_video_model put both models on model.device
    low = torch.bfloat16 if cuda else torch.float32  # the trainer's dtype for frozen networks and DeepSpeed
    sched = teacher.scheduler
    g = torch.Generator().manual_seed(0)
    shape = (tc.batch_size, *teacher.latent_shape)
    x_w, x_l = torch.randn(shape, generator=g).to(dev), torch.randn(shape, generator=g).to(dev)
    text = teacher.encode_prompts(["a red circle moving left on a black background"] * tc.batch_size)
    policy = student.trainable_module().train()
    reference = None
    if mode == "vip-ref-student":
        import copy
        reference = copy.deepcopy(policy).eval().requires_grad_(False).to(low)
    teacher.unet.to(low)
    text_low = text.to(low)
    if mode.startswith("vip"):
        import deepspeed
        policy.to(low)  # buffers too, as the trainer does: DeepSpeed's bf16 mode casts only parameters
        dist.init(device)
        engine, optim, _, _ = deepspeed.initialize(model=policy, optimizer=torch.optim.AdamW(policy.parameters(), lr=tc.lr),
                                                   config=deepspeed_config(tc.deepspeed, tc, 1, device))
    else:
        optim = torch.optim.AdamW(policy.parameters(), lr=tc.lr)
    rep = lambda x, txt=text_low: txt.repeat(x.shape[0] // tc.batch_size, 1, 1)  # noqa: E731
    frozen = lambda x, t_, den=None: teacher.predict(x.to(low), t_, rep(x), denoiser=den).float()  # noqa: E731
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda)
    times, first = [], None
    for i in range(steps + 2):  # two warm-up steps
        noise = torch.randn(shape, generator=g).to(dev)
        t = torch.randint(0, sched.config.num_train_timesteps, (tc.batch_size,), generator=g).to(dev)
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if mode.startswith("vip"):
            out = pair_loss(lambda x, t_: student.predict(x.to(low), t_, rep(x), denoiser=engine), frozen,
                            sched, x_w, x_l, noise, t, tc.beta, tc.w_sft, None if reference is None else
                            (lambda x, t_: frozen(x, t_, reference)), tc.sft_target)
            engine.backward(out.loss)
            engine.step()
        else:  # what one writes from the formula: every term its own forward pass
            nw, nl = sched.add_noise(x_w, noise, t), sched.add_noise(x_l, noise, t)
            tw, tl = diffusion_target(sched, x_w, noise, t), diffusion_target(sched, x_l, noise, t)
            with autocast:
                pw, pl = student.predict(nw, t, text), student.predict(nl, t, text)
            with torch.no_grad():
                rw, rl = frozen(nw, t), frozen(nl, t)
                sft_t = frozen(nw, t)
            out = redpo_loss(pw, pl, rw, rl, tw, tl, sft_t, tc.beta, tc.w_sft)
            optim.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), tc.grad_clip)
            optim.step()
        if cuda:
            torch.cuda.synchronize()
        first = out.loss.item() if first is None else first
        if i >= 2:
            times.append(time.perf_counter() - t0)
    if mode.startswith("vip"):
        dist.shutdown()
    return {"mode": mode, "pairs_per_s": tc.batch_size * len(times) / sum(times), "s_per_step": float(np.median(times)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None, "first_loss": first}


def bench_train(args) -> None:
    import json
    import subprocess
    import sys

    results = []
    for mode in TRAIN_MODES:
        cmd = [sys.executable, "-m", "vip.bench", "train-one", "--mode", mode, "--steps", str(args.steps),
               "--config", args.config, *args.overrides]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"benchmark {mode} failed:\n{r.stderr[-2000:]}")
        results.append(json.loads(r.stdout.strip().splitlines()[-1]))
    cfg = vip_config.load(args.config, args.overrides)
    gpu = cfg.model.device.startswith("cuda")
    print(f"machine: {platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}" + (f", {torch.cuda.get_device_name()} (bf16)" if gpu else "")
          + f"; batch {cfg.train.batch_size} pairs, {args.steps} timed steps")
    base = next(r for r in results if r["mode"] == "baseline")
    for r in results:
        mem = f"peak GPU {r['peak_gpu_mb']:7.0f} MB" if gpu else f"peak RSS {r['peak_rss_mb']:7.0f} MB"
        print(f"{r['mode']:16s} {r['pairs_per_s']:6.2f} pairs/s  {r['s_per_step']:6.3f} s/step  "
              f"{mem}  x{r['pairs_per_s'] / base['pairs_per_s']:.2f} vs baseline  "
              f"first loss {r['first_loss']:.6g}   ({TRAIN_MODES[r['mode']]})")


def _machine(device: str) -> str:
    import diffusers

    gpu = f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else ""
    return (f"machine: {platform.machine()} {os.cpu_count()} cpus{gpu}; torch {torch.__version__}, "
            f"diffusers {diffusers.__version__}; date {time.strftime('%Y-%m-%d')}")


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def _dump(args, result: dict) -> None:
    if args.json:
        import json
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")


def bench_gpu_reward(args) -> dict:
    from vip.bench import gpu_reward, reward_configs

    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    batches = [int(b) for b in args.batches.split(",")]
    names = args.rewards.split(",")
    print(_machine(args.device) + f", transformers {_version('transformers')}", flush=True)
    counts = reward_configs.param_counts()
    print("parameters (meta device): " + ", ".join(f"{k} {v:,}" for k, v in counts.items()), flush=True)
    clip_keys = [k for k in args.clips.split(",") if k]
    result = {"params": counts, "rewards": {}, "gen": {}, "share": {}}
    for name in names:
        reward = reward_configs.build(name, args.device, dtype, args.scale, prompts=gpu_reward.PROMPTS)
        rows = result["rewards"][name] = {}
        v11 = "1.1" in name  # reads 48 frames: the 16-frame AnimateDiff clips only at reward.frames 16 (v1's cost)
        for ck in ["48x256x256" if v11 else "animatediff-256", *clip_keys]:
            clip = gpu_reward.CLIPS[ck]
            if v11 and clip[0] < 48:
                continue
            if args.scale > 1:  # tiny: few frames, small images
                clip = (min(clip[0], 48 if v11 else 16), 32, 32, clip[3])
            bs = batches if ck in ("48x256x256", "animatediff-256") else [args.share_batch]
            rows[ck] = gpu_reward.bench_reward(reward, clip, bs, args.iters)
            for r in rows[ck]:
                print(f"  {name:16s} {ck:16s} batch {r['batch']:3d}  {r['tokens_per_clip']:5d} tokens  "
                      + (r["error"] if "error" in r else
                         f"{r['clips_per_s']:7.2f} clips/s ({r['score_s']:.3f} s)  forward {r['forward_clips_per_s']:7.2f} "
                         f"clips/s  {r['tflop_per_clip']:6.2f} TFLOP/clip  MFU {_fmt(r['mfu'] and 100 * r['mfu'], '5.1f')}% "
                         f"(end to end {_fmt(r['mfu_end_to_end'] and 100 * r['mfu_end_to_end'], '5.1f')}%)  "
                         f"peak {_fmt(r['peak_gb'], '.1f')} GB"), flush=True)
        del reward
        if cuda:
            torch.cuda.empty_cache()
    if args.gen:
        steps = args.steps
        g = result["gen"]
        try:
            g["animatediff-256"] = gpu_reward.animatediff_gen_s_per_clip(256 if args.scale == 1 else 64, 4, 8, steps,
                                                                         args.device, args.scale)
            print(f"  gen {g['animatediff-256']['what']}: {g['animatediff-256']['s_per_clip']:.3f} s/clip "
                  f"{g['animatediff-256']['split_s']}", flush=True)
            if "animatediff-512" in clip_keys:
                g["animatediff-512"] = gpu_reward.animatediff_gen_s_per_clip(512 if args.scale == 1 else 64, 2, 4,
                                                                             steps, args.device, args.scale)
                print(f"  gen {g['animatediff-512']['what']}: {g['animatediff-512']['s_per_clip']:.3f} s/clip "
                      f"{g['animatediff-512']['split_s']}", flush=True)
            if "wan2.1-1.3b" in clip_keys:
                f, h, w = (81, 480, 832) if args.scale == 1 else (5, 32, 32)
                g["wan2.1-1.3b"] = gpu_reward.wan_gen_s_per_clip(f, h, w, 50, args.device, args.scale, args.iters)
                print(f"  gen {g['wan2.1-1.3b']['what']}: {g['wan2.1-1.3b']['s_per_clip']:.2f} s/clip", flush=True)
        except Exception as e:  # the reward figures above stand without these
            g["error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
            print("  gen failed: " + g["error"], flush=True)
        for name, by_clip in result["rewards"].items():
            for ck, rows in by_clip.items():
                r = next((r for r in rows if r["batch"] == args.share_batch), None)
                if r is None or "error" in r or "s_per_clip" not in g.get(ck, {}):
                    continue
                sc = r["score_s"] / r["batch"]
                result["share"][f"{name} on {ck}"] = {"reward_s_per_clip": sc, "gen_s_per_clip": g[ck]["s_per_clip"],
                                                      "share": gpu_reward.reward_share(sc, g[ck]["s_per_clip"])}
    print(_machine(args.device))
    print(f"rewards (random weights, {str(dtype)[6:]}, sdpa; peak assumed: "
          f"{next(iter(next(iter(result['rewards'].values())).values()))[0]['peak_assumed']}):")
    print("| reward | clip | batch | tokens/clip | TFLOP/clip | clips/s (score) | clips/s (forward) | MFU (forward) "
          "| MFU (end to end) | peak memory |")
    for name, by_clip in result["rewards"].items():
        for ck, rows in by_clip.items():
            for r in rows:
                if "error" in r:
                    print(f"| {name} | {ck} | {r['batch']} | {r['tokens_per_clip']} | {r['tflop_per_clip']:.2f} | "
                          f"{r['error']} | | | | |")
                    continue
                print(f"| {name} | {ck} | {r['batch']} | {r['tokens_per_clip']} | {r['tflop_per_clip']:.2f} | "
                      f"{r['clips_per_s']:.2f} | {r['forward_clips_per_s']:.2f} | "
                      f"{_fmt(r['mfu'] and 100 * r['mfu'], '.1f')}% | "
                      f"{_fmt(r['mfu_end_to_end'] and 100 * r['mfu_end_to_end'], '.1f')}% | {_fmt(r['peak_gb'], '.1f')} GB |")
    if result["share"]:
        print("| reward on clip | reward s/clip | generation s/clip | reward's share |")
        for k, v in result["share"].items():
            print(f"| {k} | {v['reward_s_per_clip']:.3f} | {v['gen_s_per_clip']:.3f} | {100 * v['share']:.1f}% |")
    _dump(args, result)
    return result


def _version(pkg: str) -> str:
    import importlib.metadata
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def bench_gpu_loo_reward(args) -> dict:
    """gpu-loo with a real-size reward: serial, overlapped, and the pipeline loop + the same reward."""
    from vip.bench import gpu as gpu_bench, gpu_reward, reward_configs
    from vip.steps.loo.engine import FastLoo, FastLooOptions

    cuda = args.device.startswith("cuda")
    shape = gpu_bench.Shape(args.frames, args.size, args.size, args.steps, args.guidance, args.scale)
    model, parts = gpu_bench.build(shape, args.device)
    name = {"videoscore": "videoscore-v1", "videoreward": "videoreward"}[args.reward]
    reward = reward_configs.build(name, args.device, torch.bfloat16 if cuda else torch.float32, args.scale,
                                  batch_size=args.batch_clips, prompts=gpu_reward.PROMPTS)
    opts = FastLooOptions(batch_clips=args.batch_clips, dtype="bfloat16" if cuda else "float32",
                          channels_last=cuda, compile=args.compile, short_attention=cuda and args.compile,
                          decode_dtype=args.decode_dtype)
    print(_machine(args.device), flush=True)
    print(f"model: {model.num_params() / 1e6:.1f}M denoiser parameters, {len(model.units())} units; "
          f"{shape.frames}x{shape.height}x{shape.width}, {shape.steps} DDIM steps, CFG {shape.guidance}; reward {name} "
          f"({sum(p.numel() for p in reward.net.parameters()) / 1e9:.2f}B, random weights)", flush=True)

    def factory(overlap):
        return FastLoo(model, reward, FastLooOptions(**{**vars(opts), "overlap_score": overlap}))
    out = gpu_reward.bench_loo_reward(factory, parts, shape, args.prompts, args.variants, args.baseline_variants,
                                      args.device)
    print(f"leave-one-out end to end ({args.prompts} prompts, reward {name}, same seeds):")
    for k in ("serial", "overlapped"):
        v = out[k]
        print(f"  vip {k:10s} {v['clips_per_s']:7.3f} clips/s  {v['clips']} clips in {v['seconds']:.1f} s  split "
              + ", ".join(f"{a} {t:.1f}s" for a, t in v["split_s"].items()) + f"  peak {_fmt(v['peak_gb'], '.1f')} GB")
    b = out["baseline"]
    print(f"  baseline       {b['clips_per_s']:7.3f} clips/s  {b['clips']} clips in {b['seconds']:.1f} s  (build "
          f"{b['split_s']['build']:.1f} s; {b['clips_per_s_without_build']:.3f} clips/s without it)")
    print(f"  overlapped == serial: {out['overlapped_equals_serial']} (max diff {out['max_abs_diff_overlapped_vs_serial']:.3g}); "
          f"overlapped {out['speedup_overlapped_vs_serial']:.2f}x serial, {out['speedup_overlapped_vs_baseline']:.2f}x "
          f"the pipeline loop; max score difference vs the loop {out['max_score_diff_vs_baseline']:.3g}")
    _dump(args, {"shape": vars(shape), "reward": name, "loo": out})
    return out


def bench_gpu_loo(args) -> dict:
    if args.reward != "standin":
        return bench_gpu_loo_reward(args)
    from vip.bench import gpu as gpu_bench
    from vip.steps.loo.engine import FastLoo, FastLooOptions
    from vip.bench.standin_reward import StandInReward

    shape = gpu_bench.Shape(args.frames, args.size, args.size, args.steps, args.guidance, args.scale)
    model, parts = gpu_bench.build(shape, args.device)
    cuda = args.device.startswith("cuda")
    opts = FastLooOptions(batch_clips=args.batch_clips, dtype="bfloat16" if cuda else "float32",
                          channels_last=cuda, compile=args.compile, short_attention=cuda and args.compile,
                          decode_dtype=args.decode_dtype)
    print(_machine(args.device))
    print(f"model: {model.num_params() / 1e6:.1f}M denoiser parameters, {len(model.units())} units; "
          f"{shape.frames}x{shape.height}x{shape.width}, {shape.steps} DDIM steps, CFG {shape.guidance}")
    den = [gpu_bench.bench_denoiser_baseline(model, args.iters)]
    if args.compile:  # the same levers without compilation, for the split
        with FastLoo(model, StandInReward(), FastLooOptions(**{**vars(opts), "compile": False})) as eager:
            den.append(gpu_bench.bench_denoiser(eager, 2 * args.batch_clips, den[0]["tflop_per_sample"], args.iters))
    with FastLoo(model, StandInReward(), opts) as fl:
        den.append(gpu_bench.bench_denoiser(fl, 2 * args.batch_clips, den[0]["tflop_per_sample"], args.iters))
        print(f"denoiser (peak assumed: {den[0]['peak_assumed']}):")
        for r in den:
            print(f"  {r['what']:45s} batch {r['batch']:3d}  {1e3 * r['s_per_forward']:8.1f} ms/forward  "
                  f"{r['samples_per_s']:7.2f} samples/s  {r['tflop_per_forward']:7.2f} TFLOP  "
                  f"MFU {_fmt(r['mfu'] and 100 * r['mfu'], '5.1f')}%  peak {_fmt(r['peak_gb'], '.1f')} GB"
                  + (f"  first call {r['first_call_s']:.0f} s" if "first_call_s" in r else ""))
        loo = gpu_bench.bench_loo(fl, parts, shape, args.prompts, args.baseline_variants)
    v, b = loo["vip"], loo["baseline"]
    print(f"leave-one-out end to end ({args.prompts} prompts, stand-in reward, same seeds):")
    print(f"  vip      {v['clips_per_s']:7.3f} clips/s  {v['variants']} variants, {v['clips']} clips in {v['seconds']:.1f} s"
          f"  split " + ", ".join(f"{k} {t:.1f}s" for k, t in v["split_s"].items())
          + (f"  (compiled before: {den[-1]['first_call_s']:.0f} s)" if args.compile else ""))
    print(f"  baseline {b['clips_per_s']:7.3f} clips/s  {b['variants']} variants, {b['clips']} clips in {b['seconds']:.1f} s"
          f"  (build {b['split_s']['build']:.1f} s; {b['clips_per_s_without_build']:.3f} clips/s without it)")
    print(f"  speed-up {loo['speedup']:.2f}x; max score difference {loo['max_score_diff_vs_baseline']:.3g}")
    result = {"shape": vars(shape), "denoiser": den, "loo": loo}
    _dump(args, result)
    return result


DENOISER_LEVERS = [  # name:key=value,...  (vip/bench/levers.py); each row adds to or swaps one of the above
    "eager bf16 channels-last", "+ cudnn autotune:cudnn_benchmark=1",
    "+ flash attention:cudnn_benchmark=1,attention=flash",
    "+ mem-efficient attention:cudnn_benchmark=1,attention=efficient",
    "+ cuDNN attention:cudnn_benchmark=1,attention=cudnn",
    "+ fused QKV:cudnn_benchmark=1,fused_qkv=1",
    "compiled:cudnn_benchmark=1,compile=default",
    "compiled, tuned Inductor:cudnn_benchmark=1,compile=tuned",
]


def bench_gpu_denoiser(args) -> list:
    """The denoiser's levers one by one on the same weights and batch, with where the time goes."""
    from vip.bench import gpu as gpu_bench, levers
    from vip.steps.loo.engine import FastLoo, FastLooOptions
    from vip.bench.standin_reward import StandInReward

    shape = gpu_bench.Shape(args.frames, args.size, args.size, args.steps, args.guidance, args.scale)
    if args.backbone != "animatediff":
        return bench_backbone_denoiser(args, shape)
    specs = [levers.parse(s) for s in (args.levers or DENOISER_LEVERS)]
    model, parts = gpu_bench.build(shape, args.device)
    del parts
    cuda = args.device.startswith("cuda")
    print(_machine(args.device))
    print(f"model: {model.num_params() / 1e6:.1f}M denoiser parameters; {shape.frames}x{shape.height}x{shape.width}",
          flush=True)
    base = gpu_bench.bench_denoiser_baseline(model, args.iters)
    print(f"  {'baseline: ' + base['what']:40s} batch {base['batch']:3d}  {1e3 * base['s_per_forward']:8.1f} ms  "
          f"MFU {_fmt(base['mfu'] and 100 * base['mfu'], '5.1f')}%  peak {_fmt(base['peak_gb'], '.1f')} GB", flush=True)

    opts = FastLooOptions(batch_clips=args.batch_clips, dtype="bfloat16" if cuda else "float32", channels_last=cuda)
    with FastLoo(model, StandInReward(), opts) as fl:
        rows = gpu_bench.sweep_denoiser(fl, 2 * args.batch_clips, base["tflop_per_sample"], specs, args.iters,
                                        profile=args.profile, on_row=_show_lever_row)
    print(f"denoiser levers, {shape.frames}x{shape.height}x{shape.width} (peak assumed: {base['peak_assumed']}):")
    for r in rows:
        print(_lever_line(r))
    _dump(args, {"shape": vars(shape), "baseline": base, "rows": rows})
    return rows


def _lever_line(r: dict) -> str:
    if "error" in r:
        return f"  {r['what']:40s} batch {r['batch']:3d}  failed: {r['error']}"
    return (f"  {r['what']:40s} batch {r['batch']:3d}  {1e3 * r['s_per_forward']:8.1f} ms  "
            f"{r['samples_per_s']:7.2f} samples/s  MFU {_fmt(r['mfu'] and 100 * r['mfu'], '5.1f')}%  "
            f"peak {_fmt(r['peak_gb'], '.1f')} GB  first call {r['first_call_s']:.0f} s")


def _show_row(line: str, r: dict) -> None:
    """A result line as it comes, with its breakdown under it when the row was profiled."""
    from vip.bench.breakdown import format_breakdown
    print(line, flush=True)
    if "breakdown" in r:
        print(format_breakdown(r["breakdown"]), flush=True)


def _show_lever_row(r: dict) -> None:
    _show_row(_lever_line(r), r)


def bench_backbone_denoiser(args, shape) -> dict:
    from vip.bench import gpu as gpu_bench, levers

    specs = [levers.parse(s) for s in (args.levers or ["eager bf16", "compiled:compile=default"])]
    print(_machine(args.device), flush=True)
    out = gpu_bench.bench_backbone(args.backbone, shape, 2 * args.batch_clips, specs, args.iters, args.device,
                                   args.profile, on_row=_show_lever_row)
    print(f"{args.backbone}: {out['params_m']:.1f}M denoiser parameters ({out['units']}); clip "
          f"{shape.frames}x{shape.height}x{shape.width}, latent {tuple(out['latent_shape'])}; "
          f"{out['tflop_per_sample']:.2f} TFLOP per sample; peak assumed: {out['rows'][0]['peak_assumed']}")
    for r in out["rows"]:
        print(_lever_line(r))
    _dump(args, {"shape": vars(shape), **out})
    return out


REDPO_CONFIGS = [  # the first has no checkpointing: its step gives the model FLOPs
    {"name": "plain AdamW, bf16 autocast", "pairs": 2, "optimizer": "adamw"},
    {"name": "plain AdamW + checkpointing every block", "pairs": 8, "optimizer": "adamw", "checkpointing": True},
    {"name": "plain AdamW + checkpointing every block", "pairs": 16, "optimizer": "adamw", "checkpointing": True},
    {"name": "plain AdamW + checkpointing every block", "pairs": 32, "optimizer": "adamw", "checkpointing": True},
    {"name": "DeepSpeed ZeRO-2 bf16 + every block", "pairs": 16, "optimizer": "zero2", "checkpointing": True},
]
REDPO_COMPILE_CONFIGS = [  # --compile: eager against regional torch.compile (policy and teacher) at the same batch
    {"name": "plain AdamW, bf16 autocast", "pairs": 2, "optimizer": "adamw"},
    {"name": "plain AdamW + checkpointing every block", "pairs": 16, "optimizer": "adamw", "checkpointing": True},
    {"name": "plain AdamW + every block, compiled", "pairs": 16, "optimizer": "adamw", "checkpointing": True,
     "compile": True},
    {"name": "... + short motion attention", "pairs": 16, "optimizer": "adamw", "checkpointing": True,
     "compile": True, "short_attention": True},
    {"name": "DeepSpeed ZeRO-2 bf16, the same (the trainer)", "pairs": 16, "optimizer": "zero2",
     "checkpointing": True, "compile": True, "short_attention": True},
]


def bench_gpu_train(args) -> list:
    from vip.bench import gpu as gpu_bench

    shape = gpu_bench.Shape(args.frames, args.size, args.size, args.steps, args.guidance, args.scale)
    model, parts = gpu_bench.build(shape, args.device)
    del parts  # the pipeline's U-Net 2D and adapter: not needed here, and 5 GB
    table = REDPO_COMPILE_CONFIGS if args.compile else REDPO_CONFIGS
    if args.rows:  # by index; the first must stay the eager, uncheckpointed step that gives the model FLOPs
        table = [table[int(i)] for i in args.rows.split(",")]
    configs = [c for c in table if args.optimizers is None or c["optimizer"] in args.optimizers.split(",")]
    if args.max_pairs:
        configs = [dict(c, pairs=min(c["pairs"], args.max_pairs)) for c in configs]

    def line(r):
        return (f"  {r['name']:42s} {r['pairs']:3d} pairs  {_fmt(r['pairs_per_s'], '6.2f')} pairs/s  "
                f"{_fmt(r['s_per_step'], '6.3f')} s/step  MFU {_fmt(r['mfu'] and 100 * r['mfu'], '5.1f')}%  "
                f"peak {_fmt(r['peak_gb'], '.1f') if r['peak_gb'] != 'OOM' else 'OOM'} GB"
                + (f"  compile {r['compile_s']:.0f} s" if r.get("compile_s") is not None else "")
                + (f"  {r['error']}" if "error" in r else ""))

    if args.profile:  # where the last configuration's step time goes
        configs[-1] = dict(configs[-1], profile=True)

    rows = gpu_bench.bench_redpo(model, configs, args.iters, args.device, on_row=lambda r: _show_row(line(r), r))
    print(_machine(args.device))
    print(f"ReDPO step, {model.num_params() / 1e6:.1f}M policy + frozen bf16 teacher (reference and SFT target), "
          f"{shape.frames}x{shape.height}x{shape.width}; peak assumed: {rows[0]['peak_assumed']}")
    for r in rows:
        print(line(r))
    _dump(args, {"shape": vars(shape), "redpo": rows})
    return rows


def bench_loo_budget(args) -> dict:
    import json

    from vip.bench import loo_budget

    if args.from_json:
        dump = json.loads(Path(args.from_json).read_text())
        out = {**dump, **loo_budget.from_raw(dump["raw"], dump["reference"], dump["k"])}
    else:
        import diffusers
        print(f"machine: {platform.machine()} {os.cpu_count()} cpus, {_cpu_name()}; torch "
              f"{torch.__version__}, diffusers {diffusers.__version__}; {args.workers} workers x 1 thread; "
              f"date {time.strftime('%Y-%m-%d')}", flush=True)
        reuse = json.loads(Path(args.reuse).read_text())["raw"] if args.reuse else None
        out = loo_budget.study(args.config, args.overrides, args.seeds, args.workers, args.stages,
                               budget_s=args.budget_s, reuse=reuse, log=lambda m: print(m, flush=True))
        out["machine"] = {"cpu": _cpu_name(), "cpus": os.cpu_count(), "torch": torch.__version__,
                          "diffusers": diffusers.__version__, "date": time.strftime("%Y-%m-%d")}
        busy = out["busy_s"]
        print(f"wall {out['wall_s']:.1f} s for {out['tasks_done']} tasks ({out['tasks_reused']} reused, "
              f"{out['tasks_cut']} cut by --budget-s); "
              f"worker time: generate {busy['generate']:.1f} s, score {busy['score']:.1f} s "
              f"({100 * busy['score'] / max(1e-9, sum(busy.values())):.2f}%)")
    print(f"reference: {out['reference']} on every prompt, k={out['k']}; tables: {', '.join(out['tables'])}")
    for key, t in out["raw"].items():
        ref_row = next(r for r in out["per_table"] if f"{r['model']}|{r['seed']}" == key)
        print(f"  {key.replace('|', ', seed ')}: {len(t['variants']) - 1} units (removed before: {len(t['removed'])}), "
              f"exhaustive choice {ref_row['reference']}")
    print(loo_budget.format_summary(out))
    _dump(args, out)
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def plot_breakdowns(args) -> None:
    """Every row with a breakdown in the given --json dumps of gpu-denoiser / gpu-train, as one chart."""
    import json

    from vip.plots import time_by_kind_chart
    rows = []
    for f in args.tables or []:
        d = json.loads(Path(f).read_text())
        for r in d.get("rows", []) + d.get("redpo", []):
            if "breakdown" in r:
                label = r.get("what") or f"{r['name']} ({r['pairs']} pairs)"
                rows.append((f"{label}, batch {r['batch']}" if "batch" in r else label, r["breakdown"]))
    if not rows:
        raise SystemExit("error: no row with a breakdown in " + ", ".join(args.tables or ["(no files)"])
                         + "; run gpu-denoiser or gpu-train with --profile --json FILE first")
    print(time_by_kind_chart(rows, Path(args.out), args.title))


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m vip.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["loo", "train", "train-one", "gpu-loo", "gpu-denoiser", "gpu-train", "gpu-reward",
                                     "adaptive", "plot-breakdown", "loo-budget"])
    g = ap.add_argument_group("gpu-loo / gpu-train (AnimateDiff size, random weights)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--size", type=int, default=256)
    g.add_argument("--backbone", default="animatediff", choices=["animatediff", "wan2.1-1.3b", "videocrafter2"],
                   help="gpu-denoiser: which published denoiser (random weights)")
    g.add_argument("--frames", type=int, default=16)
    g.add_argument("--guidance", type=float, default=7.5)
    g.add_argument("--scale", type=int, default=1, help="divide every width by this (CPU tests)")
    g.add_argument("--batch-clips", type=int, default=16, help="leave-one-out jobs per denoiser batch")
    g.add_argument("--prompts", type=int, default=4)
    g.add_argument("--decode-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="gpu-loo: the VAE's dtype while vip decodes (the stage decodes in float32)")
    g.add_argument("--baseline-variants", type=int, default=3, help="the pipeline loop runs full + this many minus one")
    g.add_argument("--compile", action="store_true",
                   help="gpu-loo: compile the gated denoiser; gpu-train: eager against regionally compiled steps")
    g.add_argument("--iters", type=int, default=10)
    g.add_argument("--optimizers", default=None, help="gpu-train: only these (adamw,zero2)")
    g.add_argument("--max-pairs", type=int, default=0)
    g.add_argument("--rows", default="", help="gpu-train: only these configurations, by index (0,3)")
    g.add_argument("--json", default="")
    g.add_argument("--reward", default="standin", choices=["standin", "videoscore", "videoreward"],
                   help="gpu-loo: the reward (videoscore = v1 at its published size, random weights)")
    g.add_argument("--rewards", default="videoscore-v1,videoscore-v1.1,videoreward", help="gpu-reward: which")
    g.add_argument("--batches", default="1,4,8,16", help="gpu-reward: clips per forward")
    g.add_argument("--clips", default="animatediff-512,wan2.1-1.3b",
                   help="gpu-reward: clip shapes beyond 16x256x256, at --share-batch (see vip/bench/gpu_reward.py)")
    g.add_argument("--share-batch", type=int, default=4, help="gpu-reward: batch for the other clip shapes and the shares")
    g.add_argument("--no-gen", dest="gen", action="store_false", help="gpu-reward: skip the generators' s/clip")
    g.add_argument("--levers", nargs="*", default=None,
                   help="gpu-denoiser: name:key=value,... (vip/bench/levers.py); default: the standard sweep")
    g.add_argument("--profile", action="store_true", help="gpu-denoiser: where each row's time goes, by kernel kind; gpu-train: the last configuration's")
    g.add_argument("--tables", nargs="*", default=None,
                   help="adaptive: recorded loo.h5 files; plot-breakdown: --json dumps of gpu-denoiser / gpu-train")
    g.add_argument("--out", default="breakdown.png", help="plot-breakdown: the PNG to write")
    g.add_argument("--title", default="", help="plot-breakdown: chart title")
    b = ap.add_argument_group("loo-budget")
    b.add_argument("--workers", type=int, default=os.cpu_count(), help="processes, one torch thread each (0 = this one)")
    b.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="run.seed of each table")
    b.add_argument("--stages", type=int, default=3, help="the model, then its pruned stand-ins for later stages")
    b.add_argument("--budget-s", type=float, default=0.0, help="start no task after this many seconds (0 = none)")
    b.add_argument("--from-json", default="", help="analyse the tables of an earlier --json dump, generate nothing")
    b.add_argument("--reuse", default="", help="take the rows an earlier --json dump holds from it, generate the rest")
    ap.add_argument("--steps", type=int, default=None,
                    help="train: timed optimizer steps per configuration (10); gpu-*: DDIM steps (25)")
    ap.add_argument("--mode", choices=list(TRAIN_MODES), help=argparse.SUPPRESS)
    ap.add_argument("--config", default="configs/toyvid.yaml")
    ap.add_argument("--variants", type=int, default=5, help="full model + this many minus one units")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_intermixed_args()
    with fail_cleanly():
        if args.what.startswith("gpu-"):
            args.steps = args.steps or 25
            return {"gpu-loo": bench_gpu_loo, "gpu-denoiser": bench_gpu_denoiser, "gpu-train": bench_gpu_train,
                    "gpu-reward": bench_gpu_reward}[args.what](args)
        if args.what == "plot-breakdown":
            return plot_breakdowns(args)
        if args.what == "loo-budget":
            return bench_loo_budget(args)
        if args.what == "adaptive":
            from vip.bench.adaptive import bench_adaptive
            return bench_adaptive(args)
        args.steps = args.steps or 10
        if args.what == "train":
            return bench_train(args)
        cfg = vip_config.load(args.config, args.overrides)
        if args.what == "train-one":
            import json
            print(json.dumps(bench_train_one(cfg, args.mode, args.steps)))
            return
        bench_loo(cfg, args.variants)


if __name__ == "__main__":
    main()
