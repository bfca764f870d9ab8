"""Adaptive leave-one-out (vip.steps.loo.adaptive): same choice as the exhaustive evaluation when
the bounds hold, never more clips than it."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vip.steps.loo.adaptive import adaptive_loo, from_table, intervals, schedule, settled_out
from vip.rewards.base import ASPECTS
from vip.selection import FULL, choose, deltas

A = len(ASPECTS)


def table(unit_means: np.ndarray, n_prompts: int, noise: float, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """scores[variant, prompt, aspect]: the full model at 3.0 plus noise, unit i at 3.0 - unit_means[i]."""
    rng = np.random.default_rng(seed)
    base = 3.0 + noise * rng.standard_normal((n_prompts, A))
    rows = [base] + [base - m + noise * rng.standard_normal((n_prompts, A)) for m in unit_means]
    return np.stack(rows).astype(np.float32), [FULL] + [f"u{i:02d}" for i in range(len(unit_means))]


def exhaustive(scores, variants, k):
    return choose(deltas(scores, variants), k).chosen


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_zero_noise_gives_the_exhaustive_choice_with_no_more_clips(data):
    n_units = data.draw(st.integers(2, 9))
    k = data.draw(st.integers(1, n_units))
    # small integers: many exact ties, where the bounds must not drop a unit too early
    means = np.array(data.draw(st.lists(st.lists(st.integers(-3, 3), min_size=A, max_size=A),
                                        min_size=n_units, max_size=n_units)), dtype=np.float64) / 4
    n_prompts = data.draw(st.integers(1, 40))
    first = data.draw(st.integers(1, 10))
    z = data.draw(st.floats(0.5, 5))
    scores, variants = table(means, n_prompts, noise=0.0)
    r = adaptive_loo(from_table(scores, variants), variants[1:], n_prompts, k, z=z, first=first)
    assert r.selection.chosen == exhaustive(scores, variants, k)
    assert r.clips <= r.exhaustive_clips == len(variants) * n_prompts
    assert r.clips == n_prompts + sum(r.prompts_seen.values())  # full model on every prompt + each unit's


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8), st.integers(2, 50), st.floats(0.0, 1.0), st.integers(0, 10**6), st.integers(1, 9))
def test_noisy_tables_never_cost_more_than_exhaustive(n_units, n_prompts, noise, seed, first):
    means = np.random.default_rng(seed).normal(0, 0.3, (n_units, A))
    scores, variants = table(means, n_prompts, noise, seed)
    r = adaptive_loo(from_table(scores, variants), variants[1:], n_prompts, 1, first=first)
    assert r.clips <= r.exhaustive_clips
    assert all(1 <= n <= n_prompts for n in r.prompts_seen.values())


def test_a_clearly_harmful_unit_stops_after_the_first_round():
    # u00 and u01 harmless (delta 0 +- noise), u02 breaks everything (delta 2 per aspect), k = 1
    means = np.array([[0.0] * A, [0.0] * A, [2.0] * A])
    scores, variants = table(means, 32, noise=0.05, seed=3)
    r = adaptive_loo(from_table(scores, variants), variants[1:], 32, 1, z=3.0, first=8)
    # rounds end at 8, 16, 32 prompts; u02 is scored on the first 8 only
    assert r.prompts_seen == {"u00": 32, "u01": 32, "u02": 8}
    assert r.clips == 32 + 32 + 32 + 8 == 104 and r.exhaustive_clips == 128
    assert r.selection.chosen == exhaustive(scores, variants, 1)


def test_every_unit_is_kept_while_the_bounds_overlap():
    scores, variants = table(np.zeros((4, A)), 16, noise=0.5, seed=1)
    r = adaptive_loo(from_table(scores, variants), variants[1:], 16, 2, z=3.0, first=4)
    assert r.clips == r.exhaustive_clips
    assert r.selection.chosen == exhaustive(scores, variants, 2)


def test_settled_out_needs_both_rankings():
    # unit 2 is certainly last by total but certainly FIRST by TC: its TC slot matters, so it stays
    low = np.array([[0.0, 1.0], [0.1, 1.1], [5.0, -9.0]])
    high = low + 0.01
    assert settled_out(low, high, 1).tolist() == [False, False, False]
    low[2, 1] = 9.0  # now last in both; unit 0 is then certainly first in both (n stops at 1),
    assert settled_out(low, low + 0.01, 1).tolist() == [False, True, True]  # so unit 1 is out too


def test_schedule_doubles_up_to_all_prompts():
    assert schedule(36, 8) == [8, 16, 32, 36]
    assert schedule(32, 8) == [8, 16, 32]
    assert schedule(5, 8) == [5]


def test_k_out_of_range_is_refused():
    scores, variants = table(np.zeros((2, A)), 4, 0.0)
    with pytest.raises(ValueError, match="k=3"):
        adaptive_loo(from_table(scores, variants), variants[1:], 4, 3)


# --- edges pinned for mutation testing (docs/testing.md) ------------------------------------------------

def test_schedule_starts_at_one_prompt_at_least():
    assert schedule(5, 1) == [1, 2, 4, 5]
    assert schedule(3, 0) == [1, 2, 3]


def test_intervals_by_hand():
    diffs = np.array([[1.0, 0.0], [3.0, 0.0], [1.0, 4.0], [3.0, 4.0]])  # 4 prompts: (total, TC)
    mean, low, high = intervals(diffs, z=2.0)
    sd = np.sqrt([4 / 3, 16 / 3])  # ddof=1
    assert mean.tolist() == [2.0, 2.0]
    assert high == pytest.approx(mean + 2.0 * sd / 2.0) and low == pytest.approx(mean - 2.0 * sd / 2.0)
    mean, low, high = intervals(np.array([[1.0, 2.0], [3.0, 2.0]]), z=1.0)  # two prompts: sd / sqrt(2)
    assert low.tolist() == pytest.approx([1.0, 2.0]) and high.tolist() == pytest.approx([3.0, 2.0])
    mean, low, high = intervals(np.array([[1.0, 2.0]]), z=1.0)  # one prompt: nothing is known yet
    assert mean.tolist() == [1.0, 2.0] and low.tolist() == [-np.inf] * 2 and high.tolist() == [np.inf] * 2


def test_a_tie_with_the_last_slot_keeps_a_unit():
    # [0, 0], [0, 1] and [1, 1] in both rankings, k = 1: unit 0's worst rank is 2 (unit 1 may tie it), so
    # n_hat = 2; unit 2's best rank is 2 (only unit 0 is certainly below), not past n_hat: it stays
    low, high = np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    assert settled_out(low, high, 1).tolist() == [False, False, False]


def test_rounds_are_recorded_and_the_defaults_are_z3_first8():
    means = np.array([[0.0] * A, [0.0] * A, [0.5] * A])
    scores, variants = table(means, 32, noise=0.2, seed=0)
    r = adaptive_loo(from_table(scores, variants), variants[1:], 32, 1)
    assert r.rounds == [{"prompts": 8, "active": 2, "clips": 32}, {"prompts": 16, "active": 2, "clips": 56},
                        {"prompts": 32, "active": 2, "clips": 104}]  # no settling after the last round
    assert r.prompts_seen == {"u00": 32, "u01": 32, "u02": 8}
    wider = adaptive_loo(from_table(scores, variants), variants[1:], 32, 1, z=4.0)
    assert wider.clips == 112 != r.clips  # the case tells z = 3 from z = 4


def test_with_nothing_settled_the_deltas_are_the_exhaustive_ones_bit_for_bit():
    scores, variants = table(np.zeros((3, A)), 8, noise=0.5, seed=2)  # float32, as loo.h5 holds them
    r = adaptive_loo(from_table(scores, variants), variants[1:], 8, 1, z=50.0, first=2)
    assert r.clips == r.exhaustive_clips
    assert r.selection.delta == deltas(scores, variants)  # the same float32 table, the same arithmetic


def test_after_the_last_round_no_unit_is_dropped():
    # one round (8 prompts, first=8): every unit is scored on all of them, so none is reported as dropped,
    # though u02 would settle out on these scores
    means = np.array([[0.0] * A, [0.0] * A, [2.0] * A])
    scores, variants = table(means, 8, noise=0.05, seed=3)
    r = adaptive_loo(from_table(scores, variants), variants[1:], 8, 1, z=3.0, first=8)
    assert r.rounds == [{"prompts": 8, "active": 3, "clips": 32}]
    assert r.prompts_seen == {"u00": 8, "u01": 8, "u02": 8}
