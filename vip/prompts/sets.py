"""Prompt sets: built-in ones and files (.txt one prompt per line; .csv / .jsonl with a `prompt` column)."""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from vip.config import ConfigError
from vip.toyvid import world



def _toyvid_balanced() -> list[str]:
    """The grammar in an order whose every prefix is balanced over colour, shape, motion and
    background: greedily take the prompt whose factor values have been used least so far."""
    return _balanced(world.all_prompts())


def _balanced(prompts: list) -> list[str]:
    remaining = list(prompts)
    counts: dict[tuple[str, str], int] = {}
    order = []
    while remaining:
        def load(p):
            return sum(counts.get((f, getattr(p, f)), 0) ** 2 for f in ("colour", "shape", "motion", "background"))
        best = min(remaining, key=load)  # min keeps the first of equals: deterministic
        remaining.remove(best)
        order.append(best.text)
        for f in ("colour", "shape", "motion", "background"):
            counts[(f, getattr(best, f))] = counts.get((f, getattr(best, f)), 0) + 1
    return order


def _toyvid_heldout() -> list[str]:
    """Grammar prompts past the first 108 of the `toyvid` order (room for prompts.eval_count up to 108), in
    an order balanced the same way: the held-out set of the embedded demo."""
    eval_side = set(_toyvid_balanced()[:108])
    remaining = [p for p in world.all_prompts() if p.text not in eval_side]
    return _balanced(remaining)


BUILTIN = {"toyvid": _toyvid_balanced, "toyvid_heldout": _toyvid_heldout}
HELDOUT_SEED_BASE = 2_000_000  # held-out seeds: far from the evaluation seeds (0...) and the pairs' (1_000_000...)


@dataclass(frozen=True)
class EvalSet:
    """Fixed prompts and seeds: sample i is (prompts[i], seeds[i])."""

    prompts: list[str]
    seeds: list[int]
    prompt_ids: list[int]  # index of each prompt in its source set


ALLOWED_CONTROLS = "\t\n\r"  # whitespace: a prompt may hold a line break (a quoted CSV field, a JSONL string)


def check_controls(prompt: str, key: str, path: Path, where: str) -> None:
    """A prompt holding an ASCII or C1 control character other than a tab or a line break (NUL, ESC,
    BEL, DEL, form feed, ...) is refused, naming the file and the line: such a character is never part of
    what a person meant, and it would reach the tokenizer, the LLM and the run's files as it is."""
    bad = next((c for c in prompt if (ord(c) < 32 or 127 <= ord(c) < 160) and c not in ALLOWED_CONTROLS), None)
    if bad is not None:
        raise ConfigError(f"{key}: prompt file {str(path)!r} {where} holds the control character U+{ord(bad):04X}; "
                          "remove it (a prompt may hold tabs and line breaks, no other control characters)")


def read_prompt_file(path: Path, key: str = "prompts.eval") -> list[str]:
    if not path.is_file():
        raise ConfigError(f"{key}: prompt file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            if rows and "prompt" not in rows[0]:
                raise ConfigError(f"{key}: {str(path)!r} has no 'prompt' column (columns: {list(rows[0])})")
            prompts = [r["prompt"] or "" for r in rows]
            for n, p in enumerate(prompts, 2):  # line 1 is the header
                check_controls(p, key, path, f"row {n}")
        elif suffix == ".jsonl":
            prompts = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
                        raise ConfigError(f"{key}: {str(path)!r} line {n} has no 'prompt' field holding text")
                    check_controls(row["prompt"], key, path, f"line {n}")
                    prompts.append(row["prompt"])
        elif suffix in (".txt", ""):
            # only a line break ends a line: str.splitlines also splits at form feeds and other controls
            prompts = re.split(r"\r\n|\r|\n", path.read_text(encoding="utf-8"))
            for n, p in enumerate(prompts, 1):
                check_controls(p, key, path, f"line {n}")
        else:
            raise ConfigError(f"{key}: prompt file {str(path)!r} has an unknown extension {suffix!r}; "
                              "expected .txt (one prompt per line), .csv or .jsonl (a 'prompt' column)")
    except (UnicodeDecodeError, json.JSONDecodeError, csv.Error) as e:
        raise ConfigError(f"{key}: cannot read prompt file {str(path)!r}: {e}") from None
    prompts = [p.strip() for p in prompts if p.strip()]
    if not prompts:
        raise ConfigError(f"{key}: prompt file {str(path)!r} holds no prompts (expected one per line)")
    return prompts


def load_prompts(spec: str, key: str = "prompts.eval") -> list[str]:
    if spec in BUILTIN:
        return BUILTIN[spec]()
    return read_prompt_file(Path(spec), key)


def eval_set(spec: str, count: int, seeds_per_prompt: int, seed_base: int, key: str = "prompts.eval") -> EvalSet:
    prompts = load_prompts(spec, key)
    ids = list(range(len(prompts) if count == 0 else min(count, len(prompts))))  # the first `count`
    rows = [(prompts[i], seed_base + j * seeds_per_prompt + s, i) for j, i in enumerate(ids) for s in range(seeds_per_prompt)]
    return EvalSet([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows])


def heldout_set(spec: str, count: int, seeds_per_prompt: int, run_seed: int) -> EvalSet:
    """The outcome's prompts and seeds (prompts.heldout): seeds of their own, from HELDOUT_SEED_BASE."""
    return eval_set(spec, count, seeds_per_prompt, run_seed + HELDOUT_SEED_BASE, key="prompts.heldout")
