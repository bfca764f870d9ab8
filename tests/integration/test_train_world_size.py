"""Checkpoint on one world size, resume on another (DeepSpeed universal checkpoints; CPU, gloo).

What is and is not bit-identical across world sizes: the global batch (pairs per optimizer step), the
sample order, each sample's noise and timestep, the step counter and the learning-rate schedule carry
over exactly, and the universal checkpoint restores the fp32 weights and the Adam moments exactly
(asserted with ==). The training that follows is not bit-identical to an uninterrupted run on the old
world size: the same gradient is summed in another order (an all-reduce of 2 ranks' micro-batches
instead of 2 accumulated micro-batches on one rank, and a gradient norm over other partitions), and
float addition is not associative. So the curves and weights after the resume are compared with a
tolerance (relative 1e-4), far tighter than any wrong resume (another step, other samples, fresh Adam
moments) could meet.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from helpers.train import ROOT, run_training, train_env
from vip import config as vip_config
from vip.steps.context import StageContext
from vip.steps.pairs import pairs_path, student_sha256
from vip.store import RunDir, sha256_file
from vip.train.metrics import read_metrics
from vip.train.redpo_trainer import final_path, train_dir
from vip.train.universal import split_global_batch

BIN = Path(sys.executable).parent
TORCHRUN = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]
CURVE = ["loss", "dpo", "sft", "lr", "rewards/accuracies"]


def _ok(r):
    assert r.returncode == 0, r.stderr[-3000:]


def _cut_at(ref: RunDir, dst: Path, step: int) -> RunDir:
    """A copy of a finished run as it was when it saved checkpoint `step`: later tags, the final
    student and done.json removed (the trainer drops metrics past the checkpoint itself)."""
    shutil.copytree(ref.path, dst, symlinks=True)
    out = train_dir(RunDir(dst), 1)
    for tag in (out / "ckpt").glob("step*"):
        if int(tag.name[4:]) > step:
            shutil.rmtree(tag)
    shutil.rmtree(out / "final")
    (out / "done.json").unlink()
    return RunDir(dst)


def _final_weights(run):
    return load_file(final_path(run, 1) / "unet" / "diffusion_pytorch_model.safetensors")


def _saved_flat(tag: Path, world: int) -> dict[str, torch.Tensor]:
    """The fp32 weights and Adam moments of a ZeRO-2 tag, gathered by hand from its per-rank partitions
    (rank r holds the r-th slice of the flat parameter group), independently of DeepSpeed's converter."""
    parts = [torch.load(tag / f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt", weights_only=False)
             ["optimizer_state_dict"] for r in range(world)]
    state = [p["base_optimizer_state"]["state"][0] for p in parts]
    return {"fp32": torch.cat([p["single_partition_of_fp32_groups"][0] for p in parts]),
            "exp_avg": torch.cat([s["exp_avg"] for s in state]),
            "exp_avg_sq": torch.cat([s["exp_avg_sq"] for s in state]),
            "step": torch.tensor([float(s["step"]) for s in state])}


LOAD_ONE_RANK = r"""
import json, sys, torch, deepspeed
from pathlib import Path
from vip import config as vip_config
from vip.steps.context import StageContext
from vip import config as vip_config
from vip.steps.context import StageContext
from vip.steps.pairs import pairs_path, student_sha256
from vip.store import RunDir, sha256_file
from vip.train import dist
from vip.train.redpo_trainer import deepspeed_config, latest_checkpoint, CHECKPOINT_META
from vip.train.universal import ensure_universal

run, tag, micro, accum, out = RunDir(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
env = dist.init("cpu")
cfg = vip_config.load(run.path / "config.yaml")
ckpt = run.stage(1) / "train" / "ckpt"
saved = json.loads((ckpt / tag / CHECKPOINT_META).read_text())
policy = StageContext(run, cfg, 1).student.trainable_module().train().requires_grad_(True)
optim = torch.optim.AdamW(policy.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
engine, optim, _, _ = deepspeed.initialize(model=policy, optimizer=optim, config=deepspeed_config(
    cfg.train.deepspeed, cfg.train, env.world_size, "cpu", batch_size=micro, grad_accum=accum, load_universal=True))
engine.load_checkpoint(str(ensure_universal(ckpt, tag, env.rank, saved["world_size"], env.world_size)), tag=tag)
hp = engine.optimizer.single_partition_of_fp32_groups[0]
s = engine.optimizer.optimizer.state[hp]
torch.save({"fp32": hp.detach().clone(), "exp_avg": s["exp_avg"].clone(), "exp_avg_sq": s["exp_avg_sq"].clone(),
            "step": float(s["step"])}, out)
"""


def test_two_ranks_checkpoint_one_rank_resumes_then_two_ranks_again(train_run, tmp_path):
    ref = train_run("ref", overrides=["train.checkpoint_every=1", "train.keep_checkpoints=4"])
    _ok(run_training(ref, TORCHRUN))  # 8 pairs, 2 per rank x 2 ranks, 2 epochs: 4 steps, a tag at each
    tag = train_dir(ref, 1) / "ckpt" / "step0000002"
    saved = json.loads((tag / "vip_checkpoint.json").read_text())
    assert (saved["world_size"], saved["micro_batch"], saved["grad_accum"], saved["global_batch"],
            saved["samples_seen"]) == (2, 2, 1, 4, 8)

    # 2 -> 1: the state one rank holds after loading equals the two ranks' saved partitions, gathered
    run = _cut_at(ref, tmp_path / "cut", 2)
    script = tmp_path / "load.py"
    script.write_text(LOAD_ONE_RANK)
    dump = tmp_path / "loaded.pt"
    r = subprocess.run([sys.executable, str(script), str(run.path), tag.name, "2", "2", str(dump)],
                       env=train_env(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                                     MASTER_PORT="29631"), capture_output=True, text=True, timeout=120, cwd=ROOT)
    _ok(r)
    loaded, want = torch.load(dump), _saved_flat(tag, 2)
    n = min(want["fp32"].numel(), loaded["fp32"].numel())  # ZeRO pads the flat group by world size
    for k in ("fp32", "exp_avg", "exp_avg_sq"):
        assert loaded[k][:n].equal(want[k][:n]), k
        assert not loaded[k][n:].any() and not want[k][n:].any()  # only padding beyond
    assert want["exp_avg"].abs().max() > 0 and (want["step"] == 2).all() and loaded["step"] == 2
    universal = train_dir(run, 1) / "ckpt" / "universal" / tag.name
    assert (universal / "zero" / "optimizer_state.pt").is_file() and not universal.with_name(tag.name + ".tmp").exists()

    # and the one-rank run continues from step 2: same samples, same schedule, same curve up to float order
    r = run_training(run)
    _ok(r)
    assert "resumed step 2 (8 pairs seen), written by 2 rank(s), on 1" in r.stdout + r.stderr
    a, b = read_metrics(train_dir(ref, 1)), read_metrics(train_dir(run, 1))
    assert [m["step"] for m in b] == [1, 2, 3, 4]  # continued, not restarted from step 0
    assert b[:2] == a[:2]  # the two-rank lines up to the checkpoint are kept as they were
    assert [m["samples"] for m in b] == [m["samples"] for m in a] == [4, 8, 12, 16]
    _close_curves(a[2:], b[2:])
    assert a[2]["loss"] != a[0]["loss"]  # a restart from step 0 would repeat step 1's loss, not step 3's
    done = json.loads((train_dir(run, 1) / "done.json").read_text())
    assert (done["world_size"], done["micro_batch"], done["grad_accum"], done["samples"]) == (1, 2, 2, 16)
    w0 = load_file(run.stage(1) / "pruned" / "unet" / "diffusion_pytorch_model.safetensors")
    _close_weights(_final_weights(ref), _final_weights(run), w0)
    step3 = json.loads((train_dir(run, 1) / "ckpt" / "step0000003" / "vip_checkpoint.json").read_text())
    assert (step3["world_size"], step3["grad_accum"], step3["samples_seen"]) == (1, 2, 12)

    # 1 -> 2 from the one-rank tag at step 3: back to 2 per rank, no accumulation
    again = _cut_at(run, tmp_path / "again", 3)
    _ok(run_training(again, TORCHRUN))
    c = read_metrics(train_dir(again, 1))
    assert [m["samples"] for m in c] == [4, 8, 12, 16] and c[:3] == b[:3]
    _close_curves(a[3:], c[3:])
    done = json.loads((train_dir(again, 1) / "done.json").read_text())
    assert (done["world_size"], done["micro_batch"], done["grad_accum"]) == (2, 2, 1)
    _close_weights(_final_weights(ref), _final_weights(again), w0)
    assert (train_dir(again, 1) / "ckpt" / "universal" / "step0000003" / "zero").is_dir()


def _close_curves(a, b):
    for ma, mb in zip(a, b, strict=True):
        assert np.isfinite(mb["loss"])
        np.testing.assert_allclose([mb[k] for k in CURVE], [ma[k] for k in CURVE], rtol=1e-4, atol=1e-7)


def _close_weights(wa, wb, w0):
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-4, atol=1e-6)
    # training moved the weights far more than the resume's float-order differences
    assert max((wa[k] - w0[k]).abs().max() for k in wa) > 100 * max((wa[k] - wb[k]).abs().max() for k in wa)


def test_a_global_batch_the_new_ranks_cannot_share_is_one_line_and_keeps_the_checkpoint(train_run):
    """Decided from vip_checkpoint.json alone, before anything is loaded: a one-rank tag with 3 pairs per step."""
    run = train_run()
    ctx = StageContext(run, vip_config.load(run.path / "config.yaml"), 1)
    tag = train_dir(run, 1) / "ckpt" / "step0000002"
    tag.mkdir(parents=True)
    meta = {"student_sha256": student_sha256(ctx), "pairs_sha256": sha256_file(pairs_path(ctx)),
            "config_sha256": ctx.cfg.hash(), "step": 2, "world_size": 1, "micro_batch": 3, "grad_accum": 1,
            "global_batch": 3, "samples_seen": 6}
    (tag / "vip_checkpoint.json").write_text(json.dumps(meta))
    r = run_training(run, TORCHRUN, timeout=120)
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert errors and all("3 pairs per step, which 2 ranks cannot share evenly; resume on 1 rank(s)" in ln
                          for ln in errors), r.stderr[-2000:]
    assert json.loads((tag / "vip_checkpoint.json").read_text()) == meta and not final_path(run, 1).exists()
    assert not (train_dir(run, 1) / "ckpt" / "universal").exists()


def test_split_keeps_the_global_batch_with_the_largest_micro_batch_allowed():
    for g in range(1, 25):
        for world in range(1, 9):
            for cap in range(1, 9):
                s = split_global_batch(g, world, cap)
                if g % world:
                    assert s is None
                    continue
                assert s.global_batch == g and s.micro_batch <= cap and s.world_size == world
                assert not any((g // world) % m == 0 for m in range(s.micro_batch + 1, cap + 1))
