"""Unit selection (paper, supplement C.1): remove the k units whose removal harms least, taken from
the intersection of the top of two rankings, by total score and by temporal consistency, so that a unit
whose removal inflates dynamic degree while breaking consistency is not chosen.

A pure rule, like vip/curation.py and vip/redpo.py: below every step that uses it (vip/steps/select.py
writes its result, vip/steps/loo/__init__.py names the variants it scores, vip/steps/loo/adaptive.py replays it)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vip.config import ConfigError
from vip.rewards.base import ASPECTS

FULL = "<full>"  # the variant with nothing removed: V(M)
TC = "temporal_consistency"


@dataclass
class Selection:
    chosen: list[str]
    n: int  # the smallest top-n whose intersection holds k units
    by_total: list[str]
    by_tc: list[str]
    delta: dict[str, dict[str, float]]  # unit -> aspect -> V(M) - V(M - unit), and "total"


def deltas(scores: np.ndarray, variants: list[str]) -> dict[str, dict[str, float]]:
    """Δ_i per aspect = V(M) - V(M - i), averaged over samples; positive = removal hurts.

    A unit that adaptive leave-one-out settled early has NaN on later samples: its Δ pairs it with
    the full model on the samples it saw (the full model sees them all)."""
    full = scores[variants.index(FULL)]
    out = {}
    for i, v in enumerate(variants):
        if v == FULL:
            continue
        seen = ~np.isnan(scores[i]).any(-1)
        d = full[seen].mean(0) - scores[i][seen].mean(0)
        out[v] = {a: float(d[j]) for j, a in enumerate(ASPECTS)}
        out[v]["total"] = float(d.sum())
    return out


def rank(values: dict[str, float]) -> list[str]:
    """Least harm first; ties broken by name so the order never depends on dict order."""
    return sorted(values, key=lambda u: (values[u], u))


def choose(delta: dict[str, dict[str, float]], k: int) -> Selection:
    units = list(delta)
    if not 1 <= k <= len(units):
        raise ConfigError(f"config key 'select.k' gives {k} units to remove but the model has {len(units)} prunable units left; "
                          f"expected 1 to {len(units)}")
    by_total = rank({u: delta[u]["total"] for u in units})
    by_tc = rank({u: delta[u][TC] for u in units})
    for n in range(k, len(units) + 1):
        common = set(by_total[:n]) & set(by_tc[:n])
        if len(common) >= k:
            # at the smallest n the intersection may hold k+1: keep the best by total Δ
            chosen = [u for u in by_total if u in common][:k]
            return Selection(chosen, n, by_total, by_tc, delta)
    raise AssertionError("unreachable: at n = len(units) the intersection is every unit")
