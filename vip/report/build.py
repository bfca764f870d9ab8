"""Assemble the run report from a run directory's files and write it as HTML and Markdown.

    write_report(run_dir) -> <run>/report.html   (also <run>/report.md and <run>/report_files/*.png)

The HTML page is self-contained (figures are base64 data URIs, styles inline): one file to mail. Parts of the
run that do not exist yet are shown as "not yet run"; nothing is loaded but JSON files and PNGs.
"""
from __future__ import annotations

import json
import shutil
import traceback
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import matplotlib.pyplot as plt

from vip.plots import curation_chart, selection_chart
from vip.report import figures
from vip.report.collect import RunData, StageData, read_run
from vip.report.doc import (NOT_YET, Block, Code, CodeBlock, Figure, Heading, Missing, Para, Strong, Table, to_html,
                            to_markdown)
from vip.rewards.base import ASPECTS
from vip.steps.outcome import scored_on_line
from vip.store import atomic_write_text

SHORT = {"visual_quality": "VQ", "temporal_consistency": "TC", "dynamic_degree": "DD", "text_alignment": "TA"}
LEGEND = "VQ visual quality, TC temporal consistency, DD dynamic degree, TA text alignment (reward-model means)"
STEPS = (("selection", "leave-one-out and selection"), ("target", "target detection"), ("curation", "curation"),
         ("train_done", "ReDPO training"), ("outcome", "outcome"))
FILES = "report_files"
CHART_STYLE = {"axes.titlesize": 10, "figure.titlesize": 11}  # vip.plots' long panel titles fit their panels


def _f3(x) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "–"


def _sf3(x) -> str:
    return f"{x:+.3f}" if isinstance(x, (int, float)) else "–"


def _int(x) -> str:
    return f"{x:,}" if isinstance(x, int) else "–"


class Builder:
    def __init__(self, run: RunData):
        self.run = run
        self.files = run.path / FILES
        self.written: list[Path] = []
        self.blocks: list[Block] = []

    # -- helpers
    def fig_path(self, name: str) -> Path:
        p = self.files / name
        self.written.append(p)
        return p

    def section(self, what: str, fn: Callable[[], list[Block]]) -> None:
        """One part of the report; a part that cannot be drawn (an unexpected record) says why, the rest stands."""
        try:
            self.blocks += fn()
        except Exception as e:  # noqa: BLE001 - a report must not die of one odd record
            last = traceback.extract_tb(e.__traceback__)[-1]
            self.blocks.append(Para([f"{what} could not be shown: {type(e).__name__}: {e} "
                                     f"({Path(last.filename).name}:{last.lineno})"], muted=True))

    # -- run level
    def stage_state(self, s: StageData) -> str:
        done = [label for key, label in STEPS if getattr(s, key)]
        if s.outcome:
            return "finished"
        if not done and not s.metrics:
            loo = loo_progress(s.dir)
            return f"in progress: {loo}" if loo else NOT_YET
        todo = [label for key, label in STEPS if not getattr(s, key)]
        extra = f" (training: {len(s.metrics)} steps logged)" if s.metrics and not s.train_done else ""
        return f"done: {', '.join(done) or 'nothing yet'}; not yet: {', '.join(todo)}{extra}"

    def outcome_rows(self) -> list[dict]:
        """Per stage: full / pruned / ReDPO means and parameters; before outcome.json exists, full and pruned
        come from target.json and the parameters from selection.json."""
        rows = []
        stage1_sel = self.run.stages[0].selection if self.run.stages else None
        for s in self.run.stages:
            o, t, sel = s.outcome, s.target, s.selection
            row = {"stage": s.n, "full": None, "pruned": None, "redpo": None, "params_full": None,
                   "params_student": None, "targets": [], "training": ""}
            if o:
                row.update(full=o["full"], pruned=o["pruned"], redpo=o["redpo"], params_full=o["params"]["full"],
                           params_student=o["params"]["student"], targets=o.get("targets", []),
                           training=_training(o, s.train_done))
            elif t:
                row.update(full=t["teacher"], pruned=t["pruned"], targets=t["targets"])
            if not o and sel:
                row["params_student"] = sel.get("params_after")
                row["params_full"] = stage1_sel.get("params_before") if stage1_sel else None
            rows.append(row)
        return rows

    def summary(self) -> list[Block]:
        out: list[Block] = [Heading(2, "Outcome per stage", "outcome")]
        rows = self.outcome_rows()
        if not any(r["full"] for r in rows):
            return out + [Missing("outcome", "no stage has reached target detection")]
        header = ["stage", "model", *(SHORT[a] for a in ASPECTS), "total", "params", "params vs full",
                  "recovered", "target", "training"]
        body, classes = [], []
        for r in rows:
            if not r["full"]:
                body.append([f"stage {r['stage']}", "not yet run", *([""] * (len(header) - 2))])
                classes.append("missing")
                continue
            pf, ps = r["params_full"], r["params_student"]
            frac = f"{100 * ps / pf:.1f}%" if pf and ps else "–"
            for name, key, params in (("full", "full", pf), ("pruned", "pruned", ps), ("ReDPO", "redpo", ps)):
                m = r[key]
                if m is None:
                    body.append([f"stage {r['stage']}", f"{name} ({NOT_YET})", *([""] * (len(header) - 2))])
                    classes.append("missing")
                    continue
                cells = [f"stage {r['stage']}", Strong(name) if key == "redpo" else name,
                         *(_f3(m.get(a)) for a in ASPECTS), Strong(_f3(m.get("total"))), _int(params),
                         "100%" if key == "full" else frac,
                         recovered(r) if key == "redpo" else "",
                         ", ".join(SHORT.get(a, a) for a in r["targets"]) if key != "full" else "",
                         r["training"] if key == "redpo" else ""]
                body.append(cells)
                classes.append("")
        out.append(Table(header, body, classes, note=LEGEND + ". recovered: (ReDPO − pruned) / (full − pruned) "
                                                         "in total score. params: denoiser parameters."))
        drawn = [r for r in rows if r["full"]]
        path = figures.outcome_chart(drawn, self.fig_path("outcome.png"),
                                     title="Full teacher, pruned student and ReDPO-trained student per stage")
        outcomes = [s.outcome for s in self.run.stages if s.outcome]
        on = "held-out prompts" if outcomes and (outcomes[-1].get("scored_on") or {}).get("set") == "heldout" \
            else "evaluation prompts"
        out.append(Figure(path, f"Mean reward-model score per aspect and in total on the {on} (arrows: "
                                "pruned → ReDPO), and denoiser parameters per stage."))
        if outcomes:
            line = scored_on_line(outcomes[-1])
            out.append(Para([line[0].upper() + line[1:] + "."]))
        return out

    def prompt_filter(self) -> list[Block]:
        out: list[Block] = [Heading(2, "Prompt filter (run level)", "filter")]
        s = self.run.filter_summary
        if not s:
            return out + [Missing("prompt filter", "filter/summary.json is missing")]
        out.append(Para([f"{s.get('prompts', '?')} prompts from ", Code(str(s.get("source", "?"))), " scored by ",
                         Code(str(s.get("model", "?"))), f" ({s.get('backend', '?')} backend)."]))
        sets = s.get("sets", {})
        if sets:
            out.append(Table(["prompt set", "prompts"], [[k.replace("_", " "), _int(v)] for k, v in sets.items()]))
        hists = s.get("histograms", {})
        if hists:
            keys = list(next(iter(hists.values())))
            out.append(Table(["instruction", *(("score " + k) if k != "unparseable" else k for k in keys)],
                             [[name.replace("_", " "), *(_int(h.get(k)) for k in keys)] for name, h in hists.items()],
                             note="Number of prompts per LLM score (0-3) and per unparseable answer."))
        path = self.fig_path("filter_histogram.png")
        if self.run.filter_histogram:
            shutil.copyfile(self.run.filter_histogram, path)
        elif hists:
            from vip.steps.filter import plot_histogram

            plot_histogram(hists, path, f"Prompt scores of {s.get('prompts', '?')} prompts ({s.get('model', '?')})")
        else:
            self.written.remove(path)
            return out
        out.append(Figure(path, "Prompt-filter score histograms per instruction (Figure C)."))
        return out

    # -- stage level
    def stage(self, s: StageData) -> list[Block]:
        out: list[Block] = [Heading(2, f"Stage {s.n}", f"stage{s.n}"), Para([f"Status: {self.stage_state(s)}."])]
        sha = self.run.config_sha256
        stale = [label for key, label in STEPS if key != "train_done" and getattr(s, key)
                 and sha and getattr(s, key).get("config_sha256") not in (None, sha)]
        if stale:
            out.append(Para([f"Written under another config than this run's: {', '.join(stale)}."], muted=True))
        return out

    def selection(self, s: StageData) -> list[Block]:
        out: list[Block] = [Heading(3, f"Stage {s.n}: leave-one-out and unit selection")]
        sel = s.selection
        if not sel:
            loo = loo_progress(s.dir)
            return out + [Missing("leave-one-out and selection", loo, "in progress" if loo else NOT_YET)]
        chosen, n = sel["chosen"], sel["n"]
        with plt.rc_context(CHART_STYLE):
            path = selection_chart(sel, self.fig_path(f"stage{s.n}_selection.png"),
                                   title=f"Stage {s.n}: Δ per unit (shaded: removed)")
        out.append(Figure(path, "Δ = V(M) − V(M − unit) per aspect, stacked; black tick: total Δ. Units sorted by "
                                "total Δ, least harm on the left; removed units shaded and in bold."))
        parts: list = ["Removed ", *_join([Strong(u) for u in chosen]),
                       f": {len(chosen)} units, the smallest top-n of both rankings that holds k = "
                       f"{sel.get('k', len(chosen))} is n = {n}."]
        before, after = sel.get("params_before"), sel.get("params_after")
        if isinstance(before, int) and isinstance(after, int) and before:
            parts.append(f" Denoiser parameters {before:,} → {after:,} ({100 * (after - before) / before:+.1f}%).")
        out.append(Para(parts))
        seen = sel.get("samples_seen")
        if seen:  # adaptive leave-one-out
            full = max(seen.values())
            early = {u: c for u, c in seen.items() if c < full}
            clips = sum(seen.values())
            out.append(Para([f"Adaptive leave-one-out: {len(early)} of {len(seen) - 1} units were settled out of both "
                             f"rankings before the last round and scored on fewer samples (their Δ is over those): ",
                             ", ".join(f"{u} ({c})" for u, c in sorted(early.items(), key=lambda x: (x[1], x[0]))),
                             f". {clips} of {full * len(seen)} clips ({100 * (1 - clips / (full * len(seen))):.0f}% "
                             "saved)."]))
        d, params = sel["delta"], sel.get("unit_params", {})
        rows, classes = [], []
        for i, (ut, uc) in enumerate(zip(sel["by_total"], sel["by_tc"])):
            mark = lambda u: Strong(f"{u} ✓") if u in chosen else u  # noqa: E731
            rows.append([str(i + 1), mark(ut), _sf3(d[ut]["total"]), _int(params.get(ut)),
                         mark(uc), _sf3(d[uc]["temporal_consistency"]), _int(params.get(uc))])
            classes.append("top" if i < n else "")
        out.append(Table(["rank", "by total Δ", "Δ total", "params", "by TC Δ", "Δ TC", "params"], rows, classes,
                         note=f"Both rankings, least harm first. Shaded: the top n = {n} of each; ✓ (bold): removed, "
                              "i.e. in the top n of both. Δ > 0: removing the unit lowers the score."))
        out.append(Table(["removed unit", *(f"Δ {SHORT[a]}" for a in ASPECTS), "Δ total", "params"],
                         [[u, *(_sf3(d[u].get(a)) for a in ASPECTS), _sf3(d[u].get("total")), _int(params.get(u))]
                          for u in chosen]))
        return out

    def target(self, s: StageData) -> list[Block]:
        out: list[Block] = [Heading(3, f"Stage {s.n}: target detection")]
        t = s.target
        if not t:
            return out + [Missing("target detection")]
        rows = [[a.replace("_", " "), _f3(t["teacher"].get(a)), _f3(t["pruned"].get(a)), _sf3(t["drop"].get(a)),
                 Strong("target") if a in t["targets"] else ""] for a in ASPECTS]
        rows.append(["total", _f3(t["teacher"].get("total")), _f3(t["pruned"].get("total")),
                     _sf3(t["teacher"].get("total", 0) - t["pruned"].get("total", 0))
                     if "total" in t["teacher"] and "total" in t["pruned"] else "–", ""])
        out.append(Table(["aspect", "teacher", "pruned", "drop", ""], rows,
                         ["chosen" if a in t["targets"] else "" for a in ASPECTS] + [""],
                         note=f"Means over {t.get('samples', '?')} evaluation samples; drop = teacher − pruned. "
                              + ("Target: the largest drop." if not t.get("threshold") else
                                 f"Targets: every drop ≥ {t['threshold']} (else the largest).")))
        return out

    def curation(self, s: StageData) -> list[Block]:
        from vip.curation import RULE_TEXT

        out: list[Block] = [Heading(3, f"Stage {s.n}: preference pairs and curation")]
        c = s.curation
        if not c:
            return out + [Missing("pair generation and curation")]
        with plt.rc_context(CHART_STYLE):
            path = curation_chart(c, self.fig_path(f"stage{s.n}_curation.png"),
                                  title=f"Stage {s.n} curation: candidate pair scores and rejections")
        out.append(Figure(path, "Per target: scores of the preferred (teacher) and unpreferred (student) videos of "
                                "every candidate pair, with the α floor; right: rejections by rule."))
        dup = f", {c['duplicates']} exact duplicates dropped" if c.get("duplicates") else ""
        out.append(Para([Strong(f"kept {c['kept']} of {c['candidates']} candidate pairs"),
                         f" ({100 * c['kept'] / c['candidates']:.0f}%{dup}); targets ",
                         *_join([Code(a) for a in c["targets"]]), f"; α = {c['alpha']}."]))
        if c.get("primary_targets", c["targets"]) != c["targets"]:  # curate.fallback
            out.append(Para(["The largest drop, ", *_join([Code(a) for a in c["primary_targets"]]),
                             ", kept too few pairs to train on (", Code("curate.fallback"), "); pairs kept per target "
                             "tried: " + ", ".join(f"{t} {n}" for t, n in c["tried"].items()) + "."]))
        rows = [[RULE_TEXT.get(r, r), Code(r), _int(v)] for r, v in c["rejected"].items()]
        rows.append([Strong("kept"), "", Strong(_int(c["kept"]))])
        out.append(Table(["rule", "key", "pairs"], rows, [""] * (len(rows) - 1) + ["chosen"],
                         note="A pair may fail several rules, so rejections need not add up to candidates − kept."))
        floors = c.get("floors", {})
        if floors:
            out.append(Table(["target", "floor (mean − α·std of unpreferred)"],
                             [[a.replace("_", " "), _f3(v)] for a, v in floors.items()]))
        return out

    def training(self, s: StageData) -> list[Block]:
        out: list[Block] = [Heading(3, f"Stage {s.n}: ReDPO training")]
        m = s.metrics
        done = s.train_done
        if done and done.get("skipped"):
            out.append(Para([Strong("skipped"), f": {done['skipped']}; the pruned student goes on untrained."]))
            if not m:
                return out
        if not m:
            started = (s.dir / "train" / "metrics.jsonl").is_file()
            return out + [Missing("ReDPO training", "started; no step logged yet" if started else "",
                                  "in progress" if started else NOT_YET)]
        if done and not done.get("skipped"):
            out.append(Para([f"{done.get('steps', len(m))} steps on {done.get('pairs', '?')} pairs, "
                             f"{done.get('world_size', '?')} rank(s)."]))
        elif not done:
            out.append(Para([Strong("in progress"), f": {len(m)} steps logged so far."]))
        path = figures.training_curves(m, self.fig_path(f"stage{s.n}_training.png"),
                                       title=f"Stage {s.n} ReDPO training ({len(m)} steps)")
        out.append(Figure(path, "Per optimiser step: total loss, its DPO and SFT terms, implicit accuracy and "
                                "reward margin (thin: raw, thick: moving average), learning rate, gradient norm."))
        tail = max(1, len(m) // 10)
        rows = []
        for key, label in (("loss", "loss"), ("dpo", "DPO"), ("sft", "SFT"), ("rewards/accuracies", "accuracy"),
                           ("rewards/margins", "margin"), ("samples_per_s", "samples/s")):
            vals = [r[key] for r in m if isinstance(r.get(key), (int, float))]
            if vals:
                rows.append([label, _g(vals[0]), _g(sum(vals[-tail:]) / len(vals[-tail:]))])
        if rows:
            out.append(Table(["metric", "first step", f"mean of the last {tail} steps" if tail > 1 else "last step"],
                             rows))
        return out

    def stage_outcome(self, s: StageData) -> list[Block]:
        out: list[Block] = [Heading(3, f"Stage {s.n}: outcome")]
        o = s.outcome
        if not o:
            return out + [Missing("outcome (evaluation of the trained student)")]
        row = {"full": o["full"], "pruned": o["pruned"], "redpo": o["redpo"]}
        if s.train_done and s.train_done.get("skipped"):
            return out + [Para([f"Training was skipped ({s.train_done['skipped']}): the stage's student is the "
                                f"pruned one, total {o['redpo']['total']:.3f} (full {o['full']['total']:.3f}), with "
                                f"{o['params']['student']:,} of {o['params']['full']:,} denoiser parameters."])]
        worse = " – below the pruned student" if o["redpo"]["total"] < o["pruned"]["total"] else ""
        out.append(Para([f"ReDPO total {o['redpo']['total']:.3f} (pruned {o['pruned']['total']:.3f}, full "
                         f"{o['full']['total']:.3f}; recovered {recovered(row)} of the drop{worse}) with "
                         f"{o['params']['student']:,} of {o['params']['full']:,} denoiser parameters "
                         f"({100 * o['params']['student'] / o['params']['full']:.1f}%)."]))
        line = scored_on_line(o)
        out.append(Para([line[0].upper() + line[1:] + "."]))
        return out + self.samples(s)

    def samples(self, s: StageData) -> list[Block]:
        """The outcome step's frames of teacher, pruned and trained student for the same prompts and seeds."""
        drawn = s.dir / "samples.png"
        if not drawn.is_file():
            return []
        path = self.fig_path(f"stage{s.n}_samples.png")
        shutil.copyfile(drawn, path)
        return [Figure(path, "Frames left to right, for the same prompt and seed: the full teacher, the pruned "
                             "student before training and the trained student.")]

    def build(self) -> list[Block]:
        self.blocks.append(CodeBlock("config.yaml (the run's frozen config; click to open)", self.run.config_text,
                                     "yaml"))
        self.section("the outcome summary", self.summary)
        self.section("the prompt filter", self.prompt_filter)
        if not self.run.stages:
            self.blocks += [Heading(2, "Stages", "stage1"), Missing("stage 1", "no stage folder yet")]
        for s in self.run.stages:
            self.section(f"stage {s.n}", lambda s=s: self.stage(s))
            for what, fn in (("selection", self.selection), ("target", self.target), ("curation", self.curation),
                             ("training", self.training), ("outcome", self.stage_outcome)):
                self.section(f"stage {s.n} {what}", lambda fn=fn, s=s: fn(s))
        return self.blocks



def _join(items: list) -> list:
    out = []
    for i, x in enumerate(items):
        out += ([", "] if i else []) + [x]
    return out


def _training(outcome: dict, done: dict | None) -> str:
    """How the stage's student was trained: outcome.json's "training" (newer runs), else from train/done.json."""
    if outcome.get("training"):
        return ("skipped: " if done and done.get("skipped") else "") + str(outcome["training"])
    if done:
        return f"skipped: {done['skipped']}" if done.get("skipped") else f"{done.get('steps')} steps on " \
                                                                           f"{done.get('pairs')} pairs"
    return ""


def _g(x: float) -> str:
    return f"{x:.4g}"


def recovered(row: dict) -> str:
    """(ReDPO − pruned) / (full − pruned) in total score; '–' when the pruned student lost nothing."""
    try:
        f, p, r = row["full"]["total"], row["pruned"]["total"], row["redpo"]["total"]
    except (KeyError, TypeError):
        return "–"
    return f"{100 * (r - p) / (f - p):.0f}%" if f - p > 1e-9 else "–"


def loo_progress(stage_dir: Path) -> str:
    """'leave-one-out 2 of 5 tasks done' from the plan and the completion markers (not verified here)."""
    plan = stage_dir / "loo" / "tasks.json"
    if not plan.is_file():
        return ""
    try:
        n = len(json.loads(plan.read_text())["tasks"])
    except (ValueError, KeyError):
        return ""
    done = len(list((stage_dir / "loo" / "done").glob("task_*"))) if (stage_dir / "loo" / "done").is_dir() else 0
    merged = "; merged" if (stage_dir / "loo.h5").is_file() else ""
    return f"leave-one-out {done} of {n} tasks done{merged}"


def write_report(run_dir: str | Path) -> Path:
    """Write <run>/report.html (self-contained), <run>/report.md and its figures under <run>/report_files/;
    return the HTML path. A path that is not a run directory is a ConfigError."""
    run = read_run(run_dir)
    b = Builder(run)
    b.files.mkdir(exist_ok=True)
    blocks = b.build()
    title = f"V.I.P. run report: {run.path.name}"
    generated = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = [("run directory", Code(str(run.path))),
            ("config sha256", Code(run.config_sha256 or "(no config.sha256)")),
            ("generated", generated),
            *((f"stage {s.n}", b.stage_state(s)) for s in run.stages)]
    nav = [("outcome", "Outcome"), ("filter", "Prompt filter"),
           *((f"stage{s.n}", f"Stage {s.n}") for s in run.stages)]
    for stale in b.files.glob("*.png"):
        if stale not in b.written:
            stale.unlink()
    atomic_write_text(run.path / "report.md", to_markdown(title, meta, blocks, run.path))
    html_path = run.path / "report.html"
    atomic_write_text(html_path, to_html(title, meta, nav, blocks))
    for p in (html_path, run.path / "report.md", *b.written):
        if p.is_file():
            p.chmod(0o644)  # atomic writes are private (0600); a report is for reading
    return html_path
