"""Two full stages on the shipped teacher through jobs/stage.py: leave-one-out over every unit, selection,
prompt filter, target, pairs, curation, ReDPO training, outcome; stage 2 starts from stage 1's student.
(At 6 prompts and 4 sampler steps: the whole run is mostly process start-up, so one run carries every check.)"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vip.models.motion_unet import MotionUNetModel
from vip.models.registry import SHIPPED_TEACHER
from vip.prompts.sets import load_prompts
from vip.rewards.base import ASPECTS
from vip.selection import choose, deltas
from vip.steps import loo
from vip.store import read_h5, sha256_tree

from helpers.paths import ROOT  # noqa: E402
from helpers.stage import ARGS  # noqa: E402

pytestmark = pytest.mark.slow


# the Slurm loop's settings, but leave-one-out over every unit of the shipped teacher
LOCAL = [a for a in ARGS if not a.startswith("loo.units=")] + ["loo.units_per_task=8"]
N = 6  # evaluation prompts (prompts.eval_count in ARGS)


def _stages(run_dir, *extra):
    return subprocess.run([sys.executable, str(ROOT / "jobs/stage.py"), "--stage", "1", "--until", "2",
                           "--run-dir", str(run_dir), *LOCAL, *extra], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ))  # under xdist: one thread (tests/conftest.py)


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("loop") / "run"
    r = _stages(run_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir, r.stdout


def test_stage1_scores_every_unit_and_prints_its_choice(two_stages):
    run_dir, stdout = two_stages
    assert f"prompts.eval_count={N}" in LOCAL
    teacher = MotionUNetModel.load(SHIPPED_TEACHER)
    units = teacher.units()
    merged, _ = read_h5(run_dir / "stage1" / "loo.h5")
    variants = merged["variants"].tolist()
    assert merged["scores"].shape == (1 + len(units), N, 4)
    assert sorted(variants[1:]) == sorted(units)
    assert np.all((merged["scores"] >= 1) & (merged["scores"] <= 4))

    sel = json.loads((run_dir / "stage1" / "selection.json").read_text())
    assert sel["chosen"] == choose(deltas(merged["scores"], variants), sel["k"]).chosen and len(sel["chosen"]) == 2
    student = MotionUNetModel.load(run_dir / "stage1" / "pruned")
    assert sorted(student.units()) == sorted(set(units) - set(sel["chosen"]))
    assert student.num_params() == teacher.num_params() - sum(sel["unit_params"][u] for u in sel["chosen"])

    # the printed table (stage 1's comes first) lists every unit with its Δ and marks the chosen ones
    table = [line for line in stdout.splitlines() if "motion_modules" in line][:len(units)]
    assert sorted(line.split()[0] for line in table) == sorted(units)
    for line in table:
        unit = line.split()[0]
        assert line.rstrip().endswith("yes") == (unit in sel["chosen"])
        assert float(line.split()[5]) == pytest.approx(sel["delta"][unit]["total"], abs=6e-4)

    from PIL import Image
    with Image.open(run_dir / "stage1" / "selection.png") as chart:  # the Δ chart a person looks at
        assert chart.width > 600 and chart.height > 300

    # status reads the files only and reports everything done
    s = _stages(run_dir, "--status")
    assert s.returncode == 0, s.stderr[-2000:]
    rows = {ln.split()[0]: ln.split()[1] for ln in s.stdout.splitlines() if ln.split() and ln.split()[0] in
            ("loo", "select", "target", "curate", "train", "outcome")}
    assert rows == {k: "done" for k in ("loo", "select", "target", "curate", "train", "outcome")}
    assert all(u in s.stdout for u in sel["chosen"])


def test_the_outcome_is_scored_on_heldout_prompts_the_stage_never_saw(two_stages):
    run_dir, stdout = two_stages
    heldout = load_prompts("toyvid_heldout")[:4]
    for stage in (1, 2):
        d = run_dir / f"stage{stage}"
        outcome = json.loads((d / "outcome.json").read_text())
        on = outcome["scored_on"]
        assert on["set"] == "heldout" and on["spec"] == "toyvid_heldout" and on["samples"] == on["prompts"] == 4
        target = json.loads((d / "target.json").read_text())
        assert outcome["on_eval"]["full"] == target["teacher"] and outcome["on_eval"]["pruned"] == target["pruned"]
        # other prompts, other scores: the check can fail
        assert abs(outcome["full"]["total"] - outcome["on_eval"]["full"]["total"]) > 1e-3
        arrays, _ = read_h5(d / "pairs.h5")
        assert not {str(p) for p in arrays["prompts"]} & set(heldout)  # curation never trains on them
        from PIL import Image
        with Image.open(d / "samples.png") as im:  # teacher, pruned, ReDPO for the first 2 held-out samples
            assert im.height == 6 * (96 + 2)
        assert (run_dir / "report_files" / f"stage{stage}_samples.png").is_file()  # the report shows them
        assert not {str(p) for p in read_h5(d / "loo.h5")[0]["prompts"]} & set(heldout)
    # the teacher is scored on them once per run; both stages compare against the same figures
    first, second = (json.loads((run_dir / f"stage{s}" / "outcome.json").read_text())["full"] for s in (1, 2))
    assert first == second and (run_dir / "teacher" / "heldout.h5").is_file()
    assert "scored on held-out prompts (prompts.heldout=toyvid_heldout: 4 samples" in stdout


def test_pairs_prefer_the_teacher_in_the_target_and_obey_the_rules(two_stages):
    run_dir, _ = two_stages
    for stage in (1, 2):
        d = run_dir / f"stage{stage}"
        arrays, attrs = read_h5(d / "pairs.h5")
        record = json.loads((d / "curation.json").read_text())
        targets = json.loads(attrs["targets"])
        assert targets == record["targets"] and record["primary_targets"] == json.loads((d / "target.json").read_text())["targets"]
        if targets != record["primary_targets"]:  # curate.fallback: the largest drop kept fewer than train.min_pairs
            assert record["tried"][",".join(record["primary_targets"])] < 2 <= record["kept"]
        assert len(arrays["prompts"]) == record["kept"] > 0
        t = [ASPECTS.index(a) for a in targets]
        gap = arrays["scores_w"] - arrays["scores_l"]
        assert (gap[:, t] > 0).all()  # the preferred video is better in the target
        others = [i for i in range(4) if i not in t]
        assert (gap[:, t].min(1) > gap[:, others].max(1)).all()
        for a in targets:
            assert (arrays["scores_l"][:, ASPECTS.index(a)] >= record["floors"][a] - 1e-6).all()
        assert record["kept"] + max(record["rejected"].values()) <= record["candidates"]


def test_preferred_is_the_teacher_video_and_unpreferred_the_students(two_stages):
    run_dir, _ = two_stages
    arrays, _ = read_h5(run_dir / "stage1" / "pairs.h5")
    prompt, seed = [str(arrays["prompts"][0])], [int(arrays["seeds"][0])]
    teacher = MotionUNetModel.load(SHIPPED_TEACHER)
    student = MotionUNetModel.load(run_dir / "stage1" / "pruned")
    for m in (teacher, student):
        m.meta["steps"] = 4
    lat_w = teacher.sample_latents(prompt, seed).half().numpy()[0]
    lat_l = student.sample_latents(prompt, seed).half().numpy()[0]
    # equal up to float rounding (a batch of one sums in another order than the task's batch)
    close = lambda a, b: np.abs(a.astype(np.float32) - b.astype(np.float32)).max()  # noqa: E731
    assert close(lat_w, arrays["latents_w"][0]) < 2e-3 and close(lat_l, arrays["latents_l"][0]) < 2e-3
    assert close(lat_w, lat_l) > 0.1  # and the two sides really are different models' videos


def test_stage2_starts_from_stage1s_trained_student(two_stages):
    run_dir, stdout = two_stages
    plan = loo.read_plan(run_dir / "stage2")
    final = run_dir / "stage1" / "train" / "final"
    assert Path(plan["model"]) == final and plan["model_sha256"] == sha256_tree(final)
    trained = MotionUNetModel.load(final)
    pruned = MotionUNetModel.load(run_dir / "stage1" / "pruned")
    assert trained.units() == pruned.units()
    w_t, w_p = trained.unet.state_dict(), pruned.unet.state_dict()
    assert any(not torch.equal(w_t[k], w_p[k]) for k in w_t)  # training changed the student
    removed2 = json.loads((run_dir / "stage2" / "train" / "final" / "removed_units.json").read_text())
    sel1 = json.loads((run_dir / "stage1" / "selection.json").read_text())["chosen"]
    sel2 = json.loads((run_dir / "stage2" / "selection.json").read_text())["chosen"]
    assert sorted(removed2) == sorted(sel1 + sel2)
    # the printed Table B: full / pruned / ReDPO per stage, parameters shrinking
    rows = [ln.split() for ln in stdout.splitlines() if ln.startswith("stage ") and ln.split()[2] in
            ("full", "pruned", "ReDPO")]
    assert [(r[1], r[2]) for r in rows] == [(s, m) for s in "12" for m in ("full", "pruned", "ReDPO")]
    params = [int(r[8].replace(",", "")) for r in rows]
    assert params[0] == params[3] > params[1] == params[2] > params[4] == params[5]
    outcome = json.loads((run_dir / "stage2" / "outcome.json").read_text())
    assert float(rows[5][7]) == pytest.approx(outcome["redpo"]["total"], abs=1e-3)


def test_teacher_videos_are_generated_once_per_prompt_set(two_stages):
    run_dir, _ = two_stages
    keys = {json.loads((run_dir / f"stage{s}" / "pairs" / "tasks.json").read_text())["teacher_key"] for s in (1, 2)}
    dirs = sorted(p.name for p in (run_dir / "teacher").glob("pairs-*"))
    assert dirs == sorted(f"pairs-{k[:16]}" for k in keys)  # one folder per distinct (prompts, seeds, sampler)


def test_a_lost_shard_is_regenerated_alone_and_gives_the_same_pairs(two_stages):
    run_dir, _ = two_stages
    d = run_dir / "stage2"
    before, _ = read_h5(d / "pairs.h5")
    shard = d / "pairs" / "shards" / "task_00001.h5"
    kept = d / "pairs" / "shards" / "task_00000.h5"
    mtime = kept.stat().st_mtime_ns
    shard.unlink()
    (d / "curation.json").unlink()
    r = _stages(run_dir)
    assert r.returncode == 0, r.stderr[-3000:]
    after, _ = read_h5(d / "pairs.h5")
    assert kept.stat().st_mtime_ns == mtime and shard.is_file()
    for k in before:
        assert np.array_equal(before[k], after[k]), k
