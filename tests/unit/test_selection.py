import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vip.config import ConfigError
from vip.rewards.base import ASPECTS
from vip.selection import FULL, TC, choose, deltas, rank


def _delta(total, tc):
    return {u: {"total": total[u], TC: tc[u]} for u in total}


def test_hand_computed_case():
    # total Δ ranks: b(0.0) a(0.1) d(0.2) c(0.3) e(0.4); TC Δ ranks: d(-0.2) c(-0.1) a(0.0) e(0.05) b(0.5)
    total = {"a": 0.1, "b": 0.0, "c": 0.3, "d": 0.2, "e": 0.4}
    tc = {"a": 0.0, "b": 0.5, "c": -0.1, "d": -0.2, "e": 0.05}
    sel = choose(_delta(total, tc), k=2)
    # n=2: {b,a} ∩ {d,c} = {}; n=3: {b,a,d} ∩ {d,c,a} = {a,d} -> k reached
    assert sel.n == 3
    assert sel.chosen == ["a", "d"]  # ordered by total Δ
    assert sel.by_total == ["b", "a", "d", "c", "e"]
    assert sel.by_tc == ["d", "c", "a", "e", "b"]
    # b has the best total but its removal breaks consistency: it is not chosen
    assert "b" not in sel.chosen


def test_intersection_larger_than_k_keeps_best_total():
    total = {"a": 0.0, "b": 0.1, "c": 0.2}
    tc = {"c": 0.0, "b": 0.1, "a": 0.2}
    sel = choose(_delta(total, tc), k=1)
    # n=1: {a} ∩ {c} empty; n=2: {a,b} ∩ {c,b} = {b}
    assert (sel.n, sel.chosen) == (2, ["b"])


def test_ties_are_broken_by_name():
    assert rank({"z": 0.0, "a": 0.0, "m": -1.0}) == ["m", "a", "z"]


def test_deltas_are_full_minus_variant_mean_over_samples():
    scores = np.zeros((3, 2, len(ASPECTS)), dtype=np.float32)
    scores[0] = 3.0  # full
    scores[1] = [[2.0, 3.0, 3.0, 3.0], [2.0, 3.0, 3.0, 3.0]]  # unit u1 loses 1.0 of VQ
    scores[2] = [[3.0, 3.5, 3.0, 3.0], [3.0, 2.5, 3.0, 3.0]]  # unit u2: TC +0.5/-0.5 -> mean 0
    d = deltas(scores, [FULL, "u1", "u2"])
    assert d["u1"]["visual_quality"] == pytest.approx(1.0) and d["u1"]["total"] == pytest.approx(1.0)
    assert d["u2"][TC] == pytest.approx(0.0) and d["u2"]["total"] == pytest.approx(0.0)


def test_deltas_are_per_aspect_and_over_the_samples_a_settled_unit_saw():
    nan = np.nan
    scores = np.array([
        [[4.0, 3.0, 2.0, 1.0], [2.0, 1.0, 4.0, 3.0]],  # full: per-aspect means 3, 2, 3, 2
        [[3.0, 3.0, 2.0, 0.5], [nan, nan, nan, nan]],  # settled after sample 0 (adaptive leave-one-out)
        [[4.0, 2.0, 2.0, 1.0], [2.0, 1.0, 3.0, 3.0]],
    ])
    d = deltas(scores, [FULL, "early", "u"])
    assert [d["early"][a] for a in ASPECTS] == pytest.approx([1.0, 0.0, 0.0, 0.5])  # sample 0 only, both sides
    assert d["early"]["total"] == pytest.approx(1.5)
    assert [d["u"][a] for a in ASPECTS] == pytest.approx([0.0, 0.5, 0.5, 0.0])
    assert set(d) == {"early", "u"}  # the full model has no Δ


def test_the_selection_keeps_the_table_it_chose_from():
    delta = _delta({"a": 0.0, "b": 0.1}, {"a": 0.0, "b": 0.1})
    assert choose(delta, k=1).delta is delta


def test_k_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="select.k"):
        choose(_delta({"a": 0.0}, {"a": 0.0}), k=2)


values = st.floats(-1, 1, allow_nan=False, width=32)


@st.composite
def cases(draw):
    n = draw(st.integers(1, 12))
    units = [f"u{i}" for i in range(n)]
    total = {u: draw(values) for u in units}
    tc = {u: draw(values) for u in units}
    return total, tc, draw(st.integers(1, n))


@settings(max_examples=300, deadline=None)
@given(cases(), st.randoms())
def test_selection_rule_properties(case, rnd):
    total, tc, k = case
    sel = choose(_delta(total, tc), k)
    assert len(sel.chosen) == k == len(set(sel.chosen))
    assert set(sel.chosen) <= set(sel.by_total[:sel.n]) & set(sel.by_tc[:sel.n])
    # n is the smallest that gives k
    assert len(set(sel.by_total[:sel.n - 1]) & set(sel.by_tc[:sel.n - 1])) < k
    # among the intersection, the chosen are the best by total Δ
    common = set(sel.by_total[:sel.n]) & set(sel.by_tc[:sel.n])
    worst_chosen = max(sel.by_total.index(u) for u in sel.chosen)
    assert all(sel.by_total.index(u) > worst_chosen for u in common - set(sel.chosen))
    # independent of the order the table is given in
    items = list(_delta(total, tc).items())
    rnd.shuffle(items)
    assert choose(dict(items), k).chosen == sel.chosen
