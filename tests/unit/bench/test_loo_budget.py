"""The leave-one-out budget study (vip/bench/loo_budget.py): its agreement, Kendall's tau and cost on
hand-made tables, and the whole study on the shipped teacher at a tiny size (3 units, 4 prompts, 2 steps)."""
import json
import math

import numpy as np
import pytest

from vip.bench import loo_budget as lb
from vip.selection import FULL

VARIANTS = [FULL, "a", "b", "c"]


def harm_table(harms: dict[str, float], prompts: int = 4) -> np.ndarray:
    """scores[variant, prompt, aspect]: the full model 3.0 everywhere, unit u 3 - h_u on visual quality and
    temporal consistency (so its total Δ is 2 h_u and its TC Δ h_u) on every prompt."""
    t = np.full((len(VARIANTS), prompts, 4), 3.0, dtype=np.float32)
    for i, u in enumerate(VARIANTS[1:], 1):
        t[i, :, :2] -= harms[u]
    return t


def test_kendall_tau_by_hand():
    assert lb.kendall_tau([1, 2, 3, 4], [1, 2, 3, 4]) == 1.0
    assert lb.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    assert lb.kendall_tau([1, 2, 3, 4], [1, 2, 4, 3]) == pytest.approx(4 / 6)  # 5 concordant pairs, 1 discordant
    assert lb.kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(2 * 3))  # tau-b: a tie in a
    assert math.isnan(lb.kendall_tau([1, 1, 1], [1, 2, 3]))
    try:  # scipy is no dependency of vip; where it is installed, the same values
        from scipy.stats import kendalltau
    except ImportError:
        return
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 12), rng.integers(0, 4, 12)
    assert lb.kendall_tau(a, b) == pytest.approx(kendalltau(a, b).statistic)


def test_analyse_hand_tables_agree_and_differ():
    ref, cheap, other = lb.Gen("ddim", 2), lb.Gen("ddim", 1), lb.Gen("dpm++", 1)
    tables = {("M1", 0): {"variants": VARIANTS, "scores": {
        ref: harm_table({"a": 0.1, "b": 0.2, "c": 0.3}),
        cheap: harm_table({"a": 0.1, "b": 0.05, "c": 0.3}),  # b now looks least harmful: another choice
        other: harm_table({"a": 0.2, "b": 0.4, "c": 0.6}),  # every Δ doubled: the same ranking and choice
    }}}
    out = lb.analyse(tables, ref, k=1, prompt_counts=(2,), adaptive=((2.0, 2),))
    rows = {r["setting"]: r for r in out["per_table"]}

    r = rows["ddim-2 p4"]  # the reference against itself
    assert (r["same"], r["tau_total"], r["tau_tc"], r["cost"], r["chosen"]) == (True, 1.0, 1.0, 1.0, ["a"])
    r = rows["ddim-1 p4"]
    assert r["chosen"] == ["b"] and r["reference"] == ["a"] and not r["same"]
    # total Δ ranks b < a < c against a < b < c: pairs (a,b) discordant, (a,c), (b,c) concordant
    assert r["tau_total"] == pytest.approx(1 / 3) and r["tau_tc"] == pytest.approx(1 / 3)
    assert r["cost"] == pytest.approx(0.5)  # 16 clips x 1 step against 16 x 2
    r = rows["dpm++-1 p2"]
    assert r["same"] and r["tau_total"] == 1.0 and r["cost"] == pytest.approx(0.25)  # 8 clips x 1 step
    # adaptive on noiseless Δs: b and c settle out after the first round of 2 prompts; full and a see all 4
    r = rows["ddim-2 p4 adaptive z=2 first=2"]
    assert r["same"] and r["clips"] == 4 * 2 + 2 * 2 and r["cost"] == pytest.approx(12 / 16)

    summ = {s["setting"]: s for s in out["summary"]}
    assert summ["ddim-1 p4"]["same"] == 0 and summ["ddim-1 p4"]["differ_on"] == ["M1/seed 0"]
    assert summ["dpm++-1 p2"]["same"] == 1
    best = lb.cheapest(out["summary"], 1)
    assert best["setting"] == "dpm++-1 p2 adaptive z=2 first=2" or best["setting"] == "dpm++-1 p2"
    assert best["max_cost"] <= 0.25
    assert lb.cheapest(out["summary"], 2) is None  # measured on one table of two: never adopted


def test_study_runs_on_the_teacher_tiny():
    from vip.models.motion_unet import MotionUNetModel
    from vip.models.registry import SHIPPED_TEACHER

    all_units = MotionUNetModel.load(SHIPPED_TEACHER).units()[:3]
    out = lb.study("configs/toyvid.yaml", ["prompts.eval_count=4", "model.steps=2", "runtime.progress=false"],
                   seeds=(0,), workers=0, stages=2, gens=[("ddim", 1, 2)], units=all_units, k=1,
                   prompt_counts=(2,), adaptive=((2.0, 2),), log=lambda m: None)
    assert out["reference"] == "ddim-2" and out["tables"] == ["M1 (the teacher)/seed 0", "M2 stand-in (untrained)/seed 0"]
    m2 = out["raw"]["M2 stand-in (untrained)|0"]
    assert len(m2["removed"]) == 1 and m2["removed"][0] in all_units and len(m2["variants"]) == 3
    assert set(out["raw"]["M1 (the teacher)|0"]["scores"]) == {"ddim-2", "ddim-1", "ddim-2/f4"}
    summ = {s["setting"]: s for s in out["summary"]}
    assert summ["ddim-2 p4"]["same"] == 2 and summ["ddim-2 p4"]["tau_total"] == 1.0 and summ["ddim-2 p4"]["cost"] == 1.0
    assert summ["ddim-1 p2"]["cost"] == pytest.approx(0.25)
    t = np.asarray(out["raw"]["M1 (the teacher)|0"]["scores"]["ddim-2"])
    assert t.shape == (4, 4, 4) and t.std() > 0  # scores vary
    # the dump re-analysed gives the same summary
    dump = json.loads(json.dumps(out, default=str))
    again = lb.from_raw(dump["raw"], dump["reference"], dump["k"], prompt_counts=(2,), adaptive=((2.0, 2),))
    assert [(s["setting"], s["same"], round(s["tau_total"], 6)) for s in again["summary"]] == \
        [(s["setting"], s["same"], round(s["tau_total"], 6)) for s in out["summary"]]
    # an earlier dump's rows are reused, not generated again
    same = lb.study("configs/toyvid.yaml", ["prompts.eval_count=4", "model.steps=2", "runtime.progress=false"],
                    seeds=(0,), workers=0, stages=2, gens=[("ddim", 1, 2)], units=all_units, k=1,
                    prompt_counts=(2,), adaptive=((2.0, 2),), reuse=dump["raw"], log=lambda m: None)
    assert (same["tasks_done"], same["tasks_reused"]) == (0, 4 * 2 + 3 * 2)
    assert same["raw"] == dump["raw"] and same["summary"] == out["summary"]
