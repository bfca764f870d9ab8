"""ReDPO training of a stage's pruned student on its preference pairs, with DeepSpeed.

Every rank runs this. The student's denoiser trains (ZeRO-2 by default); the full teacher M0
runs forward only, without gradient, and its prediction on the noised winner serves both
the DPO reference and the SFT target. Checkpoints hold model, optimizer and scheduler
state; the data order and the noise of step k are functions of (seed, samples seen), so a run
resumed from step k continues bit for bit as if it had never stopped.

A checkpoint written by W ranks resumes on W' != W ranks through a DeepSpeed universal checkpoint
(vip/train/universal.py): the global batch (pairs per optimizer step) and the step counter carry
over, the new ranks split the batch into micro-batches and accumulation, and since the sample
order and each sample's noise do not depend on the split, only float summation order differs.

A signal only sets a flag. At the next step boundary the ranks agree (an all-reduce), all save a
checkpoint, and the process exits with a code that says what the signal asked for (docs/decisions.md):
  - SIGUSR1 / SIGUSR2 (what `--signal=USR1@<delay>` makes Slurm send before the time limit or on
    preemption): EXIT_REQUEUE (75), and the job requeues itself;
  - SIGTERM (a user's plain `scancel`, or the kill at the end of a job): EXIT_STOPPED (143), which
    nothing requeues; running the driver again resumes from the checkpoint.
When both arrive, the stop wins.
"""
from __future__ import annotations

import copy
import json
import math
import shutil
import signal
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as tdist
from tqdm import tqdm

from vip.config import Config, ConfigError, TrainConfig
from vip.train.checkpointing import set_checkpointing
from vip.train.regions import compile_regions
from vip.models.short_attention import use_short_attention
from vip.redpo import pair_loss
from vip.steps.context import StageContext
from vip.steps.pairs import pairs_path, student_sha256
from vip.store import RunDir, atomic_write_json
from vip.train import dist
from vip.train.data import Order, load_pairs
from vip.train.metrics import MetricsLog
from vip.train.universal import Split, ensure_universal, prune_universal, saved_world_size, split_global_batch

EXIT_REQUEUE = 75  # sysexits EX_TEMPFAIL: stopped on purpose, checkpoint saved, run again to resume
EXIT_STOPPED = 143  # 128 + SIGTERM: stopped (scancel), checkpoint saved; never requeued, the driver resumes it
CHECKPOINT_META = "vip_checkpoint.json"


def train_dir(run: RunDir, stage: int) -> Path:
    return run.stage(stage) / "train"


def final_path(run: RunDir, stage: int) -> Path:
    return train_dir(run, stage) / "final"


def is_done(run: RunDir, stage: int, cfg: Config) -> bool:
    p = train_dir(run, stage) / "done.json"
    return p.is_file() and json.loads(p.read_text()).get("config_sha256") == cfg.hash() \
        and (final_path(run, stage) / "removed_units.json").is_file()


class StopFlag:
    """Set by a signal; read at step boundaries only (a handler must not do the work itself).
    USR1 / USR2 ask for a requeue (preemption, time limit), TERM for a stop (scancel): the stop wins."""

    REQUEUE = (signal.SIGUSR1, signal.SIGUSR2)
    STOP = (signal.SIGTERM,)
    SIGNALS = REQUEUE + STOP
    NONE, ASK_REQUEUE, ASK_STOP = 0, 1, 2

    def __init__(self):
        self.signum = 0
        self.ask = self.NONE
        for s in self.SIGNALS:
            signal.signal(s, self._set)

    def _set(self, signum, frame):
        self.signum = signum
        self.ask = max(self.ask, self.ASK_STOP if signum in self.STOP else self.ASK_REQUEUE)

    def agreed(self, device) -> int:
        """What every rank does at this step boundary: the strongest ask of any rank (NONE, ASK_REQUEUE
        or ASK_STOP), the same on all of them."""
        flag = torch.tensor([float(self.ask)], device=device)
        if tdist.is_initialized():
            tdist.all_reduce(flag, op=tdist.ReduceOp.MAX)
        return int(flag.item())


PROJECT = Path(__file__).resolve().parents[2]  # the checkout holding jobs/ and configs/


def deepspeed_path(path: str) -> Path:
    """train.deepspeed as a file: a relative path is read from the project root (the default
    configs/deepspeed/zero2.json is the project's), whatever the current directory (docs/decisions.md)."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else PROJECT / p


def read_deepspeed(path: str) -> dict:
    """The DeepSpeed JSON of train.deepspeed as written, or a one-line error naming the key and file."""
    p = deepspeed_path(path)
    where = "" if Path(path).expanduser().is_absolute() else \
        f" (a relative path is read from the project root {PROJECT})"
    if not p.is_file():
        raise ConfigError(f"config key 'train.deepspeed': file {path!r} does not exist{where}; see configs/deepspeed/")
    try:
        ds = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config key 'train.deepspeed': {str(p)!r} is not valid JSON: {e}") from None
    if not isinstance(ds, dict):
        raise ConfigError(f"config key 'train.deepspeed': {str(p)!r} must hold a JSON object")
    return ds


def deepspeed_config(path: str, tc: TrainConfig, world_size: int, device: str, batch_size: int | None = None,
                     grad_accum: int | None = None, load_universal: bool = False) -> dict:
    """The DeepSpeed JSON with the batch, clipping and precision filled from train.*; a value
    in the file that contradicts them (or the world size) is a one-line error. `batch_size` and
    `grad_accum` override train.* (few pairs; a resume on another world size): a value in the file
    that agrees with train.* is then replaced by the launch's, so a file the preflight accepted (it
    checks against train.*) is never refused at launch."""
    ds = read_deepspeed(path)
    micro, accum = batch_size or tc.batch_size, grad_accum or tc.grad_accum
    nominal = {"train_micro_batch_size_per_gpu": tc.batch_size, "gradient_accumulation_steps": tc.grad_accum,
               "train_batch_size": tc.batch_size * tc.grad_accum * world_size, "gradient_clipping": tc.grad_clip}
    want = {"train_micro_batch_size_per_gpu": micro, "gradient_accumulation_steps": accum,
            "train_batch_size": micro * accum * world_size, "gradient_clipping": tc.grad_clip}
    for key, value in want.items():
        if key in ds and ds[key] != "auto" and ds[key] not in (value, nominal[key]):
            launch = "" if value == nominal[key] else \
                f" (this launch, with few pairs or another world size, uses {value})"
            raise ConfigError(f"{path}: {key} is {ds[key]} but train.batch_size={tc.batch_size}, train.grad_accum="
                              f"{tc.grad_accum} and {world_size} ranks give {nominal[key]}{launch}; set it to \"auto\" "
                              "or remove it")
        ds[key] = value
    # bf16 on GPU (fp32 master weights in the optimizer), fp32 on CPU. bf16 has fp32's range, so the
    # per-tensor overflow check (thousands of kernel launches per step, -16% step time measured) is off.
    ds["bf16"] = {"enabled": True, "check_grad_overflow": False} if device.startswith("cuda") else {"enabled": False}
    ds.setdefault("zero_allow_untested_optimizer", True)  # our AdamW is torch's, wrapped by ZeRO
    ds.setdefault("steps_per_print", 10**9)
    if load_universal:
        ds.setdefault("checkpoint", {})["load_universal"] = True
    return ds


def lr_factor(step: int, warmup: int, total: int, lr: float, min_lr: float) -> float:
    """Linear warm-up to lr, then cosine to min_lr at the last step (as a multiple of lr)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return (min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))) / lr


def sample_noise(seed: int, first: int, count: int, shape: tuple, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise and timesteps of the `count` samples from global sample position `first` on (samples seen
    since step 0): no RNG state to save, and the same for a sample whichever rank or micro-step takes it."""
    noise, t = [], []
    for p in range(first, first + count):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, p]).generate_state(1)[0]))
        noise.append(torch.randn(shape, generator=g))
        t.append(torch.randint(0, T, (1,), generator=g))
    return torch.stack(noise), torch.cat(t)


def dropped_prompts(seed: int, first: int, count: int, share: float) -> torch.Tensor:
    """Which of the `count` samples from global position `first` on train on the empty prompt (as the
    public Diffusion-DPO trainers drop a share of captions): keyed to the position like the noise, on
    its own stream, so the noise and timesteps are the same whatever the share."""
    if share <= 0:
        return torch.zeros(count, dtype=torch.bool)
    draws = [np.random.default_rng(np.random.SeedSequence([seed, p, 1])).random() for p in range(first, first + count)]
    return torch.tensor(draws) < share


def _checkpoint_tags(ckpt: Path) -> list[Path]:
    return sorted((p for p in ckpt.glob("step*") if (p / CHECKPOINT_META).is_file()), key=lambda p: p.name)


def save_checkpoint(engine, ckpt: Path, step: int, meta: dict, keep: int, rank: int) -> None:
    """All ranks write their part; rank 0 marks the tag complete and prunes old ones. `meta` holds the
    world size and the batch split, so a resume knows whether it must go through a universal checkpoint."""
    tag = f"step{step:07d}"
    engine.save_checkpoint(str(ckpt), tag=tag, client_state={"step": step})
    tdist.barrier()
    if rank == 0:
        atomic_write_json(ckpt / tag / CHECKPOINT_META,
                          {**meta, "step": step, "samples_seen": step * meta["global_batch"]})
        for old in _checkpoint_tags(ckpt)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        prune_universal(ckpt)
    tdist.barrier()


def latest_checkpoint(ckpt: Path, meta: dict) -> tuple[str, int, dict] | None:
    """The newest complete tag, its step and its vip_checkpoint.json, after checking it was made for
    this student and these pairs."""
    tags = _checkpoint_tags(ckpt)
    if not tags:
        return None
    saved = json.loads((tags[-1] / CHECKPOINT_META).read_text())
    for key in ("student_sha256", "pairs_sha256", "config_sha256"):
        if saved.get(key) != meta[key]:
            raise ConfigError(f"checkpoint {tags[-1]} was made for another {key.split('_')[0]} "
                              f"({str(saved.get(key))[:12]} != {meta[key][:12]}); delete {ckpt} to start over")
    return tags[-1].name, int(saved["step"]), saved


def train(run: RunDir, cfg: Config, stage: int, progress: bool = True) -> int:
    """Train, checkpoint and save the final student; returns 0, or after a signal (and a checkpoint)
    EXIT_REQUEUE (USR1 / USR2: preemption, time limit) or EXIT_STOPPED (TERM: scancel)."""
    import deepspeed

    from vip.store import sha256_file

    tc, device = cfg.train, cfg.model.device
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*")  # inside DeepSpeed, not ours
    stop = StopFlag()
    env = dist.init(device)
    rank, world = env.rank, env.world_size
    torch.manual_seed(tc.seed)
    ctx = StageContext(run, cfg, stage)
    out = train_dir(run, stage)
    ckpt = out / "ckpt"

    student_sha = student_sha256(ctx)
    pairs = load_pairs(pairs_path(ctx), cfg.hash(), student_sha, allow_empty=tc.min_pairs > 0)
    meta = {"student_sha256": student_sha, "pairs_sha256": sha256_file(pairs_path(ctx)), "config_sha256": cfg.hash()}
    if len(pairs) < tc.min_pairs:
        return _skip(ctx, rank, meta, len(pairs), f"{len(pairs)} pairs < train.min_pairs={tc.min_pairs}")
    found = latest_checkpoint(ckpt, meta)
    saved_world = saved_world_size(ckpt / found[0], found[2]) if found else world
    split, load_universal = _batch_split(tc, len(pairs), world, ckpt, found, saved_world)
    batch = split.micro_batch
    order = Order(len(pairs), batch, world, tc.seed)
    order.check()
    if batch < tc.batch_size and rank == 0 and not found:
        print(f"vip: only {len(pairs)} pairs for {world} rank(s): batch {batch} per rank instead of "
              f"train.batch_size={tc.batch_size}", flush=True)
    global_batch = split.global_batch  # pairs per optimizer step, whatever the world size
    steps_per_epoch = len(pairs) // global_batch
    if steps_per_epoch == 0:
        raise ConfigError(f"{len(pairs)} pairs give {order.micro_steps_per_epoch} micro-steps per epoch, fewer than "
                          f"train.grad_accum={tc.grad_accum}; lower train.grad_accum or train.batch_size")
    total = tc.epochs * steps_per_epoch
    # checked before the models load: the batch keys against train.* and this launch's split
    ds_config = deepspeed_config(tc.deepspeed, tc, world, device, batch_size=batch, grad_accum=split.grad_accum,
                                 load_universal=load_universal)

    student, teacher = ctx.student, ctx.teacher
    dev = torch.device(device if not device.startswith("cuda") else f"cuda:{env.local_rank}")
    frozen_dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    teacher.trainable_module().to(dev).eval().requires_grad_(False)
    if frozen_dtype != torch.float32:
        teacher.trainable_module().to(frozen_dtype)
    reference = None
    if tc.reference == "student":  # a frozen copy of the student as it was before training
        reference = copy.deepcopy(student.trainable_module()).to(dev).eval().requires_grad_(False)
        if frozen_dtype != torch.float32:
            reference.to(frozen_dtype)
    prompts = sorted(set(pairs.prompts))
    row = {p: i for i, p in enumerate(prompts)}
    # the last row is the empty prompt, for the pairs that train the unconditional branch
    text_s = student.encode_prompts(prompts + [""]).to(dev, frozen_dtype)  # the engine's dtype (bf16 on GPU)
    text_t = teacher.encode_prompts(prompts + [""]).to(dev, frozen_dtype)
    pair_text = torch.tensor([row[p] for p in pairs.prompts])
    empty = len(prompts)

    # buffers too (the motion modules' positional tables): DeepSpeed's bf16 mode casts only parameters
    policy = student.trainable_module().to(dev).train().requires_grad_(True)
    if frozen_dtype != torch.float32:  # (diffusers warns on a .to(float32) that changes nothing)
        policy.to(frozen_dtype)
    set_checkpointing(policy, tc.checkpointing)
    if tc.compile:  # each repeated block compiled in place: state dicts and checkpoints are unchanged
        for module in (policy, teacher.trainable_module(), reference):
            if module is not None:
                use_short_attention(module)  # motion modules' 16-frame attention as bmms: compiled, it pays
                compile_regions(module, tc.compile_backend)
    optim = torch.optim.AdamW(policy.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_factor(s, tc.warmup_steps, total, tc.lr, tc.min_lr))
    load_dir = ensure_universal(ckpt, found[0], rank, saved_world, world) if load_universal else ckpt
    engine, optim, _, sched = deepspeed.initialize(
        model=policy, optimizer=optim, lr_scheduler=sched, config=ds_config)
    meta = {**meta, "world_size": world, "micro_batch": batch, "grad_accum": split.grad_accum,
            "global_batch": global_batch}

    start = 0
    if found:
        tag, start, _ = found
        engine.load_checkpoint(str(load_dir), tag=tag)
        if load_universal and rank == 0:
            print(f"vip: resumed step {start} ({start * global_batch} pairs seen), written by "
                  f"{saved_world} rank(s), on {world} through a universal checkpoint: "
                  f"{batch} per rank x {split.grad_accum} accumulation x {world} = {global_batch} per step", flush=True)
    log = MetricsLog(out, start) if rank == 0 else None
    scheduler = student.scheduler
    T = scheduler.config.num_train_timesteps
    bar = tqdm(total=total, initial=start, desc=f"stage {stage} ReDPO", disable=not progress or rank != 0,
               dynamic_ncols=True)
    code, step = 0, start
    t0 = time.perf_counter()
    while step < total:
        sums: dict[str, float] = {}
        epoch, in_epoch = divmod(step, steps_per_epoch)
        for a in range(split.grad_accum):
            offset = a * batch * world + rank * batch  # this micro-batch's place in the step's global batch
            idx = order.samples(epoch, in_epoch * global_batch + offset, in_epoch * global_batch + offset + batch)
            x_w, x_l = pairs.latents_w[idx].to(dev), pairs.latents_l[idx].to(dev)
            noise, t = sample_noise(tc.seed, step * global_batch + offset, len(idx), tuple(x_w.shape[1:]), T)
            noise, t = noise.to(dev), t.to(dev)
            rows = torch.where(dropped_prompts(tc.seed, step * global_batch + offset, len(idx), tc.prompt_dropout),
                               empty, pair_text[idx])
            ts, tt = text_s[rows], text_t[rows]

            def rep(text, x):  # the stacked [winner; loser] batch needs the text twice
                return text.repeat(x.shape[0] // len(idx), 1, 1)

            res = pair_loss(
                policy=lambda x, t_: student.predict(x.to(frozen_dtype), t_, rep(ts, x), denoiser=engine).float(),
                teacher=lambda x, t_: teacher.predict(x.to(frozen_dtype), t_, rep(tt, x)).float(),
                reference=None if reference is None else
                (lambda x, t_: teacher.predict(x.to(frozen_dtype), t_, rep(tt, x), denoiser=reference).float()),
                scheduler=scheduler, x_w=x_w, x_l=x_l, noise=noise, t=t,
                beta=tc.beta, w_sft=tc.w_sft, sft_target=tc.sft_target, kind=tc.loss)
            engine.backward(res.loss)
            engine.step()
            for k, v in res.metrics.items():
                sums[k] = sums.get(k, 0.0) + v / split.grad_accum
        step += 1
        values = torch.tensor(list(sums.values()), dtype=torch.float64, device=dev)
        tdist.all_reduce(values)  # the logged curve is the mean over ranks
        record = dict(zip(sums, (values / world).tolist()))
        elapsed = time.perf_counter() - t0
        record.update(lr=sched.get_last_lr()[0], grad_norm=float(engine.get_global_grad_norm() or 0.0),
                      epoch=(step - 1) // steps_per_epoch, samples=step * global_batch,
                      samples_per_s=(step - start) * global_batch / max(elapsed, 1e-9))
        if log:
            log.log(step, record)
        bar.update(1)
        bar.set_postfix(loss=f"{record['loss']:.4g}", acc=f"{record['rewards/accuracies']:.2f}")
        ask = stop.agreed(dev)
        if ask:
            save_checkpoint(engine, ckpt, step, meta, tc.keep_checkpoints, rank)
            code = EXIT_STOPPED if ask == StopFlag.ASK_STOP else EXIT_REQUEUE
            if rank == 0:
                print(f"vip: stage {stage} training " + (
                    f"stopped (SIGTERM) at step {step} of {total}, checkpoint saved; not requeued: run the driver "
                    "again to resume" if code == EXIT_STOPPED else
                    f"interrupted (preemption or time limit) at step {step} of {total}, checkpoint saved; exit "
                    f"{EXIT_REQUEUE} to be requeued"), flush=True)
            break
        if tc.checkpoint_every and step % tc.checkpoint_every == 0 and step < total:
            save_checkpoint(engine, ckpt, step, meta, tc.keep_checkpoints, rank)
    bar.close()
    if code == 0:
        save_checkpoint(engine, ckpt, step, meta, tc.keep_checkpoints, rank)
        _save_final(engine, student, run, stage, rank)
        if rank == 0:
            atomic_write_json(out / "done.json", {"steps": total, "pairs": len(pairs), "samples": total * global_batch,
                                                  "config_sha256": cfg.hash(), **meta})
    if log:
        log.close()
    dist.shutdown()
    return code


def _batch_split(tc: TrainConfig, n_pairs: int, world: int, ckpt: Path, found, saved_world: int) -> tuple[Split, bool]:
    """The micro-batch and accumulation for this run, and whether its checkpoint must be loaded as a
    universal one. A fresh run: train.batch_size per rank (fewer when pairs are few: a stage that kept
    few still trains on all of them), train.grad_accum. A resumed one keeps the checkpoint's global
    batch, split over the current ranks with micro-batches no larger than the checkpoint's."""
    fresh = Split(max(1, min(tc.batch_size, n_pairs // world)), tc.grad_accum, world)  # 0: Order.check says why
    if not found:
        return fresh, False
    tag, _, saved = found
    saved_micro = int(saved.get("micro_batch") or min(tc.batch_size, n_pairs // saved_world))  # older tags
    global_batch = int(saved.get("global_batch") or saved_micro * tc.grad_accum * saved_world)
    split = split_global_batch(global_batch, world, saved_micro)
    if split is None:
        raise ConfigError(f"checkpoint {ckpt / tag} was written by {saved_world} rank(s) with {global_batch} pairs per "
                          f"step, which {world} ranks cannot share evenly; resume on {saved_world} rank(s) (or on a "
                          f"number that divides {global_batch})")
    return split, saved_world != world


def _skip(ctx: StageContext, rank: int, meta: dict, n_pairs: int, reason: str) -> int:
    """Too few pairs to learn from without overfitting: the pruned student goes on as it is."""
    if rank == 0:
        final = final_path(ctx.run, ctx.stage)
        tmp = final.with_name("final.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(ctx.pruned_path(), tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
        atomic_write_json(train_dir(ctx.run, ctx.stage) / "done.json",
                          {"steps": 0, "pairs": n_pairs, "world_size": 0, "skipped": reason,
                           "config_sha256": ctx.cfg.hash(), **meta})
        print(f"vip: stage {ctx.stage} training skipped: {reason}; the pruned student goes on untrained", flush=True)
    dist.shutdown()
    return 0


def _save_final(engine, student, run: RunDir, stage: int, rank: int) -> None:
    """The trained student in the backbone's layout (with removed_units.json), written atomically."""
    if engine.zero_optimization_stage() == 3:  # parameters are partitioned: gather them first
        state = engine._zero3_consolidated_16bit_state_dict()
        if rank == 0:
            student.trainable_module().load_state_dict({k: v.float() for k, v in state.items()})
    elif engine.bfloat16_enabled():  # save the fp32 master weights, not their bf16 copies
        from deepspeed.utils import safe_get_full_fp32_param

        master = {n: safe_get_full_fp32_param(p) for n, p in engine.module.named_parameters()}
        if rank == 0:
            module = student.trainable_module().float()
            with torch.no_grad():
                for n, p in module.named_parameters():
                    p.copy_(master[n].to(p.device))
    if rank == 0:
        final = final_path(run, stage)
        tmp = final.with_name("final.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        student.trainable_module().to("cpu")
        student.save(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.replace(final)
    tdist.barrier()
