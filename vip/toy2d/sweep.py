"""Hyperparameter sweep on tuning seeds (disjoint from the reported seeds).

The teacher and base student are trained once per tuning seed; then every (lr, beta, w_sft)
distils DPO+SFT for the same number of steps, and SFT and DPO run at each lr (and beta). The
selection rule is fixed in advance: the DPO+SFT setting with the smallest mean distance to the
teacher, i.e. the goal of distillation, not any of the findings.
"""
from __future__ import annotations

import statistics
from dataclasses import replace

from vip.toy2d.distill import distill
from vip.toy2d.experiment import ToyConfig, _gen, measure, prepare

GRID = {"lr": (3e-4, 1e-3), "beta": (100.0, 1000.0, 10000.0), "ratio": (1.0, 10.0, 100.0)}  # w_sft = ratio * beta


def run_sweep(cfg: ToyConfig, seeds: list[int], grid: dict = GRID, progress=None) -> tuple[list[dict], dict]:
    preps = [prepare(s, cfg) for s in seeds]
    runs = []
    for lr in grid["lr"]:
        runs.append(("SFT", replace(cfg.distill, lr=lr)))
        for beta in grid["beta"]:
            runs.append(("DPO", replace(cfg.distill, lr=lr, beta=beta)))
            for ratio in grid["ratio"]:
                runs.append(("DPO+SFT", replace(cfg.distill, lr=lr, beta=beta, w_sft=ratio * beta)))
    rows = []
    for variant, dcfg in runs:
        nums = []
        for p in preps:
            model = distill(p.base, p.teacher, p.scheduler, p.winners, p.losers, variant, dcfg, _gen(p.seed, 7))
            nums.append(measure(model, p, cfg)[1])
        rows.append({"variant": variant, "lr": dcfg.lr, "beta": dcfg.beta if variant != "SFT" else None,
                     "w_sft": dcfg.w_sft if variant != "DPO" else None,
                     **{k: statistics.fmean(n[k] for n in nums) for k in ("Mode 1", "Mode 2", "OOD", "SW")}})
        if progress:
            progress(rows[-1])
    base = [measure(p.base, p, cfg)[1] for p in preps]
    teacher = [measure(p.teacher, p, cfg)[1] for p in preps]
    for name, nums in (("base student", base), ("teacher", teacher)):
        rows.insert(0, {"variant": name, "lr": None, "beta": None, "w_sft": None,
                        **{k: statistics.fmean(n[k] for n in nums) for k in ("Mode 1", "Mode 2", "OOD", "SW")}})
    best = min((r for r in rows if r["variant"] == "DPO+SFT"), key=lambda r: r["SW"])
    return rows, best


def sweep_md(rows: list[dict], best: dict, seeds: list[int], steps: int) -> str:
    f = lambda v: "–" if v is None else f"{v:g}"  # noqa: E731
    lines = [f"Sweep on tuning seeds {seeds} ({steps} distillation steps each); means over those seeds. "
             f"Selected (smallest SW₁ of DPO+SFT): lr {best['lr']:g}, β {best['beta']:g}, w_sft {best['w_sft']:g}.",
             "", "| variant | lr | β | w_sft | Mode 1 | Mode 2 | OOD | SW₁ to teacher |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mark = " **←**" if r is best else ""
        lines.append(f"| {r['variant']} | {f(r['lr'])} | {f(r['beta'])} | {f(r['w_sft'])} | {r['Mode 1']:.0f} | "
                     f"{r['Mode 2']:.0f} | {r['OOD']:.0f} | {r['SW']:.3f}{mark} |")
    return "\n".join(lines)
