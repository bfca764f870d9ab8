"""`python -m vip.bench adaptive`: the adaptive leave-one-out rule (vip/steps/loo/adaptive.py) replayed on
recorded exhaustive tables, against the exhaustive choice."""
from __future__ import annotations

import glob
import json
from pathlib import Path

from vip.selection import choose, deltas
from vip.steps.loo.adaptive import adaptive_loo, from_table
from vip.store import read_h5


def bench_adaptive(args) -> list[dict]:
    """`python -m vip.bench adaptive [--tables a/loo.h5 ...]`: the adaptive rule replayed on
    recorded exhaustive tables, against the exhaustive choice (select.k from the run's selection.json)."""
    rows = []
    for path in args.tables or sorted(glob.glob("runs/*/stage*/loo.h5")):
        arrays, _ = read_h5(Path(path))
        variants = [str(v) for v in arrays["variants"]]
        scores = arrays["scores"]
        sel = Path(path).with_name("selection.json")
        k = json.loads(sel.read_text())["k"] if sel.is_file() else 4
        exhaustive = choose(deltas(scores, variants), k).chosen
        for z in (2.0, 3.0):
            for first in (4, 8):
                r = adaptive_loo(from_table(scores, variants), variants[1:], scores.shape[1], k, z=z, first=first)
                rows.append({"table": path, "k": k, "z": z, "first": first, "same": r.selection.chosen == exhaustive,
                             "clips": r.clips, "exhaustive": r.exhaustive_clips, "saved": r.saved})
                print(f"{path}: {len(variants) - 1} units x {scores.shape[1]} prompts, k={k}, z={z}, first={first}: "
                      f"{'same choice' if rows[-1]['same'] else 'DIFFERENT choice'}, {r.clips}/{r.exhaustive_clips} clips "
                      f"({100 * r.saved:.0f}% saved); units still evaluated per round "
                      f"{[x['active'] for x in r.rounds]}")
    return rows
