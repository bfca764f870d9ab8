"""The curation rules of supplement C.2, as pure functions on score arrays.

Target: the aspect whose score dropped most from teacher to pruned student (or, multi-target,
every aspect whose drop passes a threshold). A candidate pair (preferred = teacher video,
unpreferred = student video, same prompt and seed) is kept when
  1. the preferred video is better in every target aspect (S(v_full) > S(v_pruned));
  2. the unpreferred video's target score is at least mean - alpha * std of the candidate
     unpreferred set (alpha = 0.3), so the losers stay meaningful;
  3. the gap in every target aspect exceeds the gap in every other aspect, so no other
     aspect dominates the preference. An aspect that copies the same reward output as a
     target (VideoReward's MQ fills both TC and DD) is not "another aspect": it always ties.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vip.rewards.base import ASPECTS

RULES = ("target_not_better", "below_floor", "gap_not_largest")
RULE_TEXT = {
    "target_not_better": "preferred not better than unpreferred in the target",
    "below_floor": "unpreferred target score below mean - alpha*std",
    "gap_not_largest": "target gap not larger than every other aspect's gap",
}


def choose_targets(drop: dict[str, float], threshold: float = 0.0) -> list[str]:
    """drop[aspect] = teacher - student (positive = the student is worse).

    threshold 0: the single largest drop (the paper's primary target). threshold > 0: every
    aspect whose drop is at least the threshold, largest first; if none is, the largest drop.
    Ties are broken by ASPECTS order so the choice is deterministic."""
    order = sorted(ASPECTS, key=lambda a: (-drop[a], ASPECTS.index(a)))
    if threshold > 0:
        passing = [a for a in order if drop[a] >= threshold]
        if passing:
            return passing
    return order[:1]


@dataclass
class Curation:
    keep: np.ndarray  # bool [N]
    floors: dict[str, float]  # target -> mean - alpha * std over the candidate unpreferred set
    rejected: dict[str, int]  # rule -> candidates failing it (a candidate may fail several)

    @property
    def kept(self) -> int:
        return int(self.keep.sum())


def curate(scores_w: np.ndarray, scores_l: np.ndarray, targets: list[str], alpha: float,
           sources: dict[str, str] | None = None) -> Curation:
    """scores_* [N, len(ASPECTS)] of preferred (teacher) and unpreferred (student) videos.
    sources: aspect -> reward output it copies (RewardModel module's ASPECT_SOURCES)."""
    if scores_w.shape != scores_l.shape or scores_w.ndim != 2 or scores_w.shape[1] != len(ASPECTS):
        raise ValueError(f"scores must both be [N, {len(ASPECTS)}], got {scores_w.shape} and {scores_l.shape}")
    if not targets:
        raise ValueError("at least one target aspect is needed")
    t_idx = [ASPECTS.index(a) for a in targets]
    sources = sources or {}
    target_sources = {sources.get(a, a) for a in targets}
    o_idx = [i for i, a in enumerate(ASPECTS) if i not in t_idx and sources.get(a, a) not in target_sources]
    gap = scores_w - scores_l
    n = len(scores_w)
    floors = {a: float(scores_l[:, i].mean() - alpha * scores_l[:, i].std()) if n else float("nan")
              for a, i in zip(targets, t_idx)}
    better = np.all(gap[:, t_idx] > 0, axis=1)
    above = np.all(np.stack([scores_l[:, i] >= floors[a] for a, i in zip(targets, t_idx)], 1), axis=1)
    other_max = gap[:, o_idx].max(1) if o_idx else np.full(n, -np.inf)
    dominant = np.all(gap[:, t_idx] > other_max[:, None], axis=1)
    fails = {"target_not_better": ~better, "below_floor": ~above, "gap_not_largest": ~dominant}
    return Curation(better & above & dominant, floors, {r: int(fails[r].sum()) for r in RULES})


def curate_with_fallback(scores_w: np.ndarray, scores_l: np.ndarray, targets: list[str], drop: dict[str, float],
                         alpha: float, min_pairs: int, sources: dict[str, str] | None = None
                         ) -> tuple[list[str], Curation, dict[str, int]]:
    """The rules for `targets`; when a single target keeps fewer than min_pairs, the other aspects that dropped,
    largest drop first, until one keeps min_pairs (the paper's target is the "primary" one). Returns the
    targets used, their curation, and the pairs each tried target kept.

    Why: near an aspect's ceiling, or when another aspect dropped on nearly every pair, the gap rule leaves the
    largest drop almost no pairs; the next aspect that dropped is what the pairs can teach without another
    aspect dominating the preference."""
    result = curate(scores_w, scores_l, targets, alpha, sources)
    tried = {",".join(targets): result.kept}
    if result.kept >= min_pairs or len(targets) != 1:
        return targets, result, tried
    for aspect in sorted(ASPECTS, key=lambda a: (-drop.get(a, 0.0), ASPECTS.index(a))):
        if aspect in targets or drop.get(aspect, 0.0) <= 0:
            continue
        other = curate(scores_w, scores_l, [aspect], alpha, sources)
        tried[aspect] = other.kept
        if other.kept >= min_pairs:
            return [aspect], other, tried
    return targets, result, tried


def rejection_report(c: Curation, n: int) -> str:
    lines = [f"kept {c.kept} of {n} candidate pairs"]
    lines += [f"  rejected {c.rejected[r]:>4}: {RULE_TEXT[r]}" for r in RULES]
    return "\n".join(lines)
