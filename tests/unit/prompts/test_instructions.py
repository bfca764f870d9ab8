"""The paper's Listings (supplement F) and how an answer is read: request text, hashes, `[RESULT]` parsing."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vip.prompts.instructions import DYNAMIC_MOTION, VISUAL_QUALITY, instruction_sha256, parse_result, request_text, \
    template_sha256



# --- instructions and answers ---------------------------------------------------------------------

def test_listings_are_the_papers():
    for text in (DYNAMIC_MOTION, VISUAL_QUALITY):
        assert text.startswith("###Task Overview:\nYou are a model responsible for scoring prompts")
        assert text.endswith("### Output format:\nAlways return your result in this format:\n"
                             "[RESULT] <a score between 0 and 3>\n")
        assert "\n\n\n" not in text
    assert "- 3: A cyclist racing through a city, dodging traffic." in DYNAMIC_MOTION
    assert "a person\nblinking, tree leaves rustling" in DYNAMIC_MOTION  # the PDF's blank line dropped
    assert "- Score 2: A snow-covered mountain with a few clouds in the sky." in VISUAL_QUALITY


def test_request_text_and_hashes():
    text = request_text(DYNAMIC_MOTION, "a dog\nrunning")
    assert text.startswith(DYNAMIC_MOTION) and text.endswith("### Prompt:\na dog\nrunning")
    assert instruction_sha256("x") == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    assert template_sha256("dynamic_motion") != template_sha256("visual_quality")
    assert template_sha256("dynamic_motion") != instruction_sha256(DYNAMIC_MOTION)  # covers the framing too


@pytest.mark.parametrize("answer, score", [
    ("[RESULT] 3", 3), ("[RESULT] 0", 0), ("[RESULT]2", 2), ("[RESULT]: 1", 1), ("[result] 1", 1),
    ("**[RESULT] 2**", 2), ("[RESULT] **3**", 3), ("[RESULT] 3.", 3), ("[RESULT] 3\n", 3),
    ("The prompt shows running.\n[RESULT] 3", 3),
    ("[RESULT] <a score between 0 and 3>\n[RESULT] 1", 1),  # restated format first: the last tag counts
    ("[RESULT] 1 ... on reflection [RESULT] 2", 2),
    ("[RESULT] 2 then [RESULT] <a score between 0 and 3>", None),  # last tag unreadable: no score
    ("[RESULT] 4", None), ("[RESULT] 10", None), ("[RESULT] -1", None), ("[RESULT] 2.5", None),
    ("[RESULT] 3/3", None), ("[RESULT] three", None), ("[RESULT]", None),
    ("3", None), ("Score: 3", None), ("", None), (None, None),
])
def test_parse_result(answer, score):
    assert parse_result(answer) == score


@given(st.text().filter(lambda t: "[result]" not in t.lower()), st.integers(0, 3))
def test_parse_result_reads_a_final_tag_after_any_text(prefix, k):
    assert parse_result(f"{prefix}[RESULT] {k}") == k


@given(st.text())
def test_parse_result_never_raises_and_stays_in_range(text):
    assert parse_result(text) in (None, 0, 1, 2, 3)
