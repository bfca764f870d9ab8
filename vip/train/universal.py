"""Resume a DeepSpeed checkpoint on another number of ranks, through a universal checkpoint.

A ZeRO checkpoint is sharded by data-parallel rank: W ranks write W optimizer partitions, and
DeepSpeed loads them only on W ranks. DeepSpeed's universal format stores every parameter's fp32
weights and Adam moments whole (`zero/<name>/{fp32,exp_avg,exp_avg_sq,step}.pt`), so any number
of ranks can cut its own partitions from it. Rank 0 converts a tag once, into a temporary folder
renamed into place; the engine then loads it with `"checkpoint": {"load_universal": true}`.

What carries over is the optimizer step and the global batch (pairs per optimizer step); how the
new ranks split that batch into micro-batches and accumulation is `split_global_batch`.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch.distributed as tdist

from vip.config import ConfigError

UNIVERSAL = "universal"  # ckpt/universal/<tag>: the converted copy of ckpt/<tag>


@dataclass(frozen=True)
class Split:
    """How `world_size` ranks take one optimizer step's global batch."""

    micro_batch: int  # pairs per rank per micro-step
    grad_accum: int  # micro-steps per optimizer step
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size


def split_global_batch(global_batch: int, world_size: int, max_micro_batch: int) -> Split | None:
    """The split of `global_batch` over `world_size` ranks with the largest micro-batch that is at most
    `max_micro_batch` (train.batch_size, the memory bound); None if the ranks cannot share it evenly."""
    if global_batch % world_size:
        return None
    share = global_batch // world_size
    micro = max(d for d in range(1, min(share, max_micro_batch) + 1) if share % d == 0)
    return Split(micro, share // micro, world_size)


def saved_world_size(tag_dir: Path, meta: dict) -> int:
    """The ranks that wrote a tag: recorded in vip_checkpoint.json, else (older tags) one ZeRO
    optimizer file per data-parallel rank."""
    if "world_size" in meta:
        return int(meta["world_size"])
    return len(list(tag_dir.glob("*optim_states.pt"))) or 1


def ensure_universal(ckpt: Path, tag: str, rank: int, saved_world: int, world: int) -> Path:
    """Convert ckpt/<tag> to a universal checkpoint once (rank 0; the others wait) and return the
    folder to pass to engine.load_checkpoint. A conversion that fails is one line on every rank."""
    out = ckpt / UNIVERSAL / tag
    error = ""
    if rank == 0 and not out.is_dir():
        tmp = out.with_name(f"{tag}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                _convert(ckpt / tag, tmp)
            tmp.rename(out)  # atomic: a universal folder either is whole or is not there
        except Exception as e:  # DeepSpeed raises asserts, ValueErrors, NotImplementedErrors...
            shutil.rmtree(tmp, ignore_errors=True)
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else log.getvalue()[-300:]}"
    box = [error]
    if tdist.is_initialized():
        tdist.broadcast_object_list(box, src=0)  # also the barrier: nobody loads before rank 0 is done
    if box[0]:
        raise ConfigError(f"checkpoint {ckpt / tag} was written by {saved_world} rank(s) and cannot be converted to "
                          f"a DeepSpeed universal checkpoint for {world} ({box[0]}); resume on {saved_world} rank(s)")
    return out.parent


def prune_universal(ckpt: Path) -> None:
    """Drop converted copies whose source tag is gone (pruned by keep_checkpoints), and stale temps."""
    for u in (ckpt / UNIVERSAL).glob("step*"):
        if u.name.endswith(".tmp") or not (ckpt / u.name).is_dir():
            shutil.rmtree(u, ignore_errors=True)


def _convert(src: Path, dst: Path) -> None:
    from deepspeed.checkpoint import ds_to_universal

    # The module's own command line, as a namespace: one worker (no process pool inside a training
    # rank), strict checks, and the version record our engine does not write (we use no tensor or
    # pipeline parallelism, so there is nothing else for it to describe).
    args = argparse.Namespace(input_folder=str(src), output_folder=str(dst), num_extract_workers=1,
                              num_merge_workers=1, keep_temp_folder=False, strict=True, inject_missing_state=True)
    ds_to_universal.main(args)
