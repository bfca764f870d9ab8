"""Where a run stands, read from its files only (nothing is loaded or run)."""
from __future__ import annotations

import json

from vip.rewards.base import ASPECTS
from vip.steps import loo
from vip.store import RunDir, ShardSet

SHORT = {"visual_quality": "VQ", "temporal_consistency": "TC", "dynamic_degree": "DD", "text_alignment": "TA"}


def stage_status(run: RunDir, stage: int) -> list[tuple[str, str, str]]:
    """Rows of (step, state, detail)."""
    d = run.stage(stage)
    rows = []
    planned = loo.read_plan(d)
    if planned is not None:
        n = len(planned["tasks"])
        missing = ShardSet(d / "loo").missing(range(n))
        state = "done" if not missing else ("missing" if len(missing) == n else "partial")
        detail = f"{n - len(missing)}/{n} tasks" + (f"; missing {missing[:8]}" if missing else "")
        rows.append(("loo", state, detail))
    else:
        rows.append(("loo", "not started", ""))
    rows.append(("merge", "done" if (d / "loo.h5").is_file() else "missing", str(d / "loo.h5")))
    sel = d / "selection.json"
    if sel.is_file():
        s = json.loads(sel.read_text())
        rows.append(("select", "done", f"chosen {', '.join(s['chosen'])}"))
    else:
        rows.append(("select", "missing", ""))
    return rows


def format_rows(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


def selection_table(selection: dict) -> str:
    """unit, Δ per aspect, total, parameters, chosen; in order of least harm."""
    rows = []
    for unit in selection["by_total"]:
        d = selection["delta"][unit]
        rows.append((unit, *(f"{d[a]:+.3f}" for a in ASPECTS), f"{d['total']:+.3f}",
                     f"{selection['unit_params'][unit]:,}", "yes" if unit in selection["chosen"] else ""))
    header = ("unit", *(f"Δ{SHORT[a]}" for a in ASPECTS), "Δtotal", "params", "chosen")
    before, after = selection["params_before"], selection["params_after"]
    return (format_rows(rows, header) + f"\n\nΔ = V(M) - V(M - unit): positive means removing the unit hurts. "
            f"Chosen from the top {selection['n']} of both rankings (total and TC).\n"
            f"denoiser parameters: {before:,} -> {after:,} ({100 * (after - before) / before:+.1f}%)")
