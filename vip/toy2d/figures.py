"""The toy experiment's figures: Figure A (data and mode counts), Figure B (samples), training curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Circle  # noqa: E402

from vip.toy2d.data import MODE1, MODE2, OOD, TwoModes  # noqa: E402

CATEGORY_COLOURS = {"Mode 1": "#4c72b0", "Mode 2": "#dd8452", "OOD": "#c44e52"}
VARIANT_COLOURS = {"SFT": "#8172b2", "DPO": "#937860", "DPO+SFT": "#55a868"}
LIMITS = (-2.2, 2.2)


def _mode_discs(ax, data: TwoModes, labels: bool = True) -> None:
    for k, (c, r) in enumerate(zip(data.centres, data.radii.tolist())):
        ax.add_patch(Circle(c, r, fill=False, linestyle="--", linewidth=1.0, color="black"))
        if labels:
            ax.annotate(f"Mode {k + 1}", (c[0], c[1] + r + 0.08), ha="center", fontsize=9)


def _square(ax) -> None:
    ax.set_xlim(*LIMITS)
    ax.set_ylim(*LIMITS)
    ax.set_aspect("equal")
    ax.set_xlabel("x₁")
    ax.set_ylabel("x₂")


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def modes_figure(data: TwoModes, data_x, summary: dict, models: tuple[str, ...], n_eval: int, n_seeds: int,
                 path: Path, per_seed: dict | None = None) -> Path:
    """Figure A: (a) the ground-truth distribution, (b) samples per mode and OOD per model
    (bars: mean, whiskers: std over seeds, dots: single seeds when `per_seed` {model: {cat: [..]}} is given)."""
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12.5, 4.8), gridspec_kw={"width_ratios": [1, 1.7]})
    x = np.asarray(data_x)
    lab = data.classify(data_x).numpy()
    for k, name in ((MODE1, "Mode 1"), (MODE2, "Mode 2"), (OOD, "OOD")):
        sel = lab == k
        ax0.scatter(x[sel, 0], x[sel, 1], s=2, alpha=0.5, color=CATEGORY_COLOURS[name],
                    label=f"{name} ({sel.mean():.1%})")
    _mode_discs(ax0, data)
    _square(ax0)
    ax0.set_title("(a) Ground-truth distribution")
    ax0.legend(loc="lower left", fontsize=8, markerscale=4)

    idx = np.arange(len(models))
    width = 0.26
    for j, cat in enumerate(("Mode 1", "Mode 2", "OOD")):
        means = [summary[m][cat][0] for m in models]
        stds = [summary[m][cat][1] for m in models]
        bars = ax1.bar(idx + (j - 1) * width, means, width, yerr=stds, capsize=3, color=CATEGORY_COLOURS[cat],
                       label="out of distribution (OOD)" if cat == "OOD" else cat)
        if per_seed and n_seeds > 1:
            for i, m in enumerate(models):
                v = per_seed[m][cat]
                ax1.scatter(np.full(len(v), idx[i] + (j - 1) * width), v, s=7, color="black", zorder=3,
                            label="single seeds" if (i, j) == (0, 0) else None)
        for b, v, e in zip(bars, means, stds):
            ax1.annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, v + e), xytext=(0, 3),
                         textcoords="offset points", ha="center", fontsize=7)
    ax1.set_xticks(idx, models)
    ax1.set_ylabel(f"samples (of {n_eval})")
    ax1.set_title(f"(b) Samples per mode and OOD samples (mean ± std over {n_seeds} seeds)")
    ax1.set_xlabel("model")
    ax1.legend(fontsize=8)
    top = max(summary[m][c][0] + summary[m][c][1] for m in models for c in ("Mode 1", "Mode 2", "OOD"))
    if per_seed:
        top = max(top, max(max(per_seed[m][c]) for m in models for c in ("Mode 1", "Mode 2", "OOD")))
    ax1.set_ylim(0, top * 1.12)
    fig.tight_layout()
    return _save(fig, path)


def samples_figure(data: TwoModes, data_x, samples: dict, models: tuple[str, ...], seed: int, path: Path,
                   max_points: int = 3000) -> Path:
    """Figure B: each model's samples over the data, coloured by mode / OOD."""
    fig, axes = plt.subplots(1, len(models), figsize=(3.3 * len(models), 4.3), sharey=True, layout="constrained")
    d = np.asarray(data_x)[:max_points]
    for ax, m in zip(axes, models):
        x = samples[m][:max_points]
        lab = data.classify(x).numpy()
        x = np.asarray(x)
        ax.scatter(d[:, 0], d[:, 1], s=2, color="#bbbbbb", alpha=0.5, label="data")
        for k, name in ((MODE1, "Mode 1"), (MODE2, "Mode 2"), (OOD, "OOD")):
            sel = lab == k
            ax.scatter(x[sel, 0], x[sel, 1], s=2, alpha=0.6, color=CATEGORY_COLOURS[name], label=name)
        _mode_discs(ax, data, labels=False)
        _square(ax)
        n = len(lab)
        ax.set_title(f"{m}\nOOD {np.mean(lab == OOD):.1%}, Mode 2 {np.mean(lab == MODE2):.1%}", fontsize=10)
        if ax is not axes[0]:
            ax.set_ylabel("")
    axes[0].legend(loc="lower left", fontsize=7, markerscale=4)
    fig.suptitle(f"Samples of each model (seed {seed}, {n} shown) over the data (grey); dashed circles: "
                 f"mode discs, samples outside both are OOD", fontsize=11)
    return _save(fig, path)


def curves_figure(results: list[dict], variants: tuple[str, ...], path: Path) -> Path:
    """OOD, Mode 1 and Mode 2 shares and the distance to the teacher along distillation (mean ± std over seeds)."""
    metrics = (("OOD", "OOD samples (%)"), ("Mode 1", "Mode 1 samples (%)"), ("Mode 2", "Mode 2 samples (%)"),
               ("SW", "sliced W₁ to teacher"))
    scale = lambda p, key: p[key] if key == "SW" else 100.0 * p[key] / p["n"]  # noqa: E731
    fig, axes = plt.subplots(1, len(metrics), figsize=(16, 4.0), layout="constrained")
    for ax, (key, label) in zip(axes, metrics):
        for v in variants:
            steps = [p["step"] for p in results[0]["curves"][v]]
            vals = np.array([[scale(p, key) for p in r["curves"][v]] for r in results])
            ax.plot(steps, vals.mean(0), marker="o", markersize=3, color=VARIANT_COLOURS[v], label=v)
            if len(results) > 1:
                ax.fill_between(steps, vals.mean(0) - vals.std(0, ddof=1), vals.mean(0) + vals.std(0, ddof=1),
                                color=VARIANT_COLOURS[v], alpha=0.15)
        teacher = np.mean([scale(r["numbers"]["teacher"], key) for r in results])
        ax.axhline(teacher, color="black", linestyle="--", linewidth=1, label="teacher")
        ax.set_xlabel("distillation step (step 0 = base student)")
        ax.set_ylabel(label)
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Along distillation (evaluated on {results[0]['curves'][variants[0]][0]['n']} samples per "
                 f"point; mean ± std over {len(results)} seeds)", fontsize=11)
    return _save(fig, path)
