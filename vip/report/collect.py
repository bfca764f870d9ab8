"""Read what a run directory holds, for the report. Files only; a missing file is None, never an error."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from vip.config import ConfigError
from vip.train.metrics import read_metrics


@dataclass
class StageData:
    n: int
    dir: Path
    selection: dict | None = None
    target: dict | None = None
    curation: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    train_done: dict | None = None
    outcome: dict | None = None


@dataclass
class RunData:
    path: Path
    config_text: str
    config_sha256: str
    filter_summary: dict | None
    filter_histogram: Path | None  # <run>/filter/histogram.png when the filter step drew it
    stages: list[StageData]


def _json(path: Path) -> dict | None:
    """A step's JSON record, or None while the step has not written it (records are written atomically)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def _metrics(directory: Path) -> list[dict]:
    """Training metrics so far; a line cut short by a writer that is still running is skipped."""
    try:
        return read_metrics(directory)
    except ValueError:
        rows = []
        for line in (directory / "metrics.jsonl").read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
        return rows


def stage_numbers(run_dir: Path) -> list[int]:
    """1 .. the highest stageN folder present (a gap is a stage not yet run)."""
    found = [int(m.group(1)) for p in run_dir.iterdir() if p.is_dir() and (m := re.fullmatch(r"stage(\d+)", p.name))]
    return list(range(1, max(found) + 1)) if found else []


def read_stage(run_dir: Path, n: int) -> StageData:
    d = run_dir / f"stage{n}"
    return StageData(
        n=n, dir=d,
        selection=_json(d / "selection.json"), target=_json(d / "target.json"),
        curation=_json(d / "curation.json"),
        metrics=_metrics(d / "train") if (d / "train" / "metrics.jsonl").is_file() else [],
        train_done=_json(d / "train" / "done.json"), outcome=_json(d / "outcome.json"),
    )


def read_run(run_dir: str | Path) -> RunData:
    """Everything the report shows; a path that is not a run directory is a ConfigError (one line)."""
    path = Path(run_dir).resolve()
    if not path.is_dir():
        raise ConfigError(f"run directory {str(run_dir)!r} does not exist")
    cfg = path / "config.yaml"
    if not cfg.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory: it has no config.yaml "
                          "(a run directory is what jobs/stage.py --run-dir writes)")
    sha = path / "config.sha256"
    hist = path / "filter" / "histogram.png"
    return RunData(
        path=path, config_text=cfg.read_text(),
        config_sha256=sha.read_text().strip() if sha.is_file() else "",
        filter_summary=_json(path / "filter" / "summary.json"),
        filter_histogram=hist if hist.is_file() else None,
        stages=[read_stage(path, n) for n in stage_numbers(path)],
    )
