"""Prompt sets from LLM scores (supplement F) and C.3's dynamic-degree metric: pure rules, no I/O.

Scores are 0-3 per prompt and instruction; UNPARSEABLE (-1) marks an answer without a score,
which no rule counts as a score (it is neither "3" nor "non-zero").

    dynamic_degree        score 3 on Listing 1 (dynamic motion)                 F.1
    visual_quality        score 3 on Listing 2 (visual quality)                 F.2
    text_alignment        one sentence of 5-25 words (articles not counted),    F.3
                          scored 1-3 by both instructions
    temporal_consistency  = dynamic_degree (the paper has no TC filter; docs/decisions.md)
    static / dynamic      Listing 1 score 1-2 / 3 (C.3); 0 and unparseable in neither
"""
from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

UNPARSEABLE = -1
TARGETS: tuple[str, ...] = ("visual_quality", "temporal_consistency", "dynamic_degree", "text_alignment")
ARTICLES = frozenset({"a", "an", "the"})
MIN_WORDS, MAX_WORDS = 5, 25

# A period after one of these, after a single letter ("J. R. R. Tolkien") or after an initialism
# ("U.S.A.", "e.g.") does not end a sentence.
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "prof", "sr", "jr", "vs", "etc", "mt"})
_INITIALS = re.compile(r"^(?:[^\W\d_]\.)*[^\W\d_]$")  # "j", "u.s.a", "e.g": single letters between dots
# Sentence-ending punctuation, optional closing quotes or brackets, whitespace, then more text.
_BREAK = re.compile(r"([.!?]+)[\"'\u201d\u2019)\]]*\s+(?=\S)")
_WORD = re.compile(r"\w", re.UNICODE)


def words(prompt: str) -> list[str]:
    """Whitespace-separated tokens with at least one letter or digit (so "-" or "," alone are not
    words; "snow-covered" and "8k" are one word each), articles excluded (any case)."""
    out = []
    for token in prompt.split():
        if _WORD.search(token) and token.strip(".,;:!?\"'()[]{}\u201c\u201d\u2018\u2019").lower() not in ARTICLES:
            out.append(token)
    return out


def is_single_sentence(prompt: str) -> bool:
    """True unless sentence-ending punctuation (. ! ?) followed by whitespace has more text after it.
    A trailing period is fine; line breaks are just whitespace. A period after a listed abbreviation
    ("Mr.", "Dr.", "St.") or after initials ("J.", "U.S.A.", "e.g.") is not a sentence end, and "2.5"
    has no space after its dot. Semicolons and commas never end a sentence. Deliberately simple: a
    sentence that really ends in "U.S.A." followed by another one is read as one sentence."""
    text = " ".join(prompt.split())
    for m in _BREAK.finditer(text):
        if m.group(1) == ".":
            before = text[:m.start()].split(" ")[-1].lstrip("\"'(\u201c\u2018[").lower()
            if before in ABBREVIATIONS or _INITIALS.match(before):
                continue
        return False
    return True


def text_alignment_ok(prompt: str) -> bool:
    """F.3's wording rule: a single sentence of MIN_WORDS to MAX_WORDS words, articles not counted."""
    return is_single_sentence(prompt) and MIN_WORDS <= len(words(prompt)) <= MAX_WORDS


def _scores(values: Sequence[int] | np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def select(prompts: Sequence[str], dynamic_motion: Sequence[int], visual_quality: Sequence[int]) -> dict[str, np.ndarray]:
    """Boolean masks over the prompts, one per set: the four TARGETS plus "static" and "dynamic"."""
    dm, vq = _scores(dynamic_motion), _scores(visual_quality)
    if not (len(prompts) == len(dm) == len(vq)):
        raise ValueError(f"{len(prompts)} prompts but {len(dm)} and {len(vq)} scores")
    dd = dm == 3
    usable = (dm >= 1) & (vq >= 1)  # non-zero and parsed on both instructions
    wording = np.array([text_alignment_ok(p) for p in prompts], dtype=bool)
    return {
        "visual_quality": vq == 3,
        "temporal_consistency": dd.copy(),
        "dynamic_degree": dd,
        "text_alignment": usable & wording,
        "static": (dm == 1) | (dm == 2),
        "dynamic": dd.copy(),
    }


def why_empty(name: str) -> str:
    """Which rule a set comes from, for the error when it selects nothing."""
    return {
        "visual_quality": "no prompt scored 3 on the visual-quality instruction (Listing 2)",
        "dynamic_degree": "no prompt scored 3 on the dynamic-motion instruction (Listing 1)",
        "temporal_consistency": "it uses the dynamic-degree set and no prompt scored 3 on the dynamic-motion "
                                "instruction (Listing 1)",
        "text_alignment": f"no prompt is a single sentence of {MIN_WORDS}-{MAX_WORDS} words (articles not counted) "
                          "with a non-zero score on both instructions",
    }.get(name, f"set {name!r} is empty")


def histogram(scores: Sequence[int] | np.ndarray) -> dict[str, int]:
    """Counts of scores 0-3 and of unparseable answers."""
    s = _scores(scores)
    out = {str(k): int((s == k).sum()) for k in range(4)}
    out["unparseable"] = int((s == UNPARSEABLE).sum())
    return out


def dynamic_degree_metric(is_dynamic_video: Sequence[bool], prompt_is_dynamic: Sequence[bool]) -> float:
    """C.3's redefined dynamic degree: (dynamic videos on dynamic prompts + static videos on static
    prompts) / all videos, i.e. the fraction of videos whose dynamism matches their prompt's label.

    We read "adding the portion of dynamic videos in filtered dynamic prompts and static videos in
    filtered static prompts" as portions of all videos, so the sum stays in [0, 1] like VBench's
    dynamic degree. Callers pass only videos of labelled prompts (Listing 1 score 1-3)."""
    v, p = np.asarray(is_dynamic_video, dtype=bool), np.asarray(prompt_is_dynamic, dtype=bool)
    if v.shape != p.shape or v.ndim != 1:
        raise ValueError(f"need one prompt label per video, got {v.shape} videos and {p.shape} labels")
    if v.size == 0:
        raise ValueError("dynamic degree of no videos is undefined")
    return float(np.mean(v == p))
