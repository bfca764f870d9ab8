"""The paper's Tables A (w_SFT sweep), D (SFT vs ReDPO at equal compute) and B (stages, online) as
arms of a training-only experiment, aggregated over train.seed: mean ± sample std per aspect, and
the fraction of the target aspect's pruning drop that training recovered."""
from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from vip.config import ConfigError
from vip.experiments.arms import Arm, Experiment, recovered
from vip.rewards.base import ASPECTS

SHORT = {"visual_quality": "VQ", "temporal_consistency": "TC", "dynamic_degree": "DD", "text_alignment": "TA"}
TABLE_A_W_SFT = (0.0, 1e2, 1e3, 1e4, 1e5)


@dataclass
class Setting:
    """One row of a table: the same overrides at every seed."""

    label: str
    overrides: dict
    records: list[dict] = field(default_factory=list)  # outcome records, one per seed

    def arms(self, exp: Experiment, seeds: list[int]) -> list[Arm]:
        return [exp.arm({**self.overrides, "train.seed": s}) for s in seeds]


def table_a_settings(w_sfts=TABLE_A_W_SFT) -> list[Setting]:
    rows = [Setting(f"ReDPO w_SFT {_w(w)}" if w else "DPO only (w_SFT 0)", {"train.loss": "redpo", "train.w_sft": w})
            for w in w_sfts]
    return rows + [Setting("SFT only", {"train.loss": "sft"})]


def table_d_settings() -> list[Setting]:
    return [Setting("SFT only", {"train.loss": "sft"}), Setting("ReDPO", {"train.loss": "redpo"})]


def _w(w: float) -> str:
    return f"1e{int(round(math.log10(w)))}" if w > 0 and math.log10(w).is_integer() else f"{w:g}"


def run_settings(exp: Experiment, settings: list[Setting], seeds: list[int], threads: int = 1, jobs: int = 1,
                 log: Callable[[str], None] = print, trainer=None) -> list[Setting]:
    """Every arm of every setting (finished ones are skipped), `jobs` at a time; fills settings' records."""
    if not seeds:
        raise ConfigError("--seeds needs at least one train.seed")
    exp.open()
    work = [(s, arm) for s in settings for arm in s.arms(exp, seeds)]
    todo = [arm for _, arm in work if exp.result(arm) is None]
    log(f"{len(work)} arms, {len(work) - len(todo)} done, {len(set(todo))} to train in {exp.out}")

    def one(arm: Arm) -> dict:
        r = exp.run_arm(arm, threads=threads, trainer=trainer)
        log(f"  {arm.name}: done (train {r['wall_s']['train']} s, score {r['wall_s']['score']} s)")
        return r

    unique = list({arm.name: arm for _, arm in work}.values())  # settings may share an arm
    with ThreadPoolExecutor(max(1, jobs)) as pool:
        results = dict(zip([a.name for a in unique], pool.map(one, unique)))
    for s in settings:
        s.records = [results[a.name]["outcome"] for a in s.arms(exp, seeds)]
    return settings


# -- aggregation ----------------------------------------------------------------------------------
def mean_std(values: list[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def summary(records: list[dict], key: str = "redpo") -> dict[str, tuple[float, float]]:
    """mean ± std over seeds of each aspect, the total, and the recovered fraction of each target."""
    out = {a: mean_std([r[key][a] for r in records]) for a in (*ASPECTS, "total")}
    for t in records[0]["targets"]:
        out[f"recovered:{t}"] = mean_std([recovered(r, t) if key == "redpo" else 0.0 for r in records])
    return out


def _pm(m: float, s: float | None, pct: bool = False) -> str:
    if pct:
        return f"{100 * m:.0f}%" + (f" ± {100 * s:.0f}" if s is not None else "")
    return f"{m:.3f}" + (f" ± {s:.3f}" if s is not None else "")


def table_rows(settings: list[Setting]) -> tuple[list[str], list[list[str]]]:
    """full and pruned (fixed inputs), then one row per setting with mean ± std over seeds."""
    first = settings[0].records[0]
    targets = first["targets"]
    header = ["setting", *(SHORT[a] for a in ASPECTS), "total", *(f"{SHORT[t]} drop recovered" for t in targets)]
    rows = [["full teacher", *(_pm(first["full"][a], None) for a in (*ASPECTS, "total")), *("" for _ in targets)],
            ["pruned, untrained", *(_pm(first["pruned"][a], None) for a in (*ASPECTS, "total")),
             *("0%" for _ in targets)]]
    for s in settings:
        m = summary(s.records)
        rows.append([s.label, *(_pm(*m[a]) for a in (*ASPECTS, "total")),
                     *(_pm(*m[f"recovered:{t}"], pct=True) for t in targets)])
    return header, rows


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join("| " + " | ".join(r) + " |" for r in [header, ["---"] * len(header), *rows])


def stage_rows(per_arm: dict[str, list[list[dict]]]) -> tuple[list[str], list[list[str]]]:
    """Table B: per stage, the full teacher, then per arm its pruned student and its trained one.

    per_arm[label][seed] holds that seed's outcome records, one per stage. From a stage whose pruned
    student came from an arm's own training on, each arm (and seed) prunes a different student."""
    header = ["stage", "model", *(SHORT[a] for a in ASPECTS), "total", "target", "target drop recovered", "training"]
    rows = []
    stages = len(next(iter(per_arm.values()))[0])
    for n in range(stages):
        first = next(iter(per_arm.values()))[0][n]
        rows.append([f"stage {n + 1}", "full teacher", *(_pm(first["full"][a], None) for a in (*ASPECTS, "total")),
                     "", "", ""])
        for label, seeds in per_arm.items():
            recs = [s[n] for s in seeds]
            t = recs[0]["targets"][0]
            for model, key in ((f"pruned (→ {label})", "pruned"), (label, "redpo")):
                m = summary(recs, key)
                rows.append([f"stage {n + 1}", model, *(_pm(*m[a]) for a in (*ASPECTS, "total")),
                             ", ".join(sorted({SHORT[r['targets'][0]] for r in recs})),
                             _pm(*m[f"recovered:{t}"], pct=True) if key == "redpo" else "",
                             _training(recs) if key == "redpo" else ""])
    return header, rows


def _training(recs: list[dict]) -> str:
    kinds = sorted({r.get("training", "") for r in recs})
    return kinds[0] if len(kinds) == 1 else f"{len(kinds)} kinds: " + "; ".join(kinds)
