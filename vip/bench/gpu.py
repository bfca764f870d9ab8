"""Benchmarks at AnimateDiff size (random weights): the denoiser, leave-one-out end to end
against the diffusers pipeline loop a user would write, and the ReDPO step.

Every function also runs on the CPU with `scale` > 1 (narrow widths), which is how the tests
keep this code alive; figures only mean something on a GPU at scale 1.
"""
from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import numpy as np
import torch

from vip.models.motion_unet import SkippedUnit
from vip.rewards.base import ASPECTS
from vip.bench import real_configs
from vip.train.checkpointing import checkpoint_every_block, undo
from vip.steps.loo.engine import FULL, FastLoo, FastLooOptions
from vip.bench.flops import count_flops, mfu, peak_flops
from vip.train.regions import compile_regions, uncompile_regions
from vip.bench.standin_reward import StandInReward

PROMPTS = ["a red circle moving left on a black background", "a blue square moving right on a black background",
           "a green triangle moving up on a white background", "a yellow circle moving down on a black background"]


@dataclass
class Shape:
    frames: int = 16
    height: int = 256
    width: int = 256
    steps: int = 25
    guidance: float = 7.5
    scale: int = 1  # width divisor: 1 = published size; tests use 16


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, iters: int, warmup: int, device) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def peak_mem_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.device(device).type == "cuda" else None


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def build(shape: Shape, device: str):
    return real_configs.build(shape.frames, shape.height, shape.width, shape.steps, shape.guidance,
                              scale=shape.scale, device=device)


def denoiser_inputs(model, batch: int) -> tuple:
    """(latents, timesteps, text) for one forward at this batch, in the U-Net's dtype and device; the
    timestep is expanded as the sampler passes it, so one compiled graph serves both."""
    p = next(model.unet.parameters())
    x = torch.randn(batch, *model.latent_shape, device=p.device, dtype=p.dtype)
    text = model.encode_prompts(PROMPTS[:1] * batch).to(p.dtype)
    return x, torch.tensor(500).expand(batch).to(p.device), text


def forward_flops(model, batch: int) -> int:
    """FLOPs of one denoiser forward at this batch (eager, whatever dtype the U-Net has)."""
    x, t, text = denoiser_inputs(model, batch)
    with torch.no_grad():
        return count_flops(model.predict, x, t, text)


def denoiser_rate(model, batch: int, denoiser, iters: int, warmup: int) -> float:
    """Seconds per forward at this batch."""
    x, t, text = denoiser_inputs(model, batch)

    def fwd():
        with torch.no_grad():
            model.predict(x, t, text, denoiser=denoiser)
    return median_time(fwd, iters, warmup, x.device)


def bench_denoiser_baseline(model, iters: int = 10) -> dict:
    """The forward as a pipeline call runs it: fp16 eager at batch 2 (one prompt with CFG)."""
    dev = model.device
    peak_name, peak = peak_flops() if dev.type == "cuda" else ("cpu (no peak)", None)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    model.unet.to(dtype)
    per_sample = forward_flops(model, 2) / 2
    reset_peak(dev)
    s = denoiser_rate(model, 2, None, iters, 2)
    model.unet.to(torch.float32)
    return {"what": f"baseline {str(dtype)[6:]} eager", "batch": 2, "s_per_forward": s, "samples_per_s": 2 / s,
            "tflop_per_forward": 2 * per_sample / 1e12, "tflop_per_sample": per_sample / 1e12,
            "mfu": mfu(2 * per_sample, s, peak), "peak_gb": peak_mem_gb(dev), "peak_assumed": peak_name}


def bench_denoiser(fl: FastLoo, batch: int, tflop_per_sample: float, iters: int = 10) -> dict:
    """vip's forward (fl's dtype, layout, compilation and gates) at this batch."""
    model, opts = fl.model, fl.opts
    dev = model.device
    peak_name, peak = peak_flops() if dev.type == "cuda" else ("cpu (no peak)", None)
    fl.gates.set([[]] * batch, dev)
    reset_peak(dev)
    t0 = time.perf_counter()
    denoiser_rate(model, batch, fl.denoiser, 1, 0)  # compiles on the first call of this shape
    first = time.perf_counter() - t0
    s = denoiser_rate(model, batch, fl.denoiser, iters, 1)
    fl_ = batch * tflop_per_sample * 1e12
    return {"what": f"vip {opts.dtype}" + (" compiled" if opts.compile else " eager")
            + (" channels-last" if opts.channels_last else "") + " gated", "batch": batch,
            "s_per_forward": s, "samples_per_s": batch / s, "tflop_per_forward": fl_ / 1e12,
            "mfu": mfu(fl_, s, peak), "peak_gb": peak_mem_gb(dev), "first_call_s": first, "peak_assumed": peak_name}


def sweep_denoiser(fl: FastLoo, batch: int, tflop_per_sample: float, levers: list, iters: int = 10,
                   profile: bool = False, on_row=None) -> list[dict]:
    """The gated denoiser of an open eager engine at this batch under each Levers (vip/bench/levers.py)."""
    model = fl.model
    fl.gates.set([[]] * batch, model.device)
    x, t, text = denoiser_inputs(model, batch)

    def call(den):
        return lambda: model.predict(x, t, text, denoiser=den)
    return sweep(model.unet, call, batch, tflop_per_sample, levers, iters, profile, on_row)


def sweep(module, call, batch: int, tflop_per_sample: float, levers: list, iters: int = 10,
          profile: bool = False, on_row=None) -> list[dict]:
    """`call(den)` gives a no-argument forward through den (module, or what a lever wraps it in);
    each Levers is applied to module in turn, on the same weights and inputs, and timed; with
    `profile`, where each one's time goes (vip/bench/breakdown.py)."""
    from vip.bench import breakdown, levers as lvs

    dev = next(module.parameters()).device
    cuda = dev.type == "cuda"
    peak_name, peak = peak_flops() if cuda else ("cpu (no peak)", None)
    rows = []
    for lv in levers:
        reset_peak(dev)
        row = {"what": lv.name, "levers": lv, "batch": batch, "tflop_per_forward": batch * tflop_per_sample}
        try:
            flops = None
            if profile:  # counted on the eager equivalent (the same kernels' work, by kind)
                eager = dataclasses.replace(lv, compile=None)
                with lvs.applied(module, eager) as den, lvs.call_context(eager), torch.no_grad():
                    flops = breakdown.flops_by_kind(call(den))
            with lvs.applied(module, lv) as den, lvs.call_context(lv), torch.no_grad():
                fwd = call(den)
                t0 = time.perf_counter()
                fwd()
                sync(dev)
                row["first_call_s"] = time.perf_counter() - t0
                s = median_time(fwd, iters, 1, dev)
                row.update(s_per_forward=s, samples_per_s=batch / s, peak_gb=peak_mem_gb(dev),
                           mfu=mfu(batch * tflop_per_sample * 1e12, s, peak))
                if profile:
                    row["breakdown"] = breakdown.breakdown(fwd, cuda, peak, flops=flops)
        except Exception as e:  # one lever a kernel refuses (a backend that does not take this shape) is a row
            row["error"] = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:160]}"
        row["peak_assumed"] = peak_name
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def bench_backbone(name: str, shape: Shape, batch: int, levers: list, iters: int, device: str,
                   profile: bool = False, on_row=None) -> dict:
    """Wan2.1 1.3B or VideoCrafter2 (vip/bench/backbones.py): the denoiser as a pipeline call runs
    it (eager, batch 2: one prompt with CFG) against each lever at `batch`, all in bf16 on a GPU."""
    from vip.bench import backbones
    from vip.bench.levers import Levers

    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    d = backbones.build(name, shape.frames, shape.height, shape.width, shape.scale, device)
    d.module.to(dtype).eval().requires_grad_(False)
    keep = getattr(d.module, "_keep_in_fp32_modules", None) or []
    for t_name, t in [*d.module.named_parameters(), *d.module.named_buffers()]:
        if t.is_floating_point() and any(k in t_name.split(".") for k in keep):
            t.data = t.data.float()  # as from_pretrained(torch_dtype=bf16) leaves them (Wan's norms, rope)
    small = backbones.inputs(d, 1, device, dtype)
    with torch.no_grad():
        per_sample = count_flops(backbones.caller(d, *small)(d.module))
    base = sweep(d.module, backbones.caller(d, *backbones.inputs(d, 2, device, dtype)), 2, per_sample / 1e12,
                 [Levers("baseline: eager, batch 2")], iters, False, on_row)
    rows = sweep(d.module, backbones.caller(d, *backbones.inputs(d, batch, device, dtype)), batch,
                 per_sample / 1e12, levers, iters, profile, on_row)
    return {"backbone": name, "params_m": sum(p.numel() for p in d.module.parameters()) / 1e6,
            "latent_shape": d.latent_shape, "units": d.units, "tflop_per_sample": per_sample / 1e12,
            "rows": base + rows}


def pipeline_loo(parts: dict, variants: list[str], prompts: list[str], seeds: list[int], shape: Shape, reward,
                 device: str) -> tuple[np.ndarray, dict]:
    """What one writes with diffusers alone: for each variant build an AnimateDiffPipeline (fp16 on a
    GPU), delete the unit, call the pipeline per prompt (text encoding, CFG denoising at batch 2,
    VAE decode), score the clip."""
    from diffusers import AnimateDiffPipeline

    dtype = torch.float16 if torch.device(device).type == "cuda" else torch.float32
    scores = np.zeros((len(variants), len(prompts), 4), dtype=np.float32)
    times = {"build": 0.0, "generate_and_score": 0.0}
    for vi, v in enumerate(variants):
        sync(device)
        t0 = time.perf_counter()
        # fresh copies stand in for from_pretrained: the pipeline casts and moves what it is given
        pipe = AnimateDiffPipeline(vae=copy.deepcopy(parts["vae"]), text_encoder=copy.deepcopy(parts["text_encoder"]),
                                   tokenizer=parts["tokenizer"], unet=parts["unet2d"],
                                   motion_adapter=copy.deepcopy(parts["motion_adapter"]),
                                   scheduler=real_configs.scheduler())
        pipe.to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
        if v != FULL:
            parent, i = v.rsplit(".", 1)
            pipe.unet.get_submodule(parent)[int(i)] = SkippedUnit()
        sync(device)
        t1 = time.perf_counter()
        times["build"] += t1 - t0
        for pi, (p, s) in enumerate(zip(prompts, seeds)):
            frames = pipe(prompt=p, num_frames=shape.frames, height=shape.height, width=shape.width,
                          num_inference_steps=shape.steps, guidance_scale=shape.guidance,
                          generator=torch.Generator().manual_seed(int(s)), output_type="pt").frames
            sc = reward.score(frames.float(), [p])
            scores[vi, pi] = [float(sc[a][0]) for a in ASPECTS]  # a real reward has outputs beyond these
        sync(device)
        times["generate_and_score"] += time.perf_counter() - t1
        del pipe
    return scores, times


def bench_loo(fl: FastLoo, parts: dict, shape: Shape, n_prompts: int, baseline_variants: int) -> dict:
    """vip's gated leave-one-out over every variant (engine `fl`, open), then the pipeline loop on
    the first `baseline_variants` of them, same prompts, seeds, steps and resolution, in this process."""
    model = fl.model
    dev = model.device
    prompts = (PROMPTS * n_prompts)[:n_prompts]
    seeds = list(range(n_prompts))
    variants = [FULL] + model.units()
    base_variants = variants[:baseline_variants]
    out = {}
    if fl.opts.compile:  # one step of the same jobs: compiles the batch shape the run will use
        t0 = time.perf_counter()
        fl.run(variants, prompts, seeds, steps=1)
        out["warm_call_s"] = time.perf_counter() - t0
    fl.timings.clear()
    reset_peak(dev)
    sync(dev)
    t0 = time.perf_counter()
    ours = fl.run(variants, prompts, seeds, shape.steps, shape.guidance)
    sync(dev)
    ours_s = time.perf_counter() - t0
    out["vip"] = {"clips": len(variants) * n_prompts, "seconds": ours_s,
                  "clips_per_s": len(variants) * n_prompts / ours_s, "split_s": dict(fl.timings),
                  "peak_gb": peak_mem_gb(dev), "variants": len(variants)}
    reset_peak(dev)
    base, times = pipeline_loo(parts, base_variants, prompts, seeds, shape, fl.reward, str(dev))
    base_s = sum(times.values())
    n = len(base_variants) * n_prompts
    out["baseline"] = {"clips": n, "seconds": base_s, "clips_per_s": n / base_s, "split_s": times,
                       "clips_per_s_without_build": n / times["generate_and_score"], "peak_gb": peak_mem_gb(dev),
                       "variants": len(base_variants)}
    out["max_score_diff_vs_baseline"] = float(np.nanmax(np.abs(ours[:len(base_variants)] - base)))
    out["speedup"] = out["vip"]["clips_per_s"] / out["baseline"]["clips_per_s"]
    return out


def bench_redpo(model, configs: list[dict], steps: int, device: str, on_row=None) -> list[dict]:
    """One ReDPO step (vip.redpo.pair_loss: policy once on [winner; loser], the frozen teacher once
    for reference and SFT target) per configuration: {name, pairs, checkpointing, optimizer:
    adamw | zero<stage>}. The policy is model.unet itself (fp32 master weights, bf16 autocast; or
    DeepSpeed bf16, which casts it, so those configurations go last); the teacher is a bf16 copy
    run without gradient. The first configuration must not checkpoint nor compile: its step gives
    the model FLOPs per pair (recomputation is not useful work). `compile: True` (or a backend
    name) compiles policy and teacher regionally (compile_regions) for that configuration only."""
    cuda = torch.device(device).type == "cuda"
    peak_name, peak = peak_flops() if cuda else ("cpu (no peak)", None)
    if cuda:  # cuDNN's fused attention failed its backward at these batch sizes (torch 2.11, H100)
        torch.backends.cuda.enable_cudnn_sdp(False)
    teacher = copy.deepcopy(model.unet).to(torch.bfloat16 if cuda else torch.float32).requires_grad_(False).eval()
    rows, flops_per_pair, kinds_per_pair = [], None, None
    for c in configs:
        row, kinds = _redpo_one(model, teacher, c, steps, device, count=flops_per_pair is None and not c.get("compile"),
                                kinds_per_pair=kinds_per_pair)
        if kinds is not None and flops_per_pair is None:
            kinds_per_pair, flops_per_pair = kinds, sum(kinds.values())
        fl = flops_per_pair * c["pairs"] if flops_per_pair else None
        row.update(name=c["name"], pairs=c["pairs"], checkpointing=bool(c.get("checkpointing")),
                   compiled=bool(c.get("compile")),
                   optimizer=c["optimizer"], tflop_per_step=fl / 1e12 if fl else None, peak_assumed=peak_name,
                   mfu=mfu(fl, row["s_per_step"], peak) if fl and row["s_per_step"] else None)
        rows.append(row)
        if on_row is not None:
            on_row(row)
        if cuda:
            torch.cuda.empty_cache()
    return rows


def _redpo_one(model, teacher, c: dict, steps: int, device: str, count: bool,
               kinds_per_pair: dict | None) -> tuple[dict, dict | None]:
    """Everything of one configuration lives in this frame, so it is freed on return. Returns the
    row and, when `count`, the model FLOPs per pair by kernel kind."""
    from vip.redpo import pair_loss

    cuda = torch.device(device).type == "cuda"
    low = torch.bfloat16 if cuda else torch.float32
    policy = model.unet.train().requires_grad_(True)
    if c.get("checkpointing"):
        checkpoint_every_block(policy)
    short = []
    if c.get("short_attention"):
        from vip.models.short_attention import use_short_attention
        short = use_short_attention(policy) + use_short_attention(teacher)
    if c.get("compile"):
        backend = c["compile"] if isinstance(c["compile"], str) else "inductor"
        compile_regions(policy, backend)
        compile_regions(teacher, backend)
    b = c["pairs"]
    g = torch.Generator().manual_seed(0)
    shp = (b, *model.latent_shape)
    x_w, x_l = torch.randn(shp, generator=g).to(device), torch.randn(shp, generator=g).to(device)
    text = model.encode_prompts(PROMPTS[:1]).float().expand(2 * b, -1, -1)
    sched = model.scheduler

    def frozen(x, t):
        return model.predict(x.to(low), t, text[: x.shape[0]], denoiser=teacher).float()

    engine = None
    if c["optimizer"].startswith("zero"):
        import deepspeed

        from vip.config import TrainConfig
        from vip.train import dist
        from vip.train.redpo_trainer import deepspeed_config
        tc = TrainConfig()
        tc.batch_size = b
        ds = deepspeed_config(tc.deepspeed, tc, 1, device)
        ds["zero_optimization"] = {"stage": int(c["optimizer"][4:])}
        if cuda:
            policy.to(low)  # DeepSpeed bf16: bf16 weights, fp32 master copy in the optimizer
        if not torch.distributed.is_initialized():
            dist.init(device)
        engine, optim, _, _ = deepspeed.initialize(model=policy, config=ds, optimizer=torch.optim.AdamW(
            policy.parameters(), lr=1e-6, fused=cuda))

        def pol(x, t):
            return model.predict(x.to(low), t, text[: x.shape[0]], denoiser=engine).float()
    else:
        optim = torch.optim.AdamW(policy.parameters(), lr=1e-6, fused=cuda)

        def pol(x, t):
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
                return model.predict(x, t, text[: x.shape[0]], denoiser=policy).float()

    losses = []

    def step():
        noise = torch.randn(shp, generator=g).to(device)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), generator=g).to(device)
        out = pair_loss(pol, frozen, sched, x_w, x_l, noise, t, beta=5000.0, w_sft=1.0)
        losses.append(out.metrics["loss"])
        if engine is not None:
            engine.backward(out.loss)
            engine.step()
        else:
            optim.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            optim.step()

    reset_peak(device)
    fpp, first = None, None
    try:
        sync(device)
        t0 = time.perf_counter()
        step()  # warm-up (compiles, for a compiled configuration); its loss is of the initial weights
        sync(device)
        first = time.perf_counter() - t0
        if count:
            from vip.bench.breakdown import flops_by_kind
            fpp = {k: v / b for k, v in flops_by_kind(step).items()}
        s = median_time(step, steps, 1, device)
        row = {"pairs_per_s": b / s, "s_per_step": s, "peak_gb": peak_mem_gb(device)}
        if c.get("profile"):  # model FLOPs by kind (recomputation is not counted), never counted on compiled code
            from vip.bench.breakdown import breakdown
            per_pair = fpp or kinds_per_pair
            row["breakdown"] = breakdown(step, cuda, peak_flops()[1] if cuda else None,
                                         flops=None if per_pair is None else {k: v * b for k, v in per_pair.items()})
        if c.get("compile"):  # the first step less a steady one: compilation (and autotuning) time
            row["compile_s"] = first - s
    except torch.OutOfMemoryError:
        row = {"pairs_per_s": None, "s_per_step": None, "peak_gb": "OOM"}
    except Exception as e:  # a kernel or the compiler refusing a shape must not cost the other configurations
        row = {"pairs_per_s": None, "s_per_step": None, "peak_gb": None,
               "error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"}
    row["first_step_s"] = first
    row["first_loss"] = losses[0] if losses else None
    optim.zero_grad(set_to_none=True)
    if c.get("compile"):
        uncompile_regions(policy)
        uncompile_regions(teacher)
    if short:
        from vip.models.short_attention import restore
        restore(short)
    undo(policy)
    policy.eval().requires_grad_(False)
    return row, fpp
