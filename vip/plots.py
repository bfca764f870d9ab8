"""Figures a person would rather look at than read. matplotlib only, Agg backend."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from vip.rewards.base import ASPECTS  # noqa: E402

COLOURS = {"visual_quality": "#4c72b0", "temporal_consistency": "#dd8452",
           "dynamic_degree": "#55a868", "text_alignment": "#c44e52"}


def selection_chart(selection: dict, path: Path, title: str = "") -> Path:
    """Δ per unit per aspect (stacked bars, least harm on the left), chosen units marked."""
    units = selection["by_total"]
    x = np.arange(len(units))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(units) + 2), 4.2))
    pos, neg = np.zeros(len(units)), np.zeros(len(units))
    for a in ASPECTS:
        v = np.array([selection["delta"][u][a] for u in units])
        base = np.where(v >= 0, pos, neg)
        ax.bar(x, v, bottom=base, color=COLOURS[a], label=a.replace("_", " "), width=0.7)
        pos, neg = pos + np.clip(v, 0, None), neg + np.clip(v, None, 0)
    ax.plot(x, [selection["delta"][u]["total"] for u in units], "k_", markersize=14, label="total Δ")
    for i, u in enumerate(units):
        if u in selection["chosen"]:
            ax.axvspan(i - 0.5, i + 0.5, color="#e6e6e6", zorder=0,
                       label="removed" if u == selection["chosen"][0] else None)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [u.replace(".motion_modules.", ".mm") for u in units], rotation=60, ha="right", fontsize=8)
    for tick, u in zip(ax.get_xticklabels(), units):
        if u in selection["chosen"]:
            tick.set_fontweight("bold")
    ax.set_ylabel("Δ = V(M) − V(M − unit)\n(positive: removal hurts)")
    ax.set_title(title or f"Leave-one-out: {len(selection['chosen'])} units removed from the top "
                          f"{selection['n']} of both rankings")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def curation_chart(record: dict, path: Path, title: str = "") -> Path:
    """Per target: preferred and unpreferred score histograms with the alpha floor; and rejections by rule."""
    from vip.curation import RULE_TEXT

    targets = record["targets"]
    pref, unpref = np.array(record["candidate_scores"]["preferred"]), np.array(record["candidate_scores"]["unpreferred"])
    fig, axes = plt.subplots(1, len(targets) + 1, figsize=(4.6 * (len(targets) + 1), 3.6))
    for ax, a in zip(axes, targets):
        j = ASPECTS.index(a)
        bins = np.linspace(min(pref[:, j].min(), unpref[:, j].min()), max(pref[:, j].max(), unpref[:, j].max()) + 1e-6, 21)
        ax.hist(pref[:, j], bins=bins, alpha=0.6, color="#4c72b0", label="preferred (teacher)")
        ax.hist(unpref[:, j], bins=bins, alpha=0.6, color="#c44e52", label="unpreferred (student)")
        floor = record["floors"][a]
        ax.axvline(floor, color="black", linestyle="--", label=f"mean − {record['alpha']}·std = {floor:.2f}")
        ax.set_xlabel(f"{a.replace('_', ' ')} score")
        ax.set_ylabel("candidate pairs")
        ax.set_title(f"target: {a.replace('_', ' ')}")
        ax.legend(fontsize=7)
    ax = axes[-1]
    rules = list(record["rejected"])
    ax.barh([RULE_TEXT[r] for r in rules] + ["kept"], [record["rejected"][r] for r in rules] + [record["kept"]],
            color=["#999999"] * len(rules) + ["#55a868"])
    ax.set_xlabel(f"of {record['candidates']} candidates")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title("rejections by rule (a pair may fail several)")
    fig.suptitle(title or "curation")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


KIND_COLOURS = {"convolution": "#4c72b0", "matmul": "#55a868", "attention": "#c44e52", "other": "#b0b0b0"}


def time_by_kind_chart(rows: list[tuple[str, dict]], path: Path, title: str = "") -> Path:
    """One horizontal bar per configuration: milliseconds by kernel kind (vip/bench/breakdown.py),
    each wide enough segment labelled with that kind's FLOP rate as a share of peak."""
    fig, ax = plt.subplots(figsize=(11, 0.6 * len(rows) + 2.0))
    y = np.arange(len(rows))[::-1]
    totals = np.array([1e3 * sum(k["seconds"] for k in b["kinds"].values()) for _, b in rows])
    left = np.zeros(len(rows))
    for kind, colour in KIND_COLOURS.items():
        ms = np.array([1e3 * b["kinds"][kind]["seconds"] for _, b in rows])
        ax.barh(y, ms, left=left, color=colour, label=kind, height=0.6)
        for yi, lo, w, (_, b) in zip(y, left, ms, rows):
            share = b["kinds"][kind].get("mfu")
            if share and w > 0.05 * totals.max():
                ax.text(lo + w / 2, yi, f"{100 * share:.0f}%", ha="center", va="center", fontsize=7, color="white")
        left = left + ms
    for yi, total in zip(y, left):
        ax.text(total, yi, f" {total:.0f} ms", va="center", fontsize=8)
    ax.set_yticks(y, [label for label, _ in rows], fontsize=8)
    ax.set_xlabel("GPU time per call, ms; white labels: the kind's FLOP rate as a share of the bf16 peak")
    ax.set_xlim(0, left.max() * 1.12)
    ax.set_title(title or "Where the time goes", fontsize=10)
    ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.06), ncol=4, frameon=False)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


LABEL_W = 330


def frame_grid(clips: torch.Tensor, labels: list[str], path: Path, tile: int = 96, max_frames: int = 8) -> Path:
    """clips [N, F, 3, H, W] in [0, 1] to a PNG: one row per clip (labelled), at most max_frames frames evenly
    spaced left to right, each drawn `tile` pixels high (toyvid's 32 px scaled up, a 512 px frame scaled down)."""
    n, f, _, h, w = clips.shape
    frames = np.linspace(0, f - 1, min(f, max_frames)).round().astype(int)
    tw, gap = max(1, round(w * tile / h)), 2
    img = Image.new("RGB", (LABEL_W + len(frames) * (tw + gap), n * (tile + gap)), "white")
    draw = ImageDraw.Draw(img)
    for i in range(n):
        for j, fi in enumerate(frames):
            frame = (clips[i, fi].permute(1, 2, 0).clamp(0, 1).numpy() * 255).astype(np.uint8)
            resample = Image.NEAREST if tile >= h else Image.BILINEAR  # crisp toy pixels; smooth downscales
            img.paste(Image.fromarray(frame).resize((tw, tile), resample), (LABEL_W + j * (tw + gap), i * (tile + gap)))
        lines = [line[:52] for line in labels[i].split("\n")]  # a label may span lines
        draw.multiline_text((4, i * (tile + gap) + tile // 2 - 7 * len(lines)), "\n".join(lines), fill="black")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return Path(path)
