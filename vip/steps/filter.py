"""Prompt filtering (supplement F), once per run and shared by every stage: `<run>/filter/`.

The source prompts are scored by an LLM backend on both instructions (Listings 1 and 2) in tasks
of `filter.prompts_per_task` prompts; each task writes one HDF5 shard; `merge` builds the score
file, the prompt sets, a summary and Figure C only when every shard is present and intact and
every target set selects a prompt; a merge that fails leaves none of them behind.

    filter/tasks.json            the plan: the source prompts themselves and the task ranges
    filter/shards/, done/        per-task scores (-1 = unparseable answer, with one such answer per
                                 instruction kept for the error message) and completion markers
    filter/sets/<name>.jsonl     {"id", "prompt"} per line, one file per set (JSONL, not .txt:
                                 a prompt may contain a line break)
    filter/summary.json          set sizes, score histograms, unparseable counts
    filter/histogram.png         Figure C: the score distribution per instruction
    filter/scores.h5             prompts and scores; written last, so it marks the step done
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vip import provenance as prov
from vip.config import Config, ConfigError
from vip.prompts import filters
from vip.prompts.instructions import INSTRUCTIONS, template_sha256
from vip.prompts.llm import Backend, ToyvidBackend, check_backend, make_backend
from vip.prompts.sets import load_prompts
from vip.store import IncompleteError, RunDir, ShardSet, atomic_path, atomic_write_json, atomic_write_text, read_h5, \
    write_h5

SETS: tuple[str, ...] = filters.TARGETS + ("static", "dynamic")
JOB = "python jobs/filter_prompts.py"
UNPARSEABLE_ATTR = "unparseable_answers"  # shard attribute: JSON {instruction: one unparseable answer}
SHOWN_CHARS = 80  # of that answer, in the error line


class EmptySetError(ConfigError):
    """A target set selects no prompt: the message names the rule and shows the score histogram."""


class UnparseableAnswersError(EmptySetError):
    """A target set is empty and the answers its rule reads include unparseable ones: the message
    blames the LLM backend (how many answers, one of them), not the source prompts. The merge has
    discarded the shards holding unparseable answers, so a re-run asks those again."""


def step_dir(run: RunDir) -> Path:
    return run.path / "filter"


def shards(run: RunDir) -> ShardSet:
    return ShardSet(step_dir(run))


def scores_path(run: RunDir) -> Path:
    return step_dir(run) / "scores.h5"


def set_path(run: RunDir, name: str) -> Path:
    return step_dir(run) / "sets" / f"{name}.jsonl"


def summary_path(run: RunDir) -> Path:
    return step_dir(run) / "summary.json"


def histogram_path(run: RunDir) -> Path:
    return step_dir(run) / "histogram.png"


def preflight(cfg: Config, run: RunDir) -> None:
    """Check the backend (API key) and the source prompts, then freeze the config: nothing is
    written before every check has passed."""
    check_backend(cfg.filter)
    if read_plan(run) is None:  # once planned, the plan holds the prompts; the source is not read again
        load_prompts(cfg.filter.source, key="filter.source")
    run.freeze(cfg)


def read_plan(run: RunDir) -> dict | None:
    path = step_dir(run) / "tasks.json"
    return json.loads(path.read_text()) if path.is_file() else None


def plan(run: RunDir, cfg: Config) -> dict:
    """{source, backend, model, instructions, config_sha256, prompts, tasks}, written once to
    filter/tasks.json and read back afterwards, so array tasks agree on what task i is even if
    the source file changes later."""
    planned = read_plan(run)
    if planned is not None:
        return planned
    prompts = load_prompts(cfg.filter.source, key="filter.source")
    per = cfg.filter.prompts_per_task
    planned = {
        "source": cfg.filter.source, "backend": cfg.filter.backend,
        "model": cfg.filter.model if cfg.filter.backend == "gemini" else ToyvidBackend.model,
        "instructions": {name: template_sha256(name) for name in INSTRUCTIONS},
        "config_sha256": cfg.hash(),
        "prompts": prompts,
        "tasks": [[lo, min(lo + per, len(prompts))] for lo in range(0, len(prompts), per)],
    }
    atomic_write_json(step_dir(run) / "tasks.json", planned)
    return planned


def missing(run: RunDir, cfg: Config) -> list[int]:
    return shards(run).missing(range(len(plan(run, cfg)["tasks"])))


def _check_plan(planned: dict, cfg: Config) -> None:
    if planned["config_sha256"] != cfg.hash():
        raise ConfigError(f"prompt filtering of this run was planned with another config (sha256 "
                          f"{planned['config_sha256'][:12]}, now {cfg.hash()[:12]}); start a new run with --run-dir")
    changed = [n for n in INSTRUCTIONS if planned["instructions"].get(n) != template_sha256(n)]
    if changed:
        raise ConfigError(f"the {', '.join(changed)} instruction changed since this run was planned; "
                          "its scores would mix two instructions: start a new run with --run-dir")


def run_task(run: RunDir, cfg: Config, index: int, backend: Backend | None = None,
             progress: Callable[[int], None] | None = None) -> None:
    """Score task `index`'s prompts on both instructions and write its shard."""
    planned = plan(run, cfg)
    _check_plan(planned, cfg)
    if not 0 <= index < len(planned["tasks"]):
        raise ConfigError(f"--task must be 0 to {len(planned['tasks']) - 1}, got {index}")
    lo, hi = planned["tasks"][index]
    prompts, ids = planned["prompts"][lo:hi], list(range(lo, hi))
    backend = backend or make_backend(cfg.filter)
    arrays: dict[str, np.ndarray] = {"prompt_ids": np.arange(lo, hi)}
    examples: dict[str, str] = {}  # one unparseable answer per instruction, for merge's error message
    for name in INSTRUCTIONS:
        scores = backend.score(prompts, name, ids=ids)
        bad = [s for s in scores if s is not None and s not in (0, 1, 2, 3)]
        if len(scores) != len(prompts) or bad:
            raise RuntimeError(f"backend {backend.model} returned {len(scores)} scores for {len(prompts)} prompts "
                               f"or scores outside 0-3 ({bad[:3]})")
        arrays[name] = np.array([filters.UNPARSEABLE if s is None else s for s in scores], dtype=np.int8)
        answers = getattr(backend, "unparseable", {})
        for p, s in zip(prompts, scores):
            if s is None and (name, p) in answers:
                examples[name] = answers[(name, p)]
                if examples[name].strip():
                    break
        if progress:
            progress(len(prompts))
    shards(run).write(index, arrays, {"config_sha256": cfg.hash(), "task": index, "model": backend.model,
                                      "instructions": json.dumps(planned["instructions"]),
                                      UNPARSEABLE_ATTR: json.dumps(examples, ensure_ascii=False),
                                      prov.ATTR: prov.encode(provenance(planned, index))})


def provenance(planned: dict, index: int) -> dict:
    """What determines task `index`'s scores (vip.provenance): the backend and its LLM, the two
    instructions, the prompts (ids and texts), the task's place in the plan, and the run's config
    (which the filter's plan is tied to)."""
    lo, hi = planned["tasks"][index]
    return {"kind": "filter", "backend": planned["backend"], "model": planned["model"],
            "instructions": planned["instructions"], "prompt_ids": list(range(lo, hi)),
            "prompts_sha256": prov.texts_sha256(planned["prompts"][lo:hi]), "task": index, "samples": [lo, hi],
            "config_sha256": planned["config_sha256"]}


def _histogram_text(name: str, scores: np.ndarray) -> str:
    h = filters.histogram(scores)
    return f"{name} scores of {len(scores)} prompts: " + " ".join(f"{k}:{v}" for k, v in h.items())


def _write_set(run: RunDir, name: str, prompts: list[str], mask: np.ndarray) -> None:
    lines = [json.dumps({"id": int(i), "prompt": prompts[i]}, ensure_ascii=False) for i in np.flatnonzero(mask)]
    atomic_write_text(set_path(run, name), "".join(line + "\n" for line in lines))


def plot_histogram(hists: dict[str, dict[str, int]], path: Path, title: str) -> None:
    """Figure C: the number of prompts per score, one panel per instruction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(hists), figsize=(4.2 * len(hists), 3.4), sharey=True)
    for ax, (name, h) in zip(np.atleast_1d(axes), hists.items()):
        labels = list(h)
        colours = ["#aaaaaa"] * 3 + ["#55a868", "#c44e52"]  # score 3 (kept for the aspect's set), unparseable
        bars = ax.bar(range(len(labels)), [h[k] for k in labels], color=colours, width=0.7)
        ax.bar_label(bars, fontsize=8)
        ax.margins(y=0.12)
        ax.set_xticks(range(len(labels)), [k if k != "unparseable" else "n/a" for k in labels])
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("LLM score")
    np.atleast_1d(axes)[0].set_ylabel("prompts")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def _read_by(name: str) -> list[str]:
    """The instructions whose scores a target set's rule reads."""
    if name in ("dynamic_degree", "temporal_consistency"):
        return ["dynamic_motion"]
    if name == "visual_quality":
        return ["visual_quality"]
    return list(INSTRUCTIONS)


def _empty_message(name: str, scores: dict[str, np.ndarray], wording_ok: int) -> str:
    """One line: which rule emptied the set, and the histogram of the scores it looked at (every
    answer parsed: too few prompts scored high enough)."""
    hist = "; ".join(_histogram_text(s, scores[s]) for s in _read_by(name))
    wording = f"; {wording_ok} prompts pass the wording rule" if name == "text_alignment" else ""
    return f"the {name} prompt set is empty: {filters.why_empty(name)}; {hist}{wording}; " \
           "use a larger or more varied filter.source"


def _shown_answer(answer: str | None) -> str:
    if answer is None:
        return "(the answer text was not recorded)"
    if not answer.strip():
        return "an empty answer"
    cut = answer if len(answer) <= SHOWN_CHARS else answer[:SHOWN_CHARS] + "..."
    return "e.g. " + repr(cut)  # repr: one line, whatever the answer holds


def _unparseable_message(name: str, scores: dict[str, np.ndarray], example: str | None, planned: dict,
                         redone: int) -> str:
    """One line: how many of the answers the rule reads were unparseable, one of them, and the fix."""
    read = _read_by(name)
    bad = sum(int((scores[s] == filters.UNPARSEABLE).sum()) for s in read)
    total = sum(len(scores[s]) for s in read)
    backend = f"filter.backend={planned['backend']}" + (
        f", filter.model={planned['model']}" if planned["backend"] == "gemini" else "")
    all_bad = sum(int((s == filters.UNPARSEABLE).sum()) for s in scores.values())
    overall = f"; {all_bad} of {sum(len(s) for s in scores.values())} answers in all" if all_bad > bad else ""
    hist = "; ".join(_histogram_text(s, scores[s]) for s in read)
    tasks = "the task holding them is" if redone == 1 else f"the {redone} tasks holding them are"
    return (f"the {name} prompt set is empty: {bad} of {total} {' and '.join(read)} answers from {planned['model']} "
            f"were unparseable (no '[RESULT] 0-3'{overall}), {_shown_answer(example)}; {hist}; check the LLM "
            f"backend and its model ({backend}), then re-run: {tasks} redone and the unparseable answers asked "
            "again (they are never cached)")


def remove_outputs(run: RunDir) -> None:
    """Delete the merged outputs (the score file first: it marks the step done); shards stay."""
    for path in [scores_path(run), summary_path(run), histogram_path(run), *(set_path(run, n) for n in SETS)]:
        path.unlink(missing_ok=True)
    sets = set_path(run, "x").parent
    if sets.is_dir() and not any(sets.iterdir()):
        sets.rmdir()


def merge(run: RunDir, cfg: Config) -> Path:
    """Build every output from complete shards; refuses if any task is missing or a target set is empty.
    The outputs are written only once every check has passed; a merge that fails for any reason
    removes them (an earlier failed merge may have left some behind), never the shards of the plan's
    tasks, except that a target set emptied with unparseable answers among those it reads discards
    the shards holding unparseable answers, so that a re-run asks them again."""
    planned = plan(run, cfg)
    _check_plan(planned, cfg)
    try:
        return _merge(run, planned)
    except BaseException:
        try:
            remove_outputs(run)
        except OSError:  # e.g. a read-only run directory: the original error is the one to report
            pass
        raise


def _merge(run: RunDir, planned: dict) -> Path:
    prompts = planned["prompts"]
    n = len(prompts)
    scores = {name: np.full(n, -2, dtype=np.int8) for name in INSTRUCTIONS}  # -2: not yet filled
    tainted: list[int] = []  # tasks whose shard holds an unparseable answer
    examples: dict[str, list[str]] = {name: [] for name in INSTRUCTIONS}  # unparseable answers, one per shard
    for i, (arrays, attrs) in enumerate(shards(run).read_all(list(range(len(planned["tasks"]))))):
        prov.check(shards(run).shard(i), attrs, provenance(planned, i))
        recorded = json.loads(attrs.get(UNPARSEABLE_ATTR, "{}"))
        for name in INSTRUCTIONS:
            scores[name][arrays["prompt_ids"]] = arrays[name]
            if (arrays[name] == filters.UNPARSEABLE).any():
                if name in recorded:
                    examples[name].append(recorded[name])
                if not tainted or tainted[-1] != i:
                    tainted.append(i)
    if any((s == -2).any() for s in scores.values()):
        raise IncompleteError(f"merged prompt scores have gaps in {step_dir(run)}; re-run {JOB}")

    masks = filters.select(prompts, scores["dynamic_motion"], scores["visual_quality"])
    wording_ok = int(sum(filters.text_alignment_ok(p) for p in prompts))
    empty = [name for name in filters.TARGETS if not masks[name].any()]
    if empty:
        name = empty[0]
        read = [s for s in _read_by(name) if (scores[s] == filters.UNPARSEABLE).any()]
        if not read:
            raise EmptySetError(_empty_message(name, scores, wording_ok))
        for i in tainted:  # not done any more: a re-run (against a working backend) asks them again
            shards(run).discard(i)
        found = [a for s in read for a in examples[s]]
        example = next((a for a in found if a.strip()), found[0] if found else None)
        raise UnparseableAnswersError(_unparseable_message(name, scores, example, planned, len(tainted)))

    for name in SETS:
        _write_set(run, name, prompts, masks[name])
    hists = {name: filters.histogram(s) for name, s in scores.items()}
    summary = {
        "source": planned["source"], "backend": planned["backend"], "model": planned["model"], "prompts": n,
        "sets": {name: int(masks[name].sum()) for name in SETS},
        "histograms": hists,
        "unparseable": {name: h["unparseable"] for name, h in hists.items()},
        "text_alignment_wording_ok": wording_ok,
    }
    atomic_write_json(summary_path(run), summary)
    plot_histogram(hists, histogram_path(run), f"Prompt scores of {n} prompts ({planned['model']})")
    write_h5(scores_path(run), {"prompts": np.array(prompts, dtype=object).astype(str), **scores},
             {"config_sha256": planned["config_sha256"], "source": planned["source"], "model": planned["model"],
              "backend": planned["backend"], "instructions": json.dumps(planned["instructions"]),
              "unparseable": json.dumps(summary["unparseable"])})
    return scores_path(run)


def is_done(run: RunDir, cfg: Config) -> bool:
    p = scores_path(run)
    if not p.is_file() or not all(set_path(run, name).is_file() for name in SETS):
        return False
    try:
        _, attrs = read_h5(p)
    except OSError:
        return False
    return attrs.get("config_sha256") == cfg.hash()


def _read_set(run: RunDir, name: str) -> list[str]:
    if not scores_path(run).is_file():
        raise IncompleteError(f"prompt filtering of run {str(run.path)!r} has not finished (no {scores_path(run)}); "
                              f"run {JOB} --run-dir {run.path}")
    path = set_path(run, name)
    if not path.is_file():
        raise IncompleteError(f"prompt set {path} is missing; re-run {JOB} --merge --run-dir {run.path}")
    return [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line]


def prompts_for(run: RunDir, aspect: str) -> list[str]:
    """The filtered prompts for a target aspect (one of filters.TARGETS), in source order."""
    if aspect not in filters.TARGETS:
        raise ConfigError(f"no prompt set for aspect {aspect!r}; expected one of {', '.join(filters.TARGETS)}")
    return _read_set(run, aspect)


def static_dynamic(run: RunDir) -> tuple[list[str], list[str]]:
    """C.3's split: (static prompts: Listing 1 score 1-2, dynamic prompts: score 3)."""
    return _read_set(run, "static"), _read_set(run, "dynamic")


def read_summary(run: RunDir) -> dict | None:
    p = summary_path(run)
    return json.loads(p.read_text()) if p.is_file() else None
