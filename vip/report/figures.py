"""Figures of the run report that vip/plots.py does not draw: training curves and the per-stage outcome.
matplotlib only, Agg backend; each function writes one PNG and returns its path."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402

from vip.rewards.base import ASPECTS  # noqa: E402

# (metrics key(s), panel title, y label); rewards/* are the implicit DPO rewards beta * log-ratio differences
CURVES = (
    (("loss",), "loss (DPO + w_sft · SFT)", ""),
    (("dpo",), "DPO term", ""),
    (("sft",), "SFT term", ""),
    (("rewards/accuracies",), "implicit accuracy", "fraction of pairs with r_w > r_l"),
    (("rewards/margins",), "implicit reward margin", "r_w − r_l"),
    (("rewards/chosen", "rewards/rejected"), "implicit rewards", ""),
    (("lr",), "learning rate", ""),
    (("grad_norm",), "gradient norm (before clipping)", ""),
)
MODELS = (("full", "full (teacher)", "#7f7f7f", "s"), ("pruned", "pruned", "#c44e52", "v"),
          ("redpo", "ReDPO", "#4c72b0", "o"))


def _smooth(y: np.ndarray) -> np.ndarray:
    """Trailing moving average over about a tenth of the run (at least 1 step)."""
    w = max(1, len(y) // 10)
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    out[w - 1:] = (c[w:] - c[:-w]) / w
    out[:w - 1] = c[1:w] / np.arange(1, w)
    return out


def _count(n: int) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{suffix}"
    return str(n)


def _min_span(ax, span: float) -> None:
    """Widen the y range to at least `span` score points, so that differences in the third decimal do not fill
    a panel and look large."""
    lo, hi = ax.get_ylim()
    if hi - lo < span:
        mid = (lo + hi) / 2
        ax.set_ylim(mid - span / 2, mid + span / 2)


def _save(fig, path: Path, dpi: int) -> Path:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return Path(path)


def training_curves(metrics: list[dict], path: Path, title: str = "") -> Path:
    """One panel per logged quantity against the optimiser step: raw (thin) and smoothed (thick)."""
    steps = np.array([m.get("step", i + 1) for i, m in enumerate(metrics)], dtype=float)
    fig, axes = plt.subplots(2, 4, figsize=(14, 5.6))
    for ax, (keys, name, ylabel) in zip(axes.flat, CURVES):
        shown = False
        for key, colour in zip(keys, ("#4c72b0", "#c44e52")):
            pts = [(s, m[key]) for s, m in zip(steps, metrics) if isinstance(m.get(key), (int, float))]
            if not pts:
                continue
            x, y = np.array(pts, dtype=float).T
            label = key.split("/")[-1] if len(keys) > 1 else None
            if len(y) >= 20:
                ax.plot(x, y, color=colour, alpha=0.3, linewidth=0.8)
                ax.plot(x, _smooth(y), color=colour, linewidth=1.8, label=label)
            else:
                ax.plot(x, y, color=colour, linewidth=1.5, marker="o", markersize=3, label=label)
            shown = True
        if not shown:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#888888")
        if keys == ("rewards/accuracies",):
            ax.set_ylim(-0.03, 1.03)
            ax.axhline(0.5, color="#aaaaaa", linewidth=0.8, linestyle=":")
        elif keys[0] in ("rewards/margins", "rewards/chosen"):
            ax.axhline(0, color="#aaaaaa", linewidth=0.8, linestyle=":")
        if keys == ("lr",):
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.1e}"))
        if len(keys) > 1 and shown:
            ax.legend(fontsize=8)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title(name, fontsize=10)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25)
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    fig.suptitle(title or f"ReDPO training ({len(metrics)} steps)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def outcome_chart(rows: list[dict], path: Path, title: str = "") -> Path:
    """Per stage: full / pruned / ReDPO score per aspect and in total (pruned -> ReDPO drawn as an arrow),
    and denoiser parameters. rows: {"stage", "full", "pruned", "redpo" (dicts aspect -> mean, "total"; any may
    be None), "params_full", "params_student" (int or None)}."""
    stages = [r["stage"] for r in rows]
    x = np.arange(len(rows))
    offsets = {"full": -0.25, "pruned": 0.0, "redpo": 0.25}
    fig, axes = plt.subplots(2, 3, figsize=(11, 6.6))
    for ax, aspect in zip(axes.flat, (*ASPECTS, "total")):
        for key, label, colour, marker in MODELS:
            pts = [(i + offsets[key], r[key][aspect]) for i, r in enumerate(rows) if r.get(key) and aspect in r[key]]
            if pts:
                px, py = np.array(pts).T
                ax.scatter(px, py, color=colour, marker=marker, s=44, label=label, zorder=3)
                # labels beside their markers (full: left, ReDPO: right, pruned: below) so close scores stay legible
                where = {"full": ((-6, -3), "right"), "pruned": ((0, -13), "center"), "redpo": ((6, -3), "left")}
                (dx, dy), ha = where[key]
                for a, b in pts:
                    ax.annotate(f"{b:.3f}", (a, b), textcoords="offset points", xytext=(dx, dy), ha=ha,
                                fontsize=7.5, color=colour)
        for i, r in enumerate(rows):
            if r.get("pruned") and r.get("redpo") and aspect in r["pruned"] and aspect in r["redpo"]:
                ax.annotate("", xy=(i + offsets["redpo"], r["redpo"][aspect]),
                            xytext=(i + offsets["pruned"], r["pruned"][aspect]),
                            arrowprops={"arrowstyle": "->", "color": "#4c72b0", "alpha": 0.6, "linewidth": 1.2,
                                        "shrinkA": 5, "shrinkB": 5})
        ax.set_xticks(x, [f"stage {s}" for s in stages], fontsize=9)
        ax.set_xlim(-0.75, len(rows) - 0.25)
        ax.margins(y=0.22)
        _min_span(ax, 0.2 if aspect == "total" else 0.05)
        ax.set_title(aspect.replace("_", " ") + (" (sum of the four)" if aspect == "total" else ""), fontsize=11)
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", alpha=0.25)
        for i in x[1:]:
            ax.axvline(i - 0.5, color="#dddddd", linewidth=0.8)
    axes[0, 0].set_ylabel("mean score")
    axes[1, 0].set_ylabel("mean score")
    ax = axes[1, 2]
    full = [r.get("params_full") or 0 for r in rows]
    student = [r.get("params_student") or 0 for r in rows]
    bars_f = ax.bar(x - 0.18, full, width=0.36, color="#7f7f7f")
    bars_s = ax.bar(x + 0.18, student, width=0.36, color="#4c72b0")
    ax.bar_label(bars_f, labels=[f"full\n{_count(f)}" if f else "" for f in full], fontsize=8)
    ax.bar_label(bars_s, labels=[f"student\n{_count(s)}\n({100 * s / f:.1f}%)" if f and s else
                                 (f"student\n{_count(s)}" if s else "") for f, s in zip(full, student)], fontsize=8)
    ax.set_xticks(x, [f"stage {s}" for s in stages], fontsize=9)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_title("denoiser parameters", fontsize=11)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4))
    ax.tick_params(axis="y", labelsize=8)
    ax.margins(y=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(title or "Outcome per stage", fontsize=12, x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return _save(fig, path, dpi=100)
