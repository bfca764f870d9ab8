"""The arithmetic of the --dry-run cost estimate (tasks, clips, GPU-hours, shard bytes) on a synthetic
config, and the figures read back from an earlier stage (shard markers, sacct elapsed); no cluster."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vip import config
from vip.orchestrate import cost, slurm
from vip.orchestrate.ledger import Ledger
from vip.store import RunDir

ASPECTS = 4
LATENT = 12 * 8 * 16 * 16


def _cfg(*overrides):
    return config.load(None, ["loo.units_per_task=4", "loo.prompts_per_task=4", "curate.max_prompts=8",
                              "curate.seeds_per_prompt=3", "curate.samples_per_task=10", "slurm.array_gpus=1",
                              *overrides])


def test_leave_one_out_clips_follow_the_plan():
    # 6 variants in chunks of 4 and 2, 10 samples in chunks of 4, 4, 2
    assert cost.loo_task_clips(6, 10, 4, 4) == [16, 16, 8, 8, 8, 4]
    assert cost.loo_task_clips(5, 36, 4, 0) == [144, 36]  # the toyvid demo plan: 4 + 1 variants, all prompts


def test_costs_from_the_constants():
    cfg = _cfg()
    costs = {c.step: c for c in cost.stage_costs(cfg, 1, {"loo": [0, 1, 2, 3, 4, 5], "select": [None],
                                                             "target": [None], "pairs": [None], "outcome": [None]},
                                                   n_variants=6, n_samples=10, latent_numel=LATENT, known={})}
    loo = costs["loo"]
    assert (loo.tasks, loo.clips) == (6, 60)
    assert loo.clip_s == pytest.approx(1 / 1.2) and loo.gpu_hours == pytest.approx(60 / 1.2 / 3600)
    # 60 clips x 4 aspects x 4 bytes + 3 sample chunks twice (10 samples x 2 variant chunks) x 24 + 6 shards x 8 KiB
    assert loo.bytes == 60 * ASPECTS * 4 + 20 * 24 + 6 * 8192
    assert costs["select"].gpus == 0 and costs["select"].gpu_hours == 0
    assert costs["target"].clips == 20 and costs["outcome"].clips == 10  # teacher + student / trained student
    # pairs not planned yet: max_prompts x seeds_per_prompt = 24 rows in tasks of 10, 10, 4; two videos per row
    pairs = costs["pairs"]
    assert (pairs.tasks, pairs.clips) == (3, 48)
    assert pairs.bytes == 2 * (24 * (LATENT * 2 + ASPECTS * 4 + 16) + 3 * 4096)
    assert pairs.gpu_hours == pytest.approx(48 / 1.2 / 3600)


def test_only_the_tasks_to_submit_count_and_gpus_per_task_multiply():
    cfg = _cfg("slurm.array_gpus=2")
    (loo,) = cost.stage_costs(cfg, 2, {"loo": [2, 5]}, 6, 10, LATENT, {})
    assert loo.clips == 8 + 4 and loo.bytes == 12 * ASPECTS * 4 + (2 + 2) * 24 + 2 * 8192  # both in sample chunk 2
    assert loo.gpu_hours == pytest.approx(12 / 1.2 * 2 / 3600)
    (pairs,) = cost.stage_costs(cfg, 2, {"pairs": [2]}, 6, 10, LATENT, {}, pairs_rows=24)
    assert (pairs.tasks, pairs.clips) == (1, 8)


def test_measured_figures_replace_the_constants():
    known = {"clip_s": 3.0, "loo_bytes_per_clip": 100.0, "pairs_bytes_per_row": 1000.0, "from": 1}
    costs = {c.step: c for c in cost.stage_costs(_cfg(), 2, {"loo": list(range(6)), "pairs": [None]}, 6, 10,
                                                   LATENT, known, pairs_rows=30)}
    assert costs["loo"].gpu_hours == pytest.approx(60 * 3.0 / 3600) and costs["loo"].bytes == 6000
    assert (costs["pairs"].tasks, costs["pairs"].clips, costs["pairs"].bytes) == (3, 60, 30_000)


def test_train_gpus_and_the_lines():
    cfg = _cfg("slurm.nodes=2", "slurm.gpus_per_node=4")
    (train,) = cost.stage_costs(cfg, 1, {"train": [None]}, 6, 10, LATENT, {})
    # nothing measured: every one of the 8 x 3 = 24 candidate pairs kept (upper bound); 8 ranks take
    # min(4, 24 // 8) = 3 pairs each, one step per epoch, 4 epochs; the H100 figure of docs/benchmarks.md
    assert (train.tasks, train.pairs, train.steps, train.step_s) == (8, 24, 4, 0.529)
    assert train.gpu_hours == pytest.approx(4 * 0.529 * 8 / 3600)
    assert "     4 steps" in train.line()
    assert cost.human_bytes(512) == "512 B" and cost.human_bytes(1536) == "1.5 KiB"
    assert cost.human_bytes(3 * 1024 ** 3) == "3.0 GiB"
    line = cost.StepCost(1, "loo", 6, 60, 1 / 1.2, 1, 1000).line()
    assert "loo" in line and "6 task(s)" in line and "60 clips" in line and "0.014 GPU-h" in line and "1000 B" in line


def test_measured_reads_the_last_finished_stage(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run")
    d = run.stage(1)
    (d / "loo" / "done").mkdir(parents=True)
    plan = {"variants": ["<full>", "a", "b", "c", "d"], "samples": 36,
            "tasks": [{"variants": ["<full>", "a", "b", "c"], "samples": [0, 36]}, {"variants": ["d"], "samples": [0, 36]}]}
    (d / "loo" / "tasks.json").write_text(json.dumps(plan))
    (d / "loo.h5").write_bytes(b"")
    for i, size in enumerate((11424, 9648)):
        (d / "loo" / "done" / f"task_{i:05d}").write_text(json.dumps({"sha256": "x", "bytes": size}))
    ledger = Ledger(d)
    with ledger.lock():
        ledger.add("loo", {"job_id": "40", "kind": "array", "elements": {"40_0": 0, "40_1": 1}, "log_dir": "x"})
        ledger.add("loo", {"job_id": "41", "kind": "array", "elements": {"41_1": 1}, "log_dir": "x"})  # task 1 redone
    calls = []

    def fake_run(cmd, timeout=60):
        calls.append(cmd)
        return "40_0|COMPLETED|120\n40_1|CANCELLED by 0|5\n41_1|COMPLETED|30\n"

    monkeypatch.setattr(slurm, "_run", fake_run)
    known = cost.measured(run, 2)
    assert known["from"] == 1
    assert known["clip_s"] == pytest.approx((120 + 30) / 180)  # latest element of each task, COMPLETED only
    assert known["loo_bytes_per_clip"] == pytest.approx((11424 + 9648) / 180)
    assert "-j" in calls[0] and calls[0][calls[0].index("-j") + 1] == "40,41"
    assert cost.measured(run, 1) == {}  # nothing before stage 1

    def no_accounting(cmd, timeout=60):
        raise slurm.SlurmError("sacct: accounting storage is disabled")

    monkeypatch.setattr(slurm, "_run", no_accounting)
    assert "clip_s" not in cost.measured(run, 2)  # then the documented constant


def _tc(*overrides):
    return config.load(None, list(overrides)).train


@pytest.mark.parametrize("overrides,pairs,world,steps", [
    ([], 57, 1, 56),  # the demo's stage 2 (runs/demo/stage2/train/done.json): 57 pairs, 14 batches of 4, 4 epochs
    ([], 2, 1, 0),  # the demo's stage 1: 2 pairs < train.min_pairs=16, training skipped
    (["train.grad_accum=2"], 96, 8, 4),  # batch 4 x 8 ranks = 32 a micro-step: 3 micro-steps, 1 step per epoch
    (["train.min_pairs=0"], 20, 32, 0),  # fewer pairs than ranks: the trainer refuses, nothing to estimate
    (["train.epochs=1", "train.batch_size=16"], 40, 4, 1),  # batch min(16, 40 // 4) = 10: one global batch of 40
])
def test_train_steps_follow_the_trainer(overrides, pairs, world, steps):
    assert cost.train_steps(_tc(*overrides), pairs, world) == steps


@settings(max_examples=200, deadline=None)
@given(pairs=st.integers(16, 5000), world=st.integers(1, 64), batch=st.integers(1, 32), accum=st.integers(1, 8),
       epochs=st.integers(1, 5))
def test_train_steps_use_whole_global_batches_only(pairs, world, batch, accum, epochs):
    tc = _tc(f"train.batch_size={batch}", f"train.grad_accum={accum}", f"train.epochs={epochs}")
    steps = cost.train_steps(tc, pairs, world)
    b = min(batch, pairs // world)
    assert steps % epochs == 0
    if b == 0:
        assert steps == 0
        return
    per_step = b * world * accum  # pairs one optimizer step consumes over all ranks
    left = pairs - steps // epochs * per_step  # pairs an epoch leaves out
    assert 0 <= left < per_step


def test_expected_pairs_from_curation_an_earlier_stage_or_the_bound():
    cfg = _cfg()  # max_prompts 8 x seeds_per_prompt 3
    assert cost.expected_pairs(cfg, {}) == 24  # nothing known: every candidate kept
    assert cost.expected_pairs(cfg, {}, pairs_rows=18) == 18
    assert cost.expected_pairs(cfg, {"kept_fraction": 57 / 96}, pairs_rows=96) == 57
    assert cost.expected_pairs(cfg, {"kept_fraction": 0.5}) == 12
    assert cost.expected_pairs(cfg, {"kept_fraction": 0.5}, pairs_rows=96, kept=7) == 7  # curated: exact


def test_training_cost_from_measured_figures():
    cfg = _cfg("slurm.nodes=2", "slurm.gpus_per_node=4")
    known = {"train_step_s": 2.0, "kept_fraction": 0.5}
    (train,) = cost.stage_costs(cfg, 2, {"train": [None]}, 6, 10, LATENT, known, pairs_rows=96)
    # 48 pairs over 8 ranks: batch 4, 48 // 32 = 1 step per epoch, 4 epochs, 2 s each, 8 GPUs
    assert (train.pairs, train.steps) == (48, 4)
    assert train.hours == pytest.approx(8 / 3600) and train.gpu_hours == pytest.approx(64 / 3600)
    (cpu,) = cost.stage_costs(_cfg("slurm.gpus_per_node=0"), 2, {"train": [None]}, 6, 10, LATENT, {}, kept_pairs=30)
    assert cpu.gpus == 0 and cpu.gpu_hours == 0 and cpu.step_s == 7.42  # a CPU job: the CPU figure, no GPU-hours
    assert cpu.steps == 4 * (30 // 4) and "(CPU job)" in cpu.line()
    (skipped,) = cost.stage_costs(cfg, 2, {"train": [None]}, 6, 10, LATENT, known, kept_pairs=3)
    assert skipped.steps == 0 and skipped.gpu_hours == 0  # < train.min_pairs: the trainer skips


def test_measured_train_reads_the_last_trained_and_curated_stages(tmp_path):
    run = RunDir(tmp_path / "run")
    tc = _tc()  # batch 4, grad_accum 1
    s1, s2 = run.stage(1), run.stage(2)
    (s1 / "train").mkdir(parents=True)
    (s2 / "train").mkdir(parents=True)
    (s1 / "curation.json").write_text(json.dumps({"candidates": 96, "kept": 57}))
    (s1 / "train" / "done.json").write_text(json.dumps({"steps": 56, "pairs": 57, "world_size": 1}))
    (s1 / "train" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": i, "loss": 1.0, "samples_per_s": r}) + "\n" for i, r in ((1, 0.5), (56, 1.6))))
    (s2 / "curation.json").write_text(json.dumps({"candidates": 96, "kept": 2}))  # stage 2 skipped training
    (s2 / "train" / "done.json").write_text(json.dumps({"steps": 0, "pairs": 2, "world_size": 0, "skipped": "x"}))
    known = cost.measured_train(run, tc, 3)
    # the last step's rate counts pairs over all ranks: 4 pairs x 1 rank per step at 1.6 pairs/s
    assert known["train_step_s"] == pytest.approx(4 / 1.6) and known["train_from"] == 1
    assert known["kept_fraction"] == pytest.approx(2 / 96) and known["kept_from"] == 2  # the latest curation
    assert cost.measured_train(run, tc, 2) == {"train_step_s": pytest.approx(2.5), "train_from": 1,
                                                 "kept_fraction": pytest.approx(57 / 96), "kept_from": 1}
    assert cost.measured_train(run, tc, 1) == {}
