"""The other half of the curation properties (tests/unit/test_curation.py checks that every kept pair
obeys the rules): every rejected pair breaks at least one rule, and each rule's rejection count is the
number of pairs that break it. The rules are written out again here, pair by pair in plain Python,
from the text of supplement C.2 (vip/curation.py's docstring), shared reward outputs included."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from vip.curation import RULES, curate
from vip.rewards.base import ASPECTS

# scores on a 0.25 grid: ties between gaps and scores on the floor are frequent, not rare
scores = arrays(np.float64, st.tuples(st.integers(1, 12), st.just(len(ASPECTS))),
                elements=st.integers(4, 16).map(lambda k: k / 4))
target_sets = st.lists(st.sampled_from(ASPECTS), min_size=1, max_size=3, unique=True)
# which reward output each aspect copies: none, or some aspects sharing one (VideoReward's MQ fills TC and DD)
source_maps = st.dictionaries(st.sampled_from(ASPECTS), st.sampled_from(["out_a", "out_b"]), max_size=len(ASPECTS))


def broken_rules(s_w, s_l, i, targets, alpha, sources) -> set[str]:
    """The rules pair i breaks."""
    t = [ASPECTS.index(a) for a in targets]
    shared = {sources.get(a, a) for a in targets}
    rivals = [j for j, a in enumerate(ASPECTS) if j not in t and sources.get(a, a) not in shared]
    gap = [float(s_w[i, j] - s_l[i, j]) for j in range(len(ASPECTS))]
    broken = set()
    if not all(gap[j] > 0 for j in t):
        broken.add("target_not_better")
    # the floor of each target over the candidate unpreferred set (numpy's mean and population std)
    if not all(s_l[i, j] >= s_l[:, j].mean() - alpha * s_l[:, j].std() for j in t):
        broken.add("below_floor")
    if not all(gap[j] > gap[r] for j in t for r in rivals):
        broken.add("gap_not_largest")
    return broken


@settings(max_examples=200, deadline=None)
@given(scores, st.data(), target_sets, st.sampled_from([0.0, 0.3, 1.0, 2.5]), source_maps)
def test_every_rejected_pair_breaks_a_rule_and_the_counts_are_the_breakers(s_l, data, targets, alpha, sources):
    s_w = data.draw(arrays(np.float64, s_l.shape, elements=st.integers(4, 16).map(lambda k: k / 4)))
    c = curate(s_w, s_l, targets, alpha, sources)
    broken = [broken_rules(s_w, s_l, i, targets, alpha, sources) for i in range(len(s_l))]
    for i in np.flatnonzero(~c.keep):
        assert broken[i], f"pair {i} was rejected but breaks no rule"
    for i in np.flatnonzero(c.keep):
        assert not broken[i], f"pair {i} was kept but breaks {sorted(broken[i])}"
    assert c.rejected == {r: sum(r in b for b in broken) for r in RULES}


def test_each_rule_alone_rejects_a_pair():
    """One pair per rule that breaks only that rule (so the property above sees each rule reject)."""
    vq, tc = ASPECTS.index("visual_quality"), ASPECTS.index("temporal_consistency")
    s_l = np.full((4, len(ASPECTS)), 2.0)
    s_w = s_l.copy()
    s_w[:, vq] += 1.0  # every target gap 1, every other gap 0
    s_w[1] = 1.5  # pair 1: the target does not improve (gap 0), though still more than the others (-0.5)
    s_w[1, vq] = s_l[1, vq]
    s_l[2, vq], s_w[2, vq] = 0.5, 1.5  # pair 2: a loser below the floor (1.625 - 0.3 * 0.65), gap still 1
    s_w[3, tc] += 1.0  # pair 3: another aspect's gap ties the target's
    c = curate(s_w, s_l, ["visual_quality"], 0.3)
    assert c.keep.tolist() == [True, False, False, False]
    assert [broken_rules(s_w, s_l, i, ["visual_quality"], 0.3, {}) for i in range(4)] == \
        [set(), {"target_not_better"}, {"below_floor"}, {"gap_not_largest"}]
    assert c.rejected == {"target_not_better": 1, "below_floor": 1, "gap_not_largest": 1}
