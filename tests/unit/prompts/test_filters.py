"""Prompt filtering rules (supplement F, C.3): the text-alignment wording rule, the sets, the dynamic-degree metric."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vip.prompts import filters



# --- the text-alignment wording rule ------------------------------------------------------------------

@pytest.mark.parametrize("prompt, n", [
    ("a dog runs", 2), ("The dog runs across an open field", 5), ("A THE an dog", 1),
    ("a snow-covered mountain , at dawn", 4), ("photorealistic 8k shot - steam", 4),
    ("\"The\" cat (a) sits", 2), ("thea anthem", 2),  # only whole-word articles are dropped
])
def test_words_drop_articles_and_punctuation(prompt, n):
    assert len(filters.words(prompt)) == n


@pytest.mark.parametrize("prompt, single", [
    ("A dog runs.", True), ("A dog runs!", True), ("A dog runs...", True), ("A dog runs", True),
    ("A dog runs. A cat sleeps", False), ("A dog runs! Then stops.", False), ("Why? Because.", False),
    ("A dog runs; a cat sleeps, quietly", True), ("Mr. Smith walks his dog.", True),
    ("Dr. Who flies, e.g. over St. Paul's.", True), ("J. R. R. Tolkien writes.", True),
    ("A 2.5 m tall robot walks in the U.S.A. at night", True), ("A dog\nruns across\nthe field", True),
    ("\"Run.\" he said", False), ("A dog runs.\nA cat sleeps.", False),
])
def test_single_sentence(prompt, single):
    assert filters.is_single_sentence(prompt) is single


def _sentence(n: int) -> str:
    return "the " + " ".join(f"w{i}" for i in range(n)) + "."


@pytest.mark.parametrize("n, ok", [(4, False), (5, True), (25, True), (26, False)])
def test_text_alignment_word_bounds_are_inclusive(n, ok):
    assert filters.text_alignment_ok(_sentence(n)) is ok
    assert filters.text_alignment_ok("A an the " + _sentence(n)) is ok  # articles never count


def test_text_alignment_rejects_two_sentences_of_the_right_length():
    assert not filters.text_alignment_ok("A dog runs in the park. A cat sleeps on the mat.")


_word = st.text(alphabet="bcdefghijklmnopqrstuvwxyz", min_size=2, max_size=8).filter(lambda w: w not in filters.ARTICLES)


@settings(max_examples=60)
@given(st.lists(_word, min_size=1, max_size=30), st.lists(st.sampled_from(["a", "an", "the", "A", "The"]),
                                                          max_size=5))
def test_articles_never_change_the_rule(content, articles):
    plain = " ".join(content)
    padded = " ".join(articles + content)
    assert len(filters.words(padded)) == len(content)
    assert filters.text_alignment_ok(padded) == filters.text_alignment_ok(plain) == (5 <= len(content) <= 25)


# --- sets and the dynamic-degree metric ---------------------------------------------------------------

def test_sets_follow_the_rules():
    prompts = ["a red car drives fast down the road"] * 6 + ["two. sentences here are not one"]
    dm = [3, 2, 1, 0, -1, 3, 3]
    vq = [3, 1, 3, 3, 3, 0, 2]
    m = filters.select(prompts, dm, vq)
    assert m["dynamic_degree"].tolist() == [True, False, False, False, False, True, True]
    assert m["temporal_consistency"].tolist() == m["dynamic_degree"].tolist()
    assert m["visual_quality"].tolist() == [True, False, True, True, True, False, False]
    assert m["text_alignment"].tolist() == [True, True, True, False, False, False, False]  # 0/-1 anywhere: out
    assert m["static"].tolist() == [False, True, True, False, False, False, False]
    assert m["dynamic"].tolist() == m["dynamic_degree"].tolist()
    assert not (m["static"] & m["dynamic"]).any()
    with pytest.raises(ValueError):
        filters.select(prompts, dm[:-1], vq)


@settings(max_examples=60)
@given(st.lists(st.tuples(st.integers(-1, 3), st.integers(-1, 3)), min_size=1, max_size=40))
def test_set_properties(scores):
    dm, vq = [s[0] for s in scores], [s[1] for s in scores]
    m = filters.select(["a dog runs in the park"] * len(scores), dm, vq)
    assert (m["dynamic"] | m["static"]).sum() == sum(1 <= d <= 3 for d in dm)  # 0 and unparseable in neither
    assert not (m["text_alignment"] & ((np.array(dm) < 1) | (np.array(vq) < 1))).any()
    assert (m["visual_quality"] == (np.array(vq) == 3)).all()


def test_histogram_counts_unparseable():
    assert filters.histogram([3, 3, 1, -1, 0]) == {"0": 1, "1": 1, "2": 0, "3": 2, "unparseable": 1}


def test_dynamic_degree_metric_by_hand():
    # prompts: D D D S S ; videos: dyn, static, dyn, static, dyn -> matches: 1 0 1 1 0 = 3/5
    assert filters.dynamic_degree_metric([True, False, True, False, True], [True, True, True, False, False]) == 0.6
    assert filters.dynamic_degree_metric([True], [True]) == 1.0
    assert filters.dynamic_degree_metric([False, False], [True, True]) == 0.0
    with pytest.raises(ValueError):
        filters.dynamic_degree_metric([], [])
    with pytest.raises(ValueError):
        filters.dynamic_degree_metric([True], [True, False])


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=50))
def test_dynamic_degree_metric_properties(pairs):
    v, p = [a for a, _ in pairs], [b for _, b in pairs]
    dd = filters.dynamic_degree_metric(v, p)
    assert 0.0 <= dd <= 1.0
    assert dd == pytest.approx(1.0 - filters.dynamic_degree_metric([not x for x in v], p))
    assert filters.dynamic_degree_metric(p, p) == 1.0
