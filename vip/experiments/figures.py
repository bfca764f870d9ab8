"""Plots of the tables: change against the pruned student per aspect, mean ± std over seeds."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vip.experiments.tables import SHORT, Setting, summary  # noqa: E402
from vip.rewards.base import ASPECTS  # noqa: E402


def _delta(records: list[dict], aspect: str) -> tuple[float, float]:
    d = np.array([r["redpo"][aspect] - r["pruned"][aspect] for r in records])
    return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0


def settings_chart(settings: list[Setting], path: Path, title: str) -> Path:
    """Left: Δ vs pruned per aspect per setting (bars, std as whiskers; the full teacher's Δ as a black tick).
    Right: the fraction of the target's drop recovered per setting."""
    first = settings[0].records[0]
    targets = first["targets"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [3, 1.2]})
    n, width = len(settings), 0.8 / len(settings)
    x = np.arange(len(ASPECTS))
    cmap = plt.get_cmap("viridis")
    colours = [cmap(i / max(1, n - 1)) for i in range(n)]
    floor = -0.6  # a collapsed setting (DPO alone) would flatten every other bar: clip it, print its value
    for i, s in enumerate(settings):
        ms = [_delta(s.records, a) for a in ASPECTS]
        xs = x - 0.4 + (i + 0.5) * width
        ax.bar(xs, [max(m, floor) for m, _ in ms], width, yerr=[e if m > floor else 0 for m, e in ms], capsize=2,
               color=colours[i], label=s.label)
        for xi, (m, _) in zip(xs, ms):
            if m < floor:
                ax.text(xi, floor + 0.02, f"{m:.2f}", rotation=90, ha="center", va="bottom", fontsize=7, color="white")
    full = [first["full"][a] - first["pruned"][a] for a in ASPECTS]
    ax.scatter(x, full, marker="_", s=900, color="black", zorder=5, label="full teacher")
    ax.set_ylim(bottom=floor - 0.05)  # after every artist: a fixed limit stops autoscaling (the teacher's tick)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(x, [f"{SHORT[a]}{' (target)' if a in targets else ''}" for a in ASPECTS])
    ax.set_ylabel("score − pruned student's")
    ax.legend(fontsize=8, ncol=2)
    t = targets[0]
    rec = [summary(s.records)[f"recovered:{t}"] for s in settings]
    lo = -60.0
    ax2.barh(np.arange(n)[::-1], [max(100 * m, lo) for m, _ in rec], xerr=[100 * e if 100 * m > lo else 0 for m, e in rec],
             capsize=3, color=colours)
    for yi, (m, _) in zip(np.arange(n)[::-1], rec):
        if 100 * m < lo:
            ax2.text(lo + 2, yi, f"{100 * m:.0f}%", va="center", fontsize=8, color="white")
    ax2.set_xlim(lo - 5, 105)
    ax2.set_yticks(np.arange(n)[::-1], [s.label for s in settings], fontsize=8)
    ax2.axvline(0, color="grey", lw=0.8)
    ax2.axvline(100, color="black", lw=0.8, ls="--")
    ax2.set_xlabel(f"{SHORT[t]} drop recovered (%)")
    fig.suptitle(f"{title} (mean ± std over {len(settings[0].records)} seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def stages_chart(per_arm: dict[str, list[list[dict]]], path: Path, title: str) -> Path:
    """Table B: per stage and aspect, each arm's pruned student (light) and trained student (dark),
    mean ± std over seeds, and the full teacher (black tick). per_arm[label][seed][stage] = outcome record."""
    labels = list(per_arm)
    stages = len(per_arm[labels[0]][0])
    fig, axes = plt.subplots(1, stages, figsize=(4.8 * stages, 4.3))
    axes = np.atleast_1d(axes)
    colours = ["#dd8452", "#4c72b0", "#55a868", "#c44e52"]
    x = np.arange(len(ASPECTS))
    width = 0.8 / (2 * len(labels))
    for n, ax in enumerate(axes):
        for i, label in enumerate(labels):
            recs = [seed[n] for seed in per_arm[label]]
            for j, key in enumerate(("pruned", "redpo")):
                v = np.array([[r[key][a] for a in ASPECTS] for r in recs])
                ax.bar(x - 0.4 + (2 * i + j + 0.5) * width, v.mean(0), width,
                       yerr=v.std(0, ddof=1) if len(v) > 1 else None, capsize=2, color=colours[i % 4],
                       alpha=0.4 if key == "pruned" else 1.0,
                       label=f"pruned → {label}" if key == "pruned" else label)
        first = per_arm[labels[0]][0][n]
        ax.scatter(x, [first["full"][a] for a in ASPECTS], marker="_", s=700, color="black", zorder=5,
                   label="full teacher")
        targets = {t for label in labels for seed in per_arm[label] for t in seed[n]["targets"]}
        ax.set_xticks(x, [f"{SHORT[a]}{'*' if a in targets else ''}" for a in ASPECTS])
        lo = min(min(seed[n]["pruned"][a] for label in labels for seed in per_arm[label]) for a in ASPECTS)
        ax.set_ylim(max(1.0, lo - 0.4), 4.05)
        skipped = "train.min_pairs" in first.get("training", "")  # too few pairs: no loss was applied
        ax.set_title(f"stage {n + 1} (* target{'; training skipped' if skipped else ''})", fontsize=10)
        if n == 0:
            ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
