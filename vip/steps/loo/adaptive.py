"""Adaptive leave-one-out: evaluate in rounds on growing prompt subsets and stop evaluating a
unit once its place in both rankings (total score, temporal consistency) is settled.

The selection rule (vip.selection.choose) takes the k best units by total Δ from the
smallest top-n of the two rankings whose intersection holds k units. A unit that is certainly
outside the top-n_hat of BOTH rankings, where n_hat bounds the n that choose() stops at, never
enters either top-n set, so its exact Δ cannot change the choice (outside only one ranking is
not enough: inside the other it still takes a slot). Certainty comes from confidence intervals
of each Δ over the prompts seen so far: mean ± z * sd / sqrt(n) of the per-prompt paired
differences V(M, p) - V(M - unit, p). With zero noise the intervals are points, so the rule
drops exactly the units whose ranks are already fixed and picks the exhaustive choice.

A dropped unit keeps its last interval; the full model and every kept unit see all prompts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vip.rewards.base import ASPECTS
from vip.selection import FULL, TC, Selection, choose, deltas

TC_INDEX = ASPECTS.index(TC)


@dataclass
class AdaptiveResult:
    selection: Selection
    clips: int  # generated and scored, the full model included
    exhaustive_clips: int
    prompts_seen: dict[str, int]  # unit -> prompts it was evaluated on
    rounds: list[dict] = field(default_factory=list)

    @property
    def saved(self) -> float:
        return 1 - self.clips / self.exhaustive_clips


def schedule(n_prompts: int, first: int) -> list[int]:
    """Prompt counts at the end of each round: first, 2*first, 4*first, ..., n_prompts."""
    ends, n = [], max(1, min(first, n_prompts))
    while n < n_prompts:
        ends.append(n)
        n *= 2
    return ends + [n_prompts]


def intervals(diffs: np.ndarray, z: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """diffs [n_prompts, 2] (total, TC) per prompt -> (mean, low, high), each [2]."""
    n = diffs.shape[0]
    mean = diffs.mean(0)
    half = z * diffs.std(0, ddof=1) / np.sqrt(n) if n > 1 else np.full(2, np.inf)
    return mean, mean - half, mean + half


def settled_out(low: np.ndarray, high: np.ndarray, k: int) -> np.ndarray:
    """low/high [units, 2]: which units are certainly outside the top-n_hat of both rankings.

    Least harm ranks first. A unit's worst possible rank in ranking r is 1 + the units whose
    interval could lie at or below its upper end; its best possible rank is 1 + the units
    certainly below it. n_hat = the k-th smallest over units of max(worst rank in either
    ranking): by then k units are certainly in both top-n sets, so choose() stops at or before.
    Ties count against dropping, both ways."""
    u = low.shape[0]
    worst = np.ones((u, 2), dtype=int)
    best = np.ones((u, 2), dtype=int)
    for r in range(2):
        for i in range(u):
            others = np.arange(u) != i
            worst[i, r] += int((low[others, r] <= high[i, r]).sum())
            best[i, r] += int((high[others, r] < low[i, r]).sum())
    n_hat = np.sort(worst.max(1))[k - 1]
    return (best > n_hat).all(1)


def still_in_play(full: np.ndarray, seen: dict[str, np.ndarray], active: list[str], k: int, z: float) -> list[str]:
    """The active units whose exact Δ can still change the choice.

    full [n, aspects]: the full model's scores on samples 0..n-1. seen[unit] [m, aspects]: every
    unit's scores on samples 0..m-1 (m <= n; a unit dropped earlier has a smaller m, and its
    interval is what it was when it was dropped). Shared by the replay below and vip.steps.loo."""
    units = list(seen)
    bounds = []
    for u in units:
        d = (full[: len(seen[u])] - seen[u]).astype(np.float64)  # paired: the same prompts and seeds
        bounds.append(intervals(np.stack([d.sum(1), d[:, TC_INDEX]], 1), z))
    out = dict(zip(units, settled_out(np.stack([b[1] for b in bounds]), np.stack([b[2] for b in bounds]), k)))
    return [u for u in active if not out[u]]


def adaptive_loo(score, units: list[str], n_prompts: int, k: int, z: float = 3.0, first: int = 8) -> AdaptiveResult:
    """score(variant or None for the full model, prompt indices) -> scores [len(idx), aspects].

    Rounds end at schedule(n_prompts, first) prompts. Each round scores the new prompts for
    the full model and every unit still in play; a unit settled out of both rankings stops."""
    if not 1 <= k <= len(units):
        raise ValueError(f"k={k} but there are {len(units)} units")
    full_chunks: list[np.ndarray] = []
    unit_chunks: dict[str, list[np.ndarray]] = {u: [] for u in units}
    active = list(units)
    clips, lo, rounds = 0, 0, []

    for hi in schedule(n_prompts, first):
        idx = list(range(lo, hi))
        full_chunks.append(score(None, idx))
        clips += len(idx)
        for u in active:
            unit_chunks[u].append(score(u, idx))
            clips += len(idx)
        lo = hi
        if hi < n_prompts:
            active = still_in_play(np.concatenate(full_chunks), {u: np.concatenate(unit_chunks[u]) for u in units},
                                   active, k, z)
        rounds.append({"prompts": hi, "active": len(active), "clips": clips})
    # the table as the stage's loo.h5 holds it (NaN where a settled unit was not scored): selection.deltas
    table = np.full((len(units) + 1, n_prompts, len(ASPECTS)), np.nan, dtype=full_chunks[0].dtype)
    table[0] = np.concatenate(full_chunks)
    for i, u in enumerate(units, 1):
        mine = np.concatenate(unit_chunks[u])
        table[i, :len(mine)] = mine
    delta = deltas(table, [FULL] + units)
    return AdaptiveResult(choose(delta, k), clips, (len(units) + 1) * n_prompts,
                          {u: sum(len(c) for c in unit_chunks[u]) for u in units}, rounds)


def from_table(scores: np.ndarray, variants: list[str]):
    """A score function over a recorded loo.h5 table scores[variant, sample, aspect]."""
    row = {v: i for i, v in enumerate(variants)}

    def score(unit, idx):
        return scores[row[FULL if unit is None else unit], idx]
    return score
