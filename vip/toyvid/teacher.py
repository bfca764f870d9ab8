"""Training the toyvid teacher from ground-truth clips (run once; weights are committed).

v-prediction with min-SNR weighting, AdamW with warm-up and cosine decay, EMA weights,
text encoder trained jointly and frozen afterwards, 10% empty prompts so classifier-free
guidance is available. Resumable: a checkpoint every few minutes.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vip.models.motion_unet import MotionUNetModel
from vip.models.toyvid import build_untrained
from vip.toyvid import world


@dataclass
class TeacherConfig:
    steps: int = 2400
    batch: int = 16
    lr: float = 1e-3
    min_lr: float = 5e-5
    warmup: int = 200
    ema: float = 0.999
    min_snr_gamma: float = 5.0
    text_dropout: float = 0.1
    seed: int = 0
    checkpoint_minutes: float = 5.0
    max_minutes: float = 1e9  # when set, the cosine decay also finishes by this deadline
    device: str = "cpu"
    init: str = ""  # start from a saved toyvid model (weights only: a fresh optimizer and schedule)
    workers: int = 0  # >0: render clips in DataLoader workers (for a GPU); 0: exact resume of the data stream


def batch_of_clips(rng: np.random.Generator, n: int) -> tuple[list[str], torch.Tensor]:
    prompts = world.all_prompts()
    chosen = [prompts[i] for i in rng.integers(0, len(prompts), n)]
    clips = torch.stack([world.render(p, int(s)) for p, s in zip(chosen, rng.integers(0, 2**31, n))])
    return [p.text for p in chosen], clips


class ClipStream(torch.utils.data.IterableDataset):
    """Endless batches rendered in worker processes, each with its own seed."""

    def __init__(self, seed: int, batch: int):
        self.seed, self.batch = seed, batch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, info.id if info else 0, int(time.time())])
        while True:
            yield batch_of_clips(rng, self.batch)


def lr_at(step: int, cfg: TeacherConfig, elapsed_minutes: float = 0.0) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, max((step - cfg.warmup) / max(1, cfg.steps - cfg.warmup), elapsed_minutes / cfg.max_minutes))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def train_teacher(cfg: TeacherConfig, workdir: Path, log=print) -> MotionUNetModel:
    workdir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model = build_untrained()
    ema = build_untrained()
    if cfg.init:
        start_from = MotionUNetModel.load(Path(cfg.init))
        for m in (model, ema):
            m.unet.load_state_dict(start_from.unet.state_dict())
            m.text_encoder.load_state_dict(start_from.text_encoder.state_dict())
    dev = torch.device(cfg.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    for m in (model.unet, model.text_encoder, ema.unet, ema.text_encoder):
        m.to(dev)
    unet, text = model.unet.train(), model.text_encoder.train()
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    sched = model.scheduler
    alphas = sched.alphas_cumprod.to(dev)
    ckpt = workdir / "checkpoint.pt"
    step, rng, elapsed_before = 0, np.random.default_rng(cfg.seed), 0.0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False, map_location=dev)
        unet.load_state_dict(state["unet"]), text.load_state_dict(state["text"])
        ema.unet.load_state_dict(state["ema_unet"]), ema.text_encoder.load_state_dict(state["ema_text"])
        opt.load_state_dict(state["opt"]), torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = state["np_rng"]
        step, elapsed_before = state["step"], state.get("elapsed", 0.0)
        log(f"resumed at step {step}")
    else:
        ema.unet.load_state_dict(unet.state_dict()), ema.text_encoder.load_state_dict(text.state_dict())
    ema_params = list(ema.unet.parameters()) + list(ema.text_encoder.parameters())

    def save_checkpoint():
        tmp = ckpt.with_suffix(".tmp")
        torch.save({"unet": unet.state_dict(), "text": text.state_dict(), "ema_unet": ema.unet.state_dict(),
                    "ema_text": ema.text_encoder.state_dict(), "opt": opt.state_dict(), "step": step,
                    "torch_rng": torch.get_rng_state(), "np_rng": rng.bit_generator.state,
                    "elapsed": elapsed_before + time.time() - start}, tmp)
        tmp.replace(ckpt)

    metrics = (workdir / "metrics.jsonl").open("a")
    start = last_ckpt = time.time()
    bar = tqdm(total=cfg.steps, initial=step, desc="teacher", dynamic_ncols=True)
    stream = None
    if cfg.workers:
        stream = iter(torch.utils.data.DataLoader(ClipStream(cfg.seed + step, cfg.batch), batch_size=None,
                                                  num_workers=cfg.workers, prefetch_factor=4))
    elapsed = lambda: elapsed_before + time.time() - start  # noqa: E731
    while step < cfg.steps and elapsed() < cfg.max_minutes * 60:
        prompts, clips = next(stream) if stream is not None else batch_of_clips(rng, cfg.batch)
        prompts = ["" if rng.random() < cfg.text_dropout else p for p in prompts]
        x0 = model.codec.encode(clips.to(dev))
        noise = torch.randn_like(x0)
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch,)).to(dev)
        a = alphas[t].view(-1, 1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v
        ids = model.tokenizer(prompts, padding="max_length", max_length=model.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt").input_ids
        cond = text(ids.to(dev)).last_hidden_state
        pred = model.predict(xt, t, cond)
        snr = a.flatten() / (1 - a.flatten())
        weight = torch.clamp(snr, max=cfg.min_snr_gamma) / (snr + 1)  # min-SNR for v-prediction
        loss = (weight * (pred - target).pow(2).mean(dim=(1, 2, 3, 4))).mean()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, elapsed() / 60)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        step += 1
        metrics.write(json.dumps({"step": step, "loss": loss.item(), "grad_norm": gnorm.item(),
                                  "lr": opt.param_groups[0]["lr"], "time": elapsed()}) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if time.time() - last_ckpt > cfg.checkpoint_minutes * 60:
            metrics.flush()
            save_checkpoint()
            last_ckpt = time.time()
    bar.close()
    metrics.close()
    save_checkpoint()
    (workdir / "teacher_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    ema.unet.to("cpu").eval(), ema.text_encoder.to("cpu").eval()
    return ema
