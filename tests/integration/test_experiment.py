"""The training-only experiment harness (vip/experiments): train.* overrides only, recorded inputs,
finished arms skipped, and scoring identical to the outcome step's on the same weights."""
import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from helpers.train import ROOT, make_train_run
from vip import config as vip_config
from vip.config import ConfigError
from vip.experiments import tables
from vip.experiments.arms import Experiment, parse_overrides, recovered
from vip.models.registry import load_video_model
from vip.steps import outcome, target
from vip.steps.context import StageContext
from vip.store import atomic_write_json, read_h5, sha256_file, sha256_tree
from vip.train.metrics import read_metrics
from vip.train.redpo_trainer import final_path, train_dir

SMALL = ["prompts.eval_count=2", "prompts.heldout_count=2", "loo.batch_size=2", "model.steps=4", "runtime.progress=false"]
TEACHER = ROOT / "vip/toyvid/weights/teacher"  # trained weights: an untrained model's clips all score the floor


@pytest.fixture
def source(tmp_path):
    """A stage-1 run finished up to its pairs: pruned student, 8 pairs, target.json (2 evaluation prompts)."""
    run = make_train_run(tmp_path / "source", TEACHER, overrides=SMALL)
    cfg = vip_config.load(run.path / "config.yaml")
    target.run(StageContext(run, cfg, 1))
    return run


class FakeTrainer:
    """Stands in for DeepSpeed: the pruned student nudged by noise seeded from w_sft, saved as final/."""

    def __init__(self):
        self.calls = []

    def __call__(self, run, cfg, stage):
        self.calls.append(run.path.name)
        model = load_video_model(cfg.model, run.stage(stage) / "pruned")
        g = torch.Generator().manual_seed(int(cfg.train.w_sft))
        with torch.no_grad():
            for p in model.trainable_module().parameters():
                p.add_(0.2 * p.abs().mean() * torch.randn(p.shape, generator=g))
        model.save(final_path(run, stage))
        atomic_write_json(train_dir(run, stage) / "done.json",
                          {"steps": 1, "pairs": 8, "world_size": 1, "config_sha256": cfg.hash()})


def test_overrides_outside_train_are_refused_with_one_line(source, tmp_path):
    with pytest.raises(ConfigError, match=r"'model.steps=5' is outside train\.\*"):
        parse_overrides(["train.w_sft=10", "model.steps=5"])
    exp = Experiment(tmp_path / "exp", source.path, 1)
    with pytest.raises(ConfigError, match="curate.alpha"):
        exp.arm({"curate.alpha": 0.1})
    with pytest.raises(ConfigError, match="unknown config key 'train.nope'"):
        exp.arm({"train.nope": 1})
    r = subprocess.run([sys.executable, str(ROOT / "jobs/experiment.py"), "table-d", "--source", str(source.path),
                        "--stage", "1", "--out", str(tmp_path / "cli"), "select.k=2"],
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "'select.k=2' is outside train.*" in r.stderr
    assert not (tmp_path / "cli").exists()  # nothing written


def test_experiment_records_its_inputs_and_the_arm_changes_only_train(source, tmp_path):
    exp = Experiment(tmp_path / "exp", source.path, 1)
    arm = exp.arm({"train.w_sft": 7, "train.epochs": 2})  # epochs=2 is the source's value: not an override
    assert arm.name == "w_sft-7" and arm.as_dict() == {"train.w_sft": 7.0}
    pruned_before = sha256_tree(source.stage(1) / "pruned")
    result = exp.run_arm(arm, trainer=FakeTrainer())

    recorded = json.loads((tmp_path / "exp" / "experiment.json").read_text())["inputs"]
    assert recorded["pairs_sha256"] == sha256_file(source.stage(1) / "pairs.h5")
    assert recorded["target_sha256"] == sha256_file(source.stage(1) / "target.json")
    assert recorded["student_sha256"] == sha256_file(source.stage(1) / "pruned/unet/diffusion_pytorch_model.safetensors")
    assert recorded["source_config_sha256"] == (source.path / "config.sha256").read_text().strip()
    assert result["inputs"] == recorded and result["overrides"] == {"train.w_sft": 7.0}

    src_cfg, arm_cfg = (vip_config.load(p / "config.yaml") for p in (source.path, exp.arm_run(arm).path))
    a, b = src_cfg.to_dict(), arm_cfg.to_dict()
    assert b["train"].pop("w_sft") == 7.0 and a["train"].pop("w_sft") == 100.0
    a.pop("runtime"), b.pop("runtime")
    assert a == b  # nothing else changed
    (sa, _), (sd, ad) = read_h5(source.stage(1) / "pairs.h5"), read_h5(exp.arm_run(arm).stage(1) / "pairs.h5")
    assert all((sa[k] == sd[k]).all() for k in sa) and sa.keys() == sd.keys()  # the same pairs...
    assert ad["config_sha256"] == arm_cfg.hash() and ad["source_pairs_sha256"] == recorded["pairs_sha256"]
    assert sha256_tree(source.stage(1) / "pruned") == pruned_before  # ...and the source untouched

    (source.stage(1) / "pairs.h5").write_bytes((source.stage(1) / "pairs.h5").read_bytes() + b"x")
    with pytest.raises(ConfigError, match="made from other inputs.*pairs_sha256"):
        Experiment(tmp_path / "exp", source.path, 1).open()


def test_finished_arms_are_skipped_and_a_trained_arm_is_only_rescored(source, tmp_path):
    exp = Experiment(tmp_path / "exp", source.path, 1)
    fake = FakeTrainer()
    settings = [tables.Setting("a", {"train.w_sft": 3}), tables.Setting("b", {"train.loss": "sft"})]
    tables.run_settings(exp, settings, seeds=[0, 1], trainer=fake, log=lambda _: None)
    assert sorted(fake.calls) == ["loss-sft", "loss-sft_seed-1", "seed-1_w_sft-3", "w_sft-3"]
    first = [s.records for s in settings]
    tables.run_settings(exp, settings, seeds=[0, 1], trainer=fake, log=lambda _: None)
    assert len(fake.calls) == 4 and [s.records for s in settings] == first  # nothing redone
    (exp.arm_run(exp.arm({"train.w_sft": 3})).path / "arm.json").unlink()  # scored, but the record lost
    more = [tables.Setting("a", {"train.w_sft": 3}), tables.Setting("c", {"train.w_sft": 5})]
    tables.run_settings(exp, more, seeds=[0], trainer=fake, log=lambda _: None)
    assert fake.calls[4:] == ["w_sft-5"]  # w_sft-3 had its trained student: rescored, not retrained
    assert more[0].records[0] == first[0][0]


def test_arm_scores_equal_the_outcome_step_on_the_same_weights(source, tmp_path):
    exp = Experiment(tmp_path / "exp", source.path, 1)
    arm = exp.arm({"train.w_sft": 11})
    got = exp.run_arm(arm, trainer=FakeTrainer())["outcome"]
    # the outcome step of the source run itself, given the arm's trained student
    shutil.copytree(final_path(exp.arm_run(arm), 1), final_path(source, 1))
    cfg = vip_config.load(source.path / "config.yaml")
    atomic_write_json(train_dir(source, 1) / "done.json", {"steps": 1, "pairs": 8, "config_sha256": cfg.hash()})
    want = outcome.run(StageContext(source, cfg, 1))
    assert got["redpo"] == want["redpo"] and got["full"] == want["full"] and got["pruned"] == want["pruned"]
    assert got["redpo"] != want["pruned"]  # the nudged student scores differently: the comparison has teeth
    assert got["removed_units"] == want["removed_units"] and got["params"] == want["params"]


def test_recovered_fraction_of_the_target_drop():
    rec = {"full": {"visual_quality": 3.5}, "pruned": {"visual_quality": 3.1}, "redpo": {"visual_quality": 3.2}}
    assert recovered(rec, "visual_quality") == pytest.approx(0.25)
    rec["redpo"]["visual_quality"] = 3.0  # worse than untrained: negative
    assert recovered(rec, "visual_quality") == pytest.approx(-0.25)
    m, s = tables.mean_std([1.0, 2.0, 3.0])
    assert (m, s) == (2.0, 1.0)  # sample std (ddof 1)


def test_a_real_sft_arm_trains_with_deepspeed_on_the_derived_pairs(source, tmp_path):
    exp = Experiment(tmp_path / "exp", source.path, 1)
    arm = exp.arm({"train.loss": "sft", "train.epochs": 1})
    exp.run_arm(arm, threads=1)
    run = exp.arm_run(arm)
    done = json.loads((train_dir(run, 1) / "done.json").read_text())
    assert done["config_sha256"] == vip_config.load(run.path / "config.yaml").hash() and done["steps"] == 4
    metrics = read_metrics(train_dir(run, 1))
    assert all(m["loss"] == pytest.approx(100 * m["sft"], rel=1e-5) for m in metrics)  # w_sft x SFT, no DPO term
    before = load_file(source.stage(1) / "pruned/unet/diffusion_pytorch_model.safetensors")
    after = load_file(final_path(run, 1) / "unet/diffusion_pytorch_model.safetensors")
    assert any((before[k] - after[k]).abs().max() > 0 for k in before)
    assert not (train_dir(run, 1) / "ckpt").exists()  # checkpoints dropped once the arm is scored


def test_table_b_refuses_a_source_whose_earlier_stage_was_trained(tmp_path):
    from vip.experiments.online import check_earlier_stages_untrained
    from vip.store import RunDir

    run = RunDir(tmp_path / "src")
    run.freeze(vip_config.load(ROOT / "configs/toyvid.yaml"))
    done = train_dir(run, 1) / "done.json"
    atomic_write_json(done, {"steps": 0, "skipped": "2 pairs < train.min_pairs=16"})
    check_earlier_stages_untrained(Experiment(tmp_path / "exp", run.path, 2))  # no loss applied before stage 2
    atomic_write_json(done, {"steps": 12, "pairs": 48})
    with pytest.raises(ConfigError, match="stage 1 of .* trained its student.*start at --stage 1"):
        check_earlier_stages_untrained(Experiment(tmp_path / "exp", run.path, 2))
