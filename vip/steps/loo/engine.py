"""Leave-one-out generation with every variant in shared batches.

One model, gated units (vip.models.gates): a batch holds (variant, prompt) jobs of any
variants, its CFG halves run as one forward, the text of each prompt is encoded once for all
variants, and the denoiser may be cast (bf16), laid out channels-last and compiled once.
Works through the attributes of a DiffusionVideoModel (denoiser, text_encoder, encode_prompts,
initial_noise, predict, scheduler, decode, meta): toyvid, AnimateDiff and Wan.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from vip.models.diffusion import uses_guidance
from vip.models.gates import UnitGates
from vip.rewards.base import as_matrix

FULL = "<full>"


@dataclass
class FastLooOptions:
    batch_clips: int = 16  # (variant, prompt) jobs per denoiser batch; CFG doubles the U-Net batch
    dtype: str = "float32"  # denoiser and text encoder dtype while sampling: float32 | bfloat16 | float16
    channels_last: bool = False
    compile: bool = False  # torch.compile the gated U-Net once; the last batch is padded to keep one shape
    # motion modules' 16-frame attention as two bmms (vip/models/short_attention.py): 6% off a compiled
    # forward on an H100, nothing eager (docs/benchmarks.md)
    short_attention: bool = False
    # the VAE's dtype while decoding; float32 (VaeCodec's choice) unless asked: bf16 took 28% less time
    # (5.5 s against 7.6 s for 88 clips of 16x256x256 on an H100)
    decode_dtype: str = "float32"
    # score batch n on a worker thread (its own CUDA stream) while the denoiser generates batch n+1;
    # the scores are those of the serial order exactly (the same calls on the same clips)
    overlap_score: bool = False


def balanced_batch(jobs: int, most: int) -> int:
    """The smallest batch that needs no more batches than `most` does: 88 jobs at most 16 run as
    6 x 15 (2 slots padded when compiled) rather than 5 x 16 + 8 (8 padded, 9% of the work)."""
    if jobs <= 0:
        return most
    return -(-jobs // -(-jobs // most))


class FastLoo:
    def __init__(self, model, reward, opts: FastLooOptions = FastLooOptions(), units: list[str] | None = None):
        self.model, self.reward, self.opts = model, reward, opts
        self.units = list(units if units is not None else model.units())
        self.dtype = getattr(torch, opts.dtype)
        self.timings: dict[str, float] = {}
        self.gates = None
        self.denoiser = None
        self._lock = threading.Lock()

    # the gates live only while the engine is open: the model's tree is unchanged outside
    def __enter__(self):
        unet = self.model.denoiser
        self._restore = (next(unet.parameters()).dtype, next(self.model.text_encoder.parameters()).dtype)
        if self._restore[0] != self.dtype:  # casting to the same dtype makes diffusers warn
            unet.to(self.dtype)
        if self._restore[1] != self.dtype:
            self.model.text_encoder.to(self.dtype)
        if self.opts.channels_last:
            unet.to(memory_format=torch.channels_last)
        self._vae = getattr(getattr(self.model, "codec", None), "vae", None)
        if self._vae is not None and self.opts.decode_dtype != "float32":
            self._vae.to(getattr(torch, self.opts.decode_dtype))
        self._short = []
        if self.opts.short_attention:
            from vip.models.short_attention import use_short_attention
            self._short = use_short_attention(unet)
        self.gates = UnitGates(unet, self.units)
        if self.opts.compile:
            compiled = torch.compile(unet, dynamic=False)
            # a plain callable: predict() tests `denoiser or self.unet`, and a compiled module has no len()
            self.denoiser = lambda *a, **k: compiled(*a, **k)
        else:
            self.denoiser = unet
        return self

    def __exit__(self, *exc):
        self.gates.remove()
        if self._vae is not None and self.opts.decode_dtype != "float32":
            self._vae.float()
        if self._short:
            from vip.models.short_attention import restore
            restore(self._short)
        if self.opts.channels_last:
            self.model.denoiser.to(memory_format=torch.contiguous_format)
        if self._restore[0] != self.dtype:
            self.model.denoiser.to(self._restore[0])
        if self._restore[1] != self.dtype:
            self.model.text_encoder.to(self._restore[1])
        self.denoiser = None

    @contextmanager
    def _timed(self, key):
        cuda = self.model.device.type == "cuda"
        # kernels are asynchronous: time what ran, not what was queued; this thread's stream only,
        # so that timing the generator never waits for the scoring stream (overlap_score)
        if cuda:
            torch.cuda.current_stream().synchronize()
        t0 = time.perf_counter()
        yield
        if cuda:
            torch.cuda.current_stream().synchronize()
        with self._lock:
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    def _score(self, clips: torch.Tensor, prompts: list[str], stream) -> np.ndarray:
        with torch.cuda.stream(stream) if stream is not None else nullcontext(), self._timed("score"):
            return as_matrix(self.reward.score(clips, prompts))

    def sample(self, offs: list[list[str]], text: torch.Tensor, uncond: torch.Tensor | None, seeds: list[int],
               steps: int, guidance: float) -> torch.Tensor:
        """Final latents for a batch of jobs: job b has units offs[b] off, conditioning text[b]."""
        cfg = uses_guidance(guidance)
        self.gates.set(offs + offs if cfg else offs, self.model.device)  # both CFG halves of a job alike
        return self.model.denoise(text, uncond.expand(len(seeds), -1, -1) if cfg else None, seeds, steps, guidance,
                                  denoiser=self.denoiser)

    def run(self, variants: list[str], prompts: list[str], seeds: list[int], steps: int | None = None,
            guidance: float | None = None) -> np.ndarray:
        """Scores [variants, prompts, aspects]; variant FULL = nothing off, else that one unit off."""
        m = self.model
        steps = steps or m.meta.get("steps", 10)
        guidance = m.meta.get("guidance", 1.0) if guidance is None else guidance
        uniq = list(dict.fromkeys(prompts))
        with self._timed("text"):  # once per prompt for every variant
            emb = m.encode_prompts(uniq).to(self.dtype)
            uncond = m.negative_text(1).to(self.dtype) if uses_guidance(guidance) else None
        row = {p: i for i, p in enumerate(uniq)}
        jobs = [(vi, pi) for vi in range(len(variants)) for pi in range(len(prompts))]
        rows = []
        bs = balanced_batch(len(jobs), self.opts.batch_clips)
        pool = ThreadPoolExecutor(1, thread_name_prefix="loo-score") if self.opts.overlap_score else None
        stream = torch.cuda.Stream(m.device) if pool is not None and m.device.type == "cuda" else None
        pending = None  # the one batch being scored while the next is generated
        try:
            for lo in range(0, len(jobs), bs):
                clips, names = self._generate(jobs[lo:lo + bs], bs, variants, prompts, seeds, emb, row, uncond,
                                              steps, guidance)
                if pool is None:
                    rows.append(self._score(clips, names, None))
                    continue
                if pending is not None:  # at most one batch of clips waits: memory stays bounded
                    with self._timed("score_wait"):
                        rows.append(pending.result())
                pending = pool.submit(self._score, clips, names, stream)
            if pending is not None:
                with self._timed("score_wait"):
                    rows.append(pending.result())
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        self.gates.clear()
        scores = np.concatenate(rows)
        out = np.zeros((len(variants), len(prompts), scores.shape[1]), dtype=np.float32)
        for (vi, pi), s in zip(jobs, scores):
            out[vi, pi] = s
        return out

    def _generate(self, batch, bs, variants, prompts, seeds, emb, row, uncond, steps, guidance):
        """Decoded clips (on the CPU) of one batch of (variant, prompt) jobs, and their prompts."""
        m = self.model
        real = len(batch)
        if self.opts.compile:  # one shape for one graph
            batch = batch + [batch[-1]] * (bs - real)
        offs = [[] if variants[vi] == FULL else [variants[vi]] for vi, _ in batch]
        text = emb[[row[prompts[pi]] for _, pi in batch]]
        with self._timed("denoise"):
            lat = self.sample(offs, text, uncond, [seeds[pi] for _, pi in batch], steps, guidance)
        with self._timed("decode"):
            clips = m.decode(lat[:real])
        return clips, [prompts[pi] for _, pi in batch[:real]]
