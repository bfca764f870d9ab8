import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vip.curation import choose_targets, curate, curate_with_fallback
from vip.rewards.base import ASPECTS

VQ, TC, DD, TA = range(4)


def test_single_target_is_the_largest_drop():
    drop = {"visual_quality": 0.1, "temporal_consistency": 0.4, "dynamic_degree": -0.2, "text_alignment": 0.3}
    assert choose_targets(drop) == ["temporal_consistency"]


def test_multi_target_takes_every_drop_past_the_threshold_largest_first():
    drop = {"visual_quality": 0.25, "temporal_consistency": 0.4, "dynamic_degree": -0.2, "text_alignment": 0.1}
    assert choose_targets(drop, threshold=0.2) == ["temporal_consistency", "visual_quality"]
    assert choose_targets(drop, threshold=0.5) == ["temporal_consistency"]  # none passes: the largest drop


def _fallback_world():
    """8 candidates: TC never passes the gap rule (VQ's gap is larger everywhere); TA's gap is the largest on 4,
    VQ's on the other 4."""
    s_l = np.full((8, 4), 2.0)
    s_w = s_l + np.array([0.5, 0.2, 0.0, 0.0])
    s_w[:4, TA] += 0.6  # TA's gap is the largest on 4 of them
    return s_w, s_l


def test_a_target_with_too_few_pairs_falls_back_to_the_next_drop_that_has_them():
    s_w, s_l = _fallback_world()
    drop = {"visual_quality": 0.3, "temporal_consistency": 0.5, "dynamic_degree": -0.1, "text_alignment": 0.4}
    targets, c, tried = curate_with_fallback(s_w, s_l, ["temporal_consistency"], drop, alpha=10.0, min_pairs=4)
    # TA (the next drop) keeps its 4 pairs before VQ (a smaller drop) is tried
    assert targets == ["text_alignment"] and c.kept == 4
    assert tried == {"temporal_consistency": 0, "text_alignment": 4}
    # none keeps 5: the primary target stays (the stage then skips training), every dropped aspect was tried
    targets, c, tried = curate_with_fallback(s_w, s_l, ["temporal_consistency"], drop, alpha=10.0, min_pairs=5)
    assert targets == ["temporal_consistency"] and c.kept == 0
    assert tried == {"temporal_consistency": 0, "text_alignment": 4, "visual_quality": 4}


def test_the_fallback_keeps_the_target_when_it_has_enough_never_uses_an_aspect_that_did_not_drop():
    s_w, s_l = _fallback_world()
    drop = {"visual_quality": -0.2, "temporal_consistency": 0.5, "dynamic_degree": -0.1, "text_alignment": 0.4}
    # enough pairs: nothing else is tried
    assert curate_with_fallback(s_w, s_l, ["text_alignment"], drop, 10.0, min_pairs=4)[2] == {"text_alignment": 4}
    # VQ keeps 8 but did not drop: never a target; TA keeps too few, so TC (the primary) stays
    targets, c, tried = curate_with_fallback(s_w, s_l, ["temporal_consistency"], drop, 10.0, min_pairs=6)
    assert targets == ["temporal_consistency"] and c.kept == 0 and "visual_quality" not in tried
    # min_pairs 0 (curate.fallback=false) and several targets never fall back
    assert curate_with_fallback(s_w, s_l, ["temporal_consistency"], drop, 10.0, min_pairs=0)[0] == ["temporal_consistency"]
    assert curate_with_fallback(s_w, s_l, ["temporal_consistency", "text_alignment"], drop, 10.0, 6)[0] == \
        ["temporal_consistency", "text_alignment"]


def test_the_fallback_goes_by_the_drops_not_by_the_aspects_names():
    s_w, s_l = _fallback_world()
    # VQ dropped more than TA: VQ is tried first (alphabetical order would try TA first)
    drop = {"visual_quality": 0.45, "temporal_consistency": 0.5, "dynamic_degree": -0.1, "text_alignment": 0.4}
    targets, _, tried = curate_with_fallback(s_w, s_l, ["temporal_consistency"], drop, 10.0, min_pairs=4)
    assert targets == ["visual_quality"] and tried == {"temporal_consistency": 0, "visual_quality": 4}
    # an aspect missing from the drops, or whose drop is exactly 0, did not drop: never a target
    for missing in ({k: v for k, v in drop.items() if k != "visual_quality"}, {**drop, "visual_quality": 0.0}):
        targets, _, tried = curate_with_fallback(s_w, s_l, ["temporal_consistency"], missing, 10.0, min_pairs=4)
        assert targets == ["text_alignment"] and "visual_quality" not in tried
        # nothing reaches 5: every aspect that dropped is tried, and only those
        tried = curate_with_fallback(s_w, s_l, ["temporal_consistency"], missing, 10.0, min_pairs=5)[2]
        assert tried == {"temporal_consistency": 0, "text_alignment": 4}


def test_the_fallback_passes_the_rewards_shared_outputs_on():
    """VideoReward's MQ fills TC and DD: with the sources, DD's copy of TC's gap is not another aspect's gap."""
    s_l = np.full((4, 4), 2.0)
    s_w = s_l + np.array([0.0, 0.5, 0.5, 0.1])  # VQ no gap, TC and DD the same gap (one output), TA small
    sources = {"temporal_consistency": "mq", "dynamic_degree": "mq"}
    drop = {"visual_quality": 0.6, "temporal_consistency": 0.3, "dynamic_degree": 0.3, "text_alignment": 0.1}
    # the primary VQ keeps nothing (no gap); TC, the next drop, keeps all 4 only with the sources
    targets, c, _ = curate_with_fallback(s_w, s_l, ["visual_quality"], drop, 10.0, min_pairs=4, sources=sources)
    assert targets == ["temporal_consistency"] and c.kept == 4
    assert curate_with_fallback(s_w, s_l, ["visual_quality"], drop, 10.0, min_pairs=4)[0] == ["visual_quality"]
    # and the primary target is curated with them too (it keeps its 4: nothing else is tried)
    targets, c, tried = curate_with_fallback(s_w, s_l, ["temporal_consistency"], drop, 10.0, 4, sources)
    assert targets == ["temporal_consistency"] and c.kept == 4 and tried == {"temporal_consistency": 4}
    # several targets are tried as one, under one key
    assert curate_with_fallback(s_w, s_l, ["temporal_consistency", "text_alignment"], drop, 10.0, 4, sources)[2] == \
        {"temporal_consistency,text_alignment": 4}


def test_alpha_floor_and_gap_rule_by_hand():
    # unpreferred VQ scores 1, 2, 3, 4: mean 2.5, std sqrt(1.25) = 1.118; floor at alpha 0.3 = 2.1646
    s_l = np.array([[1.0, 3, 3, 3], [2.0, 3, 3, 3], [3.0, 3, 3, 3], [4.0, 3, 3, 3]])
    s_w = s_l.copy()
    s_w[:, VQ] += [1.0, 1.0, 1.0, 1.0]  # target gap 1 everywhere
    s_w[2, TC] += 1.5  # pair 2: TC gap 1.5 beats the target gap
    c = curate(s_w, s_l, ["visual_quality"], alpha=0.3)
    assert c.floors["visual_quality"] == pytest.approx(2.5 - 0.3 * np.sqrt(1.25))
    assert c.keep.tolist() == [False, False, False, True]  # 0, 1 below the floor; 2 fails the gap rule
    assert c.rejected == {"target_not_better": 0, "below_floor": 2, "gap_not_largest": 1}
    # a larger alpha lowers the floor to 2.5 - 1.118 = 1.38: pair 1 comes in
    assert curate(s_w, s_l, ["visual_quality"], alpha=1.0).keep.tolist() == [False, True, False, True]


def test_a_gap_tied_with_another_aspect_is_not_larger():
    s_l = np.full((2, 4), 2.0)
    s_w = s_l + np.array([[0.5, 0.5, 0, 0], [0.5, 0.4, 0, 0]])
    assert curate(s_w, s_l, ["visual_quality"], alpha=10).keep.tolist() == [False, True]


def test_preferred_must_be_better_in_the_target_even_if_every_gap_is_negative():
    s_l = np.full((1, 4), 3.0)
    s_w = s_l - np.array([[0.1, 0.5, 0.5, 0.5]])  # the target gap is the largest, but negative
    c = curate(s_w, s_l, ["visual_quality"], alpha=10)
    assert not c.keep[0] and c.rejected["target_not_better"] == 1


def test_multi_target_needs_both_targets_to_dominate():
    s_l = np.full((2, 4), 2.0)
    s_w = s_l + np.array([[0.6, 0.5, 0.1, 0.0], [0.6, 0.05, 0.1, 0.0]])
    assert curate(s_w, s_l, ["visual_quality", "temporal_consistency"], alpha=10).keep.tolist() == [True, False]


scores = arrays(np.float64, st.tuples(st.integers(1, 30), st.just(len(ASPECTS))),
                elements=st.floats(1.0, 4.0, allow_nan=False)).map(lambda a: np.round(a, 2))
target_sets = st.lists(st.sampled_from(ASPECTS), min_size=1, max_size=3, unique=True)


@settings(max_examples=200, deadline=None)
@given(scores, st.data(), target_sets, st.floats(0, 3))
def test_no_kept_pair_breaks_a_rule(s_l, data, targets, alpha):
    s_w = data.draw(arrays(np.float64, s_l.shape, elements=st.floats(1.0, 4.0)).map(lambda a: np.round(a, 2)))
    c = curate(s_w, s_l, targets, alpha)
    gap = s_w - s_l
    t = [ASPECTS.index(a) for a in targets]
    others = [i for i in range(len(ASPECTS)) if i not in t]
    for i in np.flatnonzero(c.keep):
        for a, j in zip(targets, t):
            assert s_l[i, j] >= s_l[:, j].mean() - alpha * s_l[:, j].std() - 1e-12
            assert gap[i, j] > 0
            assert all(gap[i, j] > gap[i, o] for o in others)
    assert c.kept + max(c.rejected.values()) <= len(s_l)


@settings(max_examples=200, deadline=None)
@given(scores, st.data(), target_sets, st.floats(0, 2), st.floats(0, 2))
def test_a_larger_alpha_never_keeps_fewer_pairs(s_l, data, targets, a1, a2):
    s_w = data.draw(arrays(np.float64, s_l.shape, elements=st.floats(1.0, 4.0)))
    small, large = sorted([a1, a2])
    kept_small = curate(s_w, s_l, targets, small).keep
    kept_large = curate(s_w, s_l, targets, large).keep
    assert kept_large.sum() >= kept_small.sum()
    assert not (kept_small & ~kept_large).any()  # and it keeps every pair the smaller alpha kept


def test_an_aspect_copying_the_targets_reward_output_is_not_a_rival():
    # VideoReward's MQ fills temporal_consistency and dynamic_degree: their gaps always tie.
    from vip.rewards.base import ASPECTS
    from vip.rewards.registry import aspect_sources
    tc, dd = ASPECTS.index("temporal_consistency"), ASPECTS.index("dynamic_degree")
    w = np.full((3, len(ASPECTS)), 3.0)
    l = np.full((3, len(ASPECTS)), 3.0)
    l[:, tc] = l[:, dd] = [2.0, 2.5, 2.8]  # target gaps 1.0, 0.5, 0.2, copied into DD
    l[2, ASPECTS.index("visual_quality")] = 2.5  # pair 2: a real rival (VQ gap 0.5 > 0.2)
    sources = aspect_sources("videoreward")
    assert sources["temporal_consistency"] == sources["dynamic_degree"]
    plain = curate(w, l, ["temporal_consistency"], alpha=10.0)
    shared = curate(w, l, ["temporal_consistency"], alpha=10.0, sources=sources)
    assert plain.keep.tolist() == [False, False, False]  # the tie with its own copy rejects every pair
    assert shared.keep.tolist() == [True, True, False]  # only the pair with a genuine rival goes
    assert aspect_sources("toyvid_score") == {}


# --- edges pinned for mutation testing (docs/testing.md) ------------------------------------------------

def test_the_default_is_one_target_and_the_threshold_is_inclusive():
    drop = {"visual_quality": 1.5, "temporal_consistency": 2.0, "dynamic_degree": 1.25, "text_alignment": -0.5}
    assert choose_targets(drop) == ["temporal_consistency"]  # threshold 0: only the largest, however many pass 1
    assert choose_targets(drop, threshold=1.25) == ["temporal_consistency", "visual_quality", "dynamic_degree"]


@pytest.mark.parametrize("w_shape, l_shape", [((2, 4), (3, 4)), ((2, 4, 1), (2, 4, 1)), ((2, 3), (2, 3))])
def test_scores_of_the_wrong_shape_are_refused_by_name(w_shape, l_shape):
    with pytest.raises(ValueError) as e:
        curate(np.zeros(w_shape), np.zeros(l_shape), ["visual_quality"], alpha=0.3)
    assert str(e.value) == f"scores must both be [N, 4], got {w_shape} and {l_shape}"


def test_no_target_is_refused():
    with pytest.raises(ValueError) as e:
        curate(np.zeros((1, 4)), np.zeros((1, 4)), [], alpha=0.3)
    assert str(e.value) == "at least one target aspect is needed"


def test_no_candidates_give_nan_floors_quietly():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "mean of empty slice"
        c = curate(np.zeros((0, 4)), np.zeros((0, 4)), ["visual_quality", "text_alignment"], alpha=0.3)
    assert c.kept == 0 and c.keep.shape == (0,)
    assert list(c.floors) == ["visual_quality", "text_alignment"] and all(np.isnan(v) for v in c.floors.values())
    assert c.rejected == {"target_not_better": 0, "below_floor": 0, "gap_not_largest": 0}


@pytest.mark.parametrize("sources", [{"dynamic_degree": "temporal_consistency"},  # DD copies TC's own output
                                     {"temporal_consistency": "dynamic_degree"}])  # TC copies DD's own output
def test_an_aspect_sharing_the_targets_output_by_its_name_is_not_a_rival(sources):
    l = np.full((1, 4), 2.0)
    w = l + np.array([[0.0, 0.5, 0.9, 0.0]])  # DD's gap beats the target's (TC) gap
    assert curate(w, l, ["temporal_consistency"], alpha=10.0).keep.tolist() == [False]
    assert curate(w, l, ["temporal_consistency"], alpha=10.0, sources=sources).keep.tolist() == [True]


def test_rejection_report_lists_every_rule():
    from vip.curation import Curation, rejection_report
    c = Curation(np.array([True, False, False]), {}, {"target_not_better": 1, "below_floor": 0, "gap_not_largest": 2})
    assert rejection_report(c, 3) == ("kept 1 of 3 candidate pairs\n"
                                      "  rejected    1: preferred not better than unpreferred in the target\n"
                                      "  rejected    0: unpreferred target score below mean - alpha*std\n"
                                      "  rejected    2: target gap not larger than every other aspect's gap")
