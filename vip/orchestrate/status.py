"""Where a run stands, read from its files only (nothing is loaded or run)."""
from __future__ import annotations

import json

from vip.rewards.base import ASPECTS
from vip.steps import filter as prompt_filter
from vip.steps import loo, pairs
from vip.steps.outcome import scored_on_line
from vip.store import RunDir, ShardSet, read_json
from vip.train.metrics import read_metrics

SHORT = {"visual_quality": "VQ", "temporal_consistency": "TC", "dynamic_degree": "DD", "text_alignment": "TA"}


def stage_status(run: RunDir, stage: int) -> list[tuple[str, str, str]]:
    """Rows of (step, state, detail)."""
    d = run.stage(stage)
    rows = []
    planned = loo.read_plan(d)
    row = _tasks_row("loo", d / "loo", planned, merged=d / "loo.h5")
    if planned and "adaptive" in planned:  # the task count grows round by round
        a = planned["adaptive"]
        state = "partial" if row[1] == "done" and loo.rounds_left(planned) else row[1]  # more rounds to plan
        row = (row[0], state, f"adaptive round {len(a['rounds'])} of at most {len(a['ends'])}, "
                              f"{len(a['rounds'][-1]['variants']) - 1} units in play; " + row[2])
    rows.append(row)
    merged = _h5_state(d / "loo.h5")
    rows.append(("merge", merged, str(d / "loo.h5") + ("; unreadable: the merge runs again, from the shards"
                                                       if merged == "damaged" else "")))
    sel = read_json(d / "selection.json")
    rows.append(("select", "done", f"chosen {', '.join(sel['chosen'])}") if sel else ("select", "missing", ""))
    rows.append(_filter_row(run))
    tgt = read_json(d / "target.json")
    rows.append(("target", "done", f"{', '.join(tgt['targets'])} (drop "
                 + ", ".join(f"{SHORT[a]} {tgt['drop'][a]:+.3f}" for a in ASPECTS) + ")") if tgt else ("target", "missing", ""))
    cur = read_json(d / "curation.json")
    rows.append(_tasks_row("pairs", d / "pairs", pairs.read_plan(d), merged=d / "pairs.h5" if cur else None))
    rows.append(("curate", "done", f"kept {cur['kept']} of {cur['candidates']} pairs -> {d / 'pairs.h5'}")
                if cur else ("curate", "missing", ""))
    rows.append(_train_row(d / "train"))
    out = read_json(d / "outcome.json")
    rows.append(("outcome", "done", f"ReDPO total {out['redpo']['total']:.3f} (pruned {out['pruned']['total']:.3f}, "
                 f"full {out['full']['total']:.3f})") if out else ("outcome", "missing", ""))
    return rows


def _tasks_row(step: str, directory, planned: dict | None, merged=None) -> tuple[str, str, str]:
    """A fanned-out step's row. `merged`: the file its shards were merged into (loo.h5, pairs.h5): once it
    is readable, a shard damaged or removed later changes nothing (nothing reads or recomputes it), so
    the state is "merged" and the detail names that shard, instead of a "partial" that is not true."""
    if planned is None:
        return (step, "not started", "")
    n = len(planned["tasks"])
    shards = ShardSet(directory)
    missing = shards.missing(range(n))
    if missing and merged is not None and _h5_state(merged) == "done":
        return (step, "merged", f"{n}/{n} tasks merged into {merged.name}; since then " + _shard_words(shards, missing)
                + f": not needed, {merged.name} is complete and nothing will be recomputed")
    state = "done" if not missing else ("missing" if len(missing) == n else "partial")
    return (step, state, f"{n - len(missing)}/{n} tasks" + (f"; missing {missing[:8]}" if missing else ""))


def _shard_words(shards: ShardSet, tasks: list[int]) -> str:
    """'the shard of task 3 is damaged (.../task_00003.h5)', '... of tasks 1, 4 are removed (...)', both."""
    damaged = [t for t in tasks if shards.shard(t).exists() or shards.marker(t).exists()]
    removed = [t for t in tasks if t not in damaged]
    parts = []
    for which, word in ((damaged, "damaged"), (removed, "removed")):
        if which:
            names = ", ".join(str(shards.shard(t)) for t in which[:4]) + (", ..." if len(which) > 4 else "")
            one = len(which) == 1
            parts.append(f"the shard{'' if one else 's'} of task{'' if one else 's'} "
                         f"{', '.join(map(str, which[:8]))}{', ...' if len(which) > 8 else ''} "
                         f"{'is' if one else 'are'} {word} ({names})")
    return " and ".join(parts)


def _h5_state(path) -> str:
    """done (an HDF5 file that opens), damaged (there but unreadable) or missing."""
    import h5py

    if not path.is_file():
        return "missing"
    try:
        with h5py.File(path, "r"):
            return "done"
    except OSError:
        return "damaged"


def _filter_row(run: RunDir) -> tuple[str, str, str]:
    summary = prompt_filter.read_summary(run)
    if summary is not None and prompt_filter.scores_path(run).is_file():
        sizes = summary.get("sets", {})
        return ("filter", "done", ", ".join(f"{k} {v}" for k, v in sizes.items()) if isinstance(sizes, dict) else "")
    row = _tasks_row("filter", prompt_filter.step_dir(run), prompt_filter.read_plan(run))
    return row if row[1] != "done" else ("filter", "partial", row[2] + "; not merged")


def _train_row(directory) -> tuple[str, str, str]:
    done = read_json(directory / "done.json")
    if done and done.get("skipped"):
        return ("train", "done", f"skipped: {done['skipped']} -> {directory / 'final'} (the pruned student)")
    if done:
        return ("train", "done", f"{done['steps']} steps on {done['pairs']} pairs, {done['world_size']} ranks "
                                 f"-> {directory / 'final'}")
    steps = len(read_metrics(directory))
    ckpts = sorted(p.name for p in (directory / "ckpt").glob("step*")) if (directory / "ckpt").is_dir() else []
    if steps or ckpts:
        return ("train", "partial", f"{steps} steps logged; last checkpoint {ckpts[-1] if ckpts else 'none'}")
    return ("train", "missing", "")


def all_outcomes(run: RunDir) -> list[dict]:
    out, n = [], 1
    while (run.stage(n) / "outcome.json").is_file():
        out.append(json.loads((run.stage(n) / "outcome.json").read_text()))
        n += 1
    return out


def outcome_table(outcomes: list[dict]) -> str:
    """Per stage: full / pruned / ReDPO per aspect and parameters (the paper's Table B)."""
    rows = []
    for o in outcomes:
        for name, key, params in (("full", "full", o["params"]["full"]), ("pruned", "pruned", o["params"]["student"]),
                                  ("ReDPO", "redpo", o["params"]["student"])):
            m = o[key]
            rows.append((f"stage {o['stage']}", name, *(f"{m[a]:.3f}" for a in ASPECTS), f"{m['total']:.3f}",
                         f"{params:,}", ", ".join(SHORT[t] for t in o["targets"]) if name == "ReDPO" else "",
                         o.get("training", "") if name == "ReDPO" else ""))
    header = ("stage", "model", *(SHORT[a] for a in ASPECTS), "total", "params", "target", "training")
    return format_rows(rows, header) + "\n" + scored_on_line(outcomes[-1] if outcomes else {})



def recovery_line(o: dict) -> str:
    """What ReDPO recovered of what pruning lost, on the outcome's own samples: the target's drop and the total's."""
    if " steps on " not in o.get("training", ""):  # the trainer's reason for skipping instead
        return f"stage {o['stage']}: not trained ({o.get('training')})"
    parts = []
    for aspect in [*o["targets"][:1], "total"]:
        full, pruned, redpo = o["full"][aspect], o["pruned"][aspect], o["redpo"][aspect]
        name = SHORT.get(aspect, aspect)
        if full - pruned > 1e-9:
            parts.append(f"{name} {pruned:.3f} -> {redpo:.3f} ({100 * (redpo - pruned) / (full - pruned):+.0f}% of the "
                         f"{full - pruned:.3f} lost)")
        else:
            parts.append(f"{name} {pruned:.3f} -> {redpo:.3f} ({redpo - pruned:+.3f}; pruning lost nothing here)")
    return f"stage {o['stage']}: " + "; ".join(parts)


def run_summary(run: RunDir, stages: list[int]) -> str:
    """The screen a local run ends with: per stage what was removed and curated, Table B, what was recovered,
    and where the rest is (the report: leave-one-out tables, curves, frames)."""
    lines = []
    outcomes = {o["stage"]: o for o in all_outcomes(run)}
    for n in stages:
        sel, cur = read_json(run.stage(n) / "selection.json"), read_json(run.stage(n) / "curation.json")
        if sel:
            before, after = sel["params_before"], sel["params_after"]
            lines.append(f"stage {n}: removed {', '.join(sel['chosen'])} "
                         f"(denoiser {before:,} -> {after:,} parameters, {100 * (after - before) / before:+.1f}%)")
        if cur:
            primary = cur.get("primary_targets", cur["targets"])
            fallback = "" if primary == cur["targets"] else \
                f" (the largest drop, {', '.join(SHORT[t] for t in primary)}, kept {cur['tried'][','.join(primary)]})"
            lines.append(f"  target {', '.join(SHORT[t] for t in cur['targets'])}: kept {cur['kept']} of "
                         f"{cur['candidates']} candidate pairs{fallback}")
    found = [outcomes[n] for n in stages if n in outcomes]
    lines += ["", outcome_table(found), ""]
    lines += [recovery_line(o) for o in found]
    report = run.path / "report.html"
    lines += ["", f"report: {report}" if report.is_file() else f"run directory: {run.path}",
              f"details: python jobs/stage.py --stage {stages[0]} --until {stages[-1]} --run-dir {run.path} --status"]
    return "\n".join(lines)


def curation_summary(record: dict | None) -> str:
    if not record:
        return "(no curation yet)"
    from vip.curation import RULE_TEXT

    lines = [f"targets {', '.join(record['targets'])}: kept {record['kept']} of {record['candidates']} candidate pairs"
             + (f" ({record['duplicates']} exact duplicates dropped)" if record.get("duplicates") else "")]
    if record.get("primary_targets", record["targets"]) != record["targets"]:  # curate.fallback
        tried = ", ".join(f"{t} {n}" for t, n in record["tried"].items())
        lines.append(f"  (the largest drop, {', '.join(record['primary_targets'])}, kept too few pairs; pairs kept per "
                     f"target tried: {tried})")
    lines += [f"  rejected {record['rejected'][r]:>4}: {RULE_TEXT[r]}" for r in record["rejected"]]
    return "\n".join(lines)


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
