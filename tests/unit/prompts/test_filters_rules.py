"""The prompt-set rules of vip/prompts/filters.py at their edges: every listed abbreviation, quoted and
bracketed sentence ends, the masks' types on no prompts, the messages for empty sets, and the inputs
the dynamic-degree metric refuses. Pure functions, no I/O (tests/unit/prompts/test_filters.py has the
paper's cases and the properties; these pin what mutation testing found unpinned, docs/testing.md)."""
import numpy as np
import pytest

from vip.prompts import filters


@pytest.mark.parametrize("abbreviation", sorted(filters.ABBREVIATIONS))
def test_every_listed_abbreviation_does_not_end_a_sentence(abbreviation):
    assert filters.is_single_sentence(f"Then {abbreviation.title()}. Smith waves.")
    assert filters.is_single_sentence(f"Then {abbreviation.upper()}. Smith waves.")
    assert not filters.is_single_sentence(f"Then {abbreviation}x. Smith waves.")  # a longer word is not one


def test_only_quotes_and_brackets_are_stripped_before_an_abbreviation():
    assert not filters.is_single_sentence("A XMs. Smith walks.")  # "xms" is no abbreviation: letters stay
    assert not filters.is_single_sentence(". A dog runs")  # a leading period: nothing before it, still a break


def test_a_real_sentence_end_after_an_abbreviation_still_counts():
    assert not filters.is_single_sentence("Mr. Smith runs. A cat sleeps.")
    assert not filters.is_single_sentence("U.S.A. is big. A cat sleeps.")  # initials: only their own dot is spared


@pytest.mark.parametrize("prompt", ['A "Mr. Smith" walks.', "A (Dr. Who) flies.", "A [St. Paul] stands.",
                                    "A \u201cMt. Fuji\u201d rises.", "A \u2018Mrs. Doubtfire\u2019 walks."])
def test_an_abbreviation_after_an_opening_quote_or_bracket(prompt):
    assert filters.is_single_sentence(prompt)


@pytest.mark.parametrize("prompt", ['He said "Stop." Then he left.', "It ran (fast.) Then it stopped.",
                                    "It ran [fast.] Then it stopped.", "He said \u201cStop.\u201d Then he left.",
                                    "He said \u2018Stop.\u2019 Then he left.", "Stop!! Then go.", "Really?! Yes."])
def test_closing_quotes_and_brackets_after_a_sentence_end(prompt):
    assert not filters.is_single_sentence(prompt)


@pytest.mark.parametrize("prompt, single", [("A dog runs.   ", True), ("A dog runs.\n", True),
                                            ("A dog runs. \u201d", False), ("Wow... ok", False)])
def test_what_follows_a_sentence_end(prompt, single):
    # trailing whitespace is no second sentence; any non-space text after the break is
    assert filters.is_single_sentence(prompt) is single


def test_tokens_are_words_by_their_letters_and_digits():
    assert filters.words("aX dog") == ["aX", "dog"]  # a letter beyond the article is a word
    assert filters.words("The, dog (an) ran") == ["dog", "ran"]  # punctuation around an article: still one
    assert filters.words("- , ... dog") == ["dog"]
    assert filters.words("\u00e9t\u00e9 8k _") == ["\u00e9t\u00e9", "8k", "_"]  # unicode letters, digits, "_" is \w
    assert filters.words("") == []


def test_masks_are_boolean_even_for_no_prompts():
    m = filters.select([], [], [])
    assert set(m) == {*filters.TARGETS, "static", "dynamic"}
    assert all(v.dtype == bool and v.shape == (0,) for v in m.values())


def test_scores_must_match_the_prompts_in_number():
    with pytest.raises(ValueError, match="2 prompts but 2 and 1 scores"):
        filters.select(["a b c d e", "a b c d e"], [3, 3], [3])
    with pytest.raises(ValueError, match="1 prompts but 2 and 2 scores"):
        filters.select(["a b c d e"], [3, 3], [3, 3])


def test_the_sets_are_independent_arrays():
    m = filters.select(["a red car drives fast down the road"], [3], [3])
    m["dynamic_degree"][0] = False
    assert m["temporal_consistency"][0] and m["dynamic"][0]  # copies, not views of one array


def test_scores_are_read_as_integers():
    # an h5 or JSON round trip may hand back integral floats: 3.0 counts as a 3
    assert filters.histogram(np.array([3.0, 2.0, -1.0])) == {"0": 0, "1": 0, "2": 1, "3": 1, "unparseable": 1}
    assert filters.histogram([]) == {"0": 0, "1": 0, "2": 0, "3": 0, "unparseable": 0}


def test_why_empty_names_the_rule():
    assert filters.why_empty("visual_quality") == "no prompt scored 3 on the visual-quality instruction (Listing 2)"
    assert filters.why_empty("dynamic_degree") == "no prompt scored 3 on the dynamic-motion instruction (Listing 1)"
    assert filters.why_empty("temporal_consistency") == ("it uses the dynamic-degree set and no prompt scored 3 on "
                                                         "the dynamic-motion instruction (Listing 1)")
    assert filters.why_empty("text_alignment") == ("no prompt is a single sentence of 5-25 words (articles not "
                                                   "counted) with a non-zero score on both instructions")
    assert filters.why_empty("static") == "set 'static' is empty"


def test_the_metric_needs_one_flat_label_per_video():
    with pytest.raises(ValueError, match=r"got \(1, 1\) videos and \(1, 1\) labels"):
        filters.dynamic_degree_metric([[True]], [[True]])
    with pytest.raises(ValueError, match=r"got \(1,\) videos and \(2,\) labels"):
        filters.dynamic_degree_metric([True], [True, False])
    with pytest.raises(ValueError, match="^dynamic degree of no videos is undefined$"):
        filters.dynamic_degree_metric([], [])


def test_the_metric_reads_truthiness():
    # a detector's 0/1 (or 0/255) output counts as bool: 255 on a dynamic prompt is a match
    assert filters.dynamic_degree_metric(np.array([255, 0]), [True, False]) == 1.0
    assert filters.dynamic_degree_metric([True, False], np.array([255, 0])) == 1.0  # and the labels too
