"""ReDPO training on real DeepSpeed (CPU, gloo): launch modes, exact resume, signals, bad input."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers.train import ROOT, run_training, train_cmd, train_env
from vip.train.metrics import read_metrics
from vip.train.redpo_trainer import EXIT_REQUEUE, EXIT_STOPPED, final_path, train_dir

BIN = Path(sys.executable).parent


def weights(run, which="final"):
    d = final_path(run, 1) if which == "final" else run.stage(1) / "pruned"
    return load_file(d / "unet" / "diffusion_pytorch_model.safetensors")


def test_two_processes_with_torchrun_train_the_student(train_run):
    run = train_run()
    r = run_training(run, [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"])
    assert r.returncode == 0, r.stderr[-3000:]
    done = json.loads((train_dir(run, 1) / "done.json").read_text())
    assert done["world_size"] == 2 and done["steps"] == 4  # 8 pairs / (2 per rank x 2 ranks) x 2 epochs
    metrics = read_metrics(train_dir(run, 1))
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert all(abs(m["loss"] - (m["dpo"] + 100 * m["sft"])) < 1e-3 * max(1, m["loss"]) for m in metrics)
    before, after = weights(run, "pruned"), weights(run)
    assert before.keys() == after.keys()  # same pruned architecture, loadable
    assert any((before[k] - after[k]).abs().max() > 0 for k in before)  # and trained
    assert json.loads((final_path(run, 1) / "removed_units.json").read_text()) == \
        json.loads((run.stage(1) / "pruned" / "removed_units.json").read_text())


@pytest.mark.parametrize("launcher", ["deepspeed", "mpirun"])
def test_other_launchers_agree_on_ranks(train_run, launcher):
    run = train_run()
    cmd = {"deepspeed": [str(BIN / "deepspeed"), "--num_gpus", "2"],
           "mpirun": [str(BIN / "mpirun"), "-iface", "lo", "-n", "2", sys.executable]}[launcher]
    r = run_training(run, cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((train_dir(run, 1) / "done.json").read_text())["world_size"] == 2


def _srun_like(run, rank: int, port: int) -> subprocess.Popen:
    """What `srun --ntasks 2` gives each task: SLURM_* variables only."""
    env = train_env(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank),
                    SLURM_JOB_NODELIST="localhost", SLURM_JOB_ID="4242", MASTER_PORT=str(port))
    return subprocess.Popen(train_cmd(run), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for_steps(run, n, procs, timeout=180):
    t0 = time.time()
    while len(read_metrics(train_dir(run, 1))) < n:
        assert all(p.poll() is None for p in procs), "training ended before the signal"
        assert time.time() - t0 < timeout
        time.sleep(0.2)


def test_a_signal_to_one_srun_rank_checkpoints_all_and_exits_for_requeue(train_run):
    run = train_run(overrides=["train.epochs=20"])
    procs = [_srun_like(run, r, 29611) for r in (0, 1)]
    _wait_for_steps(run, 2, procs)
    procs[1].send_signal(signal.SIGUSR1)  # only rank 1 is told: the ranks must agree
    codes = [p.wait(timeout=120) for p in procs]
    assert codes == [EXIT_REQUEUE, EXIT_REQUEUE], procs[0].stderr.read()[-2000:]
    tags = sorted(p.name for p in (train_dir(run, 1) / "ckpt").glob("step*"))
    stopped_at = len(read_metrics(train_dir(run, 1)))
    assert tags == [f"step{stopped_at:07d}"] and stopped_at < 40
    assert not final_path(run, 1).exists()


def test_resumed_run_matches_an_uninterrupted_one_bit_for_bit(train_run):
    ref = train_run("ref", overrides=["train.epochs=3", "train.checkpoint_every=2"])
    assert run_training(ref).returncode == 0
    run = train_run("cut", overrides=["train.epochs=3", "train.checkpoint_every=2"])
    p = subprocess.Popen(train_cmd(run), env=train_env(), cwd=ROOT, stderr=subprocess.PIPE, text=True)
    _wait_for_steps(run, 3, [p])
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=120) == EXIT_STOPPED  # a stop (scancel), not a requeue: checkpoint saved all the same
    cut = len(read_metrics(train_dir(run, 1)))
    assert 3 <= cut < 12
    r = run_training(run)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = read_metrics(train_dir(ref, 1)), read_metrics(train_dir(run, 1))
    keys = ["loss", "dpo", "sft", "grad_norm", "lr", "rewards/margins"]
    assert [[m[k] for k in keys] for m in a] == [[m[k] for k in keys] for m in b]  # exact, not approx
    wa, wb = weights(ref), weights(run)
    assert all((wa[k] == wb[k]).all() for k in wa)
    assert len(list((train_dir(run, 1) / "ckpt").glob("step*"))) <= 2  # keep_checkpoints


def _fails_with(run, text):
    r = run_training(run, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and text in last, last
    return last


def test_bad_inputs_are_one_line_and_write_nothing(train_run, tmp_path):
    run = train_run()
    pairs = run.stage(1) / "pairs.h5"
    good = pairs.read_bytes()
    pairs.unlink()
    _fails_with(run, "does not exist")
    pairs.write_bytes(b"not hdf5")
    _fails_with(run, "cannot be read as HDF5")
    other = train_run("other", overrides=["train.beta=10"])  # a different config
    pairs.write_bytes((other.stage(1) / "pairs.h5").read_bytes())
    _fails_with(run, "belongs to another run")
    pairs.write_bytes(good)
    assert not (train_dir(run, 1) / "ckpt").exists() and not final_path(run, 1).exists()


def test_a_deepspeed_config_contradicting_the_world_size_is_refused(train_run, tmp_path):
    ds = tmp_path / "ds.json"
    ds.write_text(json.dumps({"train_batch_size": 64, "zero_optimization": {"stage": 2}}))
    run = train_run(overrides=[f"train.deepspeed={ds}"])
    line = _fails_with(run, "train_batch_size is 64")
    assert "train.batch_size=2" in line


def test_a_checkpoint_from_another_student_is_refused(train_run):
    run = train_run()
    tag = train_dir(run, 1) / "ckpt" / "step0000003"
    tag.mkdir(parents=True)
    (tag / "vip_checkpoint.json").write_text(json.dumps({"student_sha256": "0" * 64, "pairs_sha256": "x",
                                                         "config_sha256": "y", "step": 3}))
    _fails_with(run, "was made for another student")
    assert tag.is_dir()  # nothing deleted


def test_too_few_pairs_skip_training_and_pass_the_pruned_student_on(train_run):
    run = train_run(overrides=["train.min_pairs=16"])  # 8 pairs
    r = run_training(run)
    assert r.returncode == 0, r.stderr[-2000:]
    done = json.loads((train_dir(run, 1) / "done.json").read_text())
    assert done["steps"] == 0 and done["skipped"] == "8 pairs < train.min_pairs=16"
    before, after = weights(run, "pruned"), weights(run)
    assert all((before[k] == after[k]).all() for k in before)
    assert not (train_dir(run, 1) / "ckpt").exists()


def test_an_empty_pairs_file_skips_training_or_is_refused_when_min_pairs_is_0(train_run):
    run = train_run(n_pairs=0)  # train.min_pairs=1: curation kept nothing, the stage goes on untrained
    r = run_training(run)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((train_dir(run, 1) / "done.json").read_text())["skipped"] == "0 pairs < train.min_pairs=1"
    strict = train_run("strict", n_pairs=0, overrides=["train.min_pairs=0"])
    _fails_with(strict, "holds no pairs")


def test_every_block_checkpointing_and_regional_compile_train_the_same_student(train_run):
    """The speed switches change how the denoisers run, not what they compute: the same loss curve
    (exactly, with checkpointing; to float rounding, compiled) and the published weight names."""
    ref = train_run("ref", n_pairs=4)  # 4 steps: the capture, not the steps, is what costs here
    assert run_training(ref).returncode == 0
    ckpt = train_run("ckpt", n_pairs=4, overrides=["train.checkpointing=every_block"])
    r = run_training(ckpt)
    assert r.returncode == 0, r.stderr[-3000:]
    # Dynamo captures every region and AOT autograd its backward (what our wrapping must survive); Inductor's
    # CPU code generation would add 5-7 minutes of C++ and is not what a GPU runs (docs/decisions.md)
    comp = train_run("comp", n_pairs=4, overrides=["train.checkpointing=every_block", "train.compile=true",
                                        "train.compile_backend=aot_eager"])
    r = run_training(comp, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    keys = ["loss", "dpo", "sft", "grad_norm"]
    a, b, c = (read_metrics(train_dir(x, 1)) for x in (ref, ckpt, comp))
    assert [[m[k] for k in keys] for m in a] == [[m[k] for k in keys] for m in b]
    assert [m["loss"] for m in c] == pytest.approx([m["loss"] for m in a], rel=1e-4)
    wa, wb, wc = weights(ref), weights(ckpt), weights(comp)
    assert wa.keys() == wb.keys() == wc.keys()  # no wrapper names in the saved student
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert max((wa[k] - wc[k]).abs().max().item() for k in wa) < 1e-4


def test_dropped_prompts_train_on_the_empty_prompt(train_run):
    """train.prompt_dropout=1: every pair trains on "", so the student cannot depend on the pairs'
    prompts; with 0 the same pairs train another student (so this can fail)."""
    other = ["a green triangle moving up on a white background", "a yellow circle bouncing on a black background"]
    finals = {}
    for share, name, kw in (("1.0", "a", {}), ("1.0", "b", {"prompts": other}), ("0.0", "a", {})):
        run = train_run(f"drop{share}{name}", n_pairs=4, overrides=[f"train.prompt_dropout={share}", "train.epochs=1"],
                        **kw)
        r = run_training(run)
        assert r.returncode == 0, r.stderr[-3000:]
        finals[share, name] = weights(run)
    a, b, kept = finals["1.0", "a"], finals["1.0", "b"], finals["0.0", "a"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], kept[k]) for k in a)
