"""Fill the sbatch templates of sbatch/ from a config, for users who submit with sbatch themselves.

Every value that comes from the config or the file system is shell-quoted with shlex.quote, both in
the #SBATCH lines (sbatch reads them with shell-like quoting) and in the script body, so a path with
spaces, quotes, `$(...)` or backticks is passed literally and never executed. A value that would end
an #SBATCH line (a newline or other control character) is refused with a ConfigError instead.

Each step script runs `jobs/step.py <step>` (filter: jobs/filter_prompts.py, training:
jobs/train_redpo.py). The scripts are written to <run>/sbatch/stage<N>/ with a submit.sh that submits them in order,
each after the steps it needs (afterany: every step checks its own inputs). Arrays longer than the
cluster's MaxArraySize are split into parts (<step>.part<k>.sbatch) with a task offset. With
slurm.packed the fanned-out steps are rendered from sbatch/packed.sbatch instead: one job of
slurm.packed_ranks ranks per step (srun, or mpirun without Slurm), which needs no task count.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from vip.config import Config, ConfigError, SlurmConfig, has_control_chars
from vip.orchestrate import stepjobs
from vip.orchestrate.stepjobs import job_name, packed_ranks
from vip.store import RunDir, atomic_write_text

REPO = Path(__file__).resolve().parents[2]
TEMPLATES = REPO / "sbatch"
_PLACEHOLDER = re.compile(r"@@([A-Z_]+)@@")


STEPS = dict(sorted(stepjobs.STEPS.items(), key=lambda kv: not kv[1].per_run))  # submit.sh's order: the run's first


def q(value) -> str:
    return shlex.quote(str(value))


def sbatch_flags(slurm: SlurmConfig, kind: str, ranks: int = 1) -> list[tuple[str, str | None]]:
    """(option, value) pairs for the #SBATCH lines of one kind of job; value None = a flag.
    kind: array, cpu_array, packed / cpu_packed (`ranks` tasks, placed by Slurm), gpu, cpu, train."""
    gpu_kinds = ("array", "packed", "gpu", "train")
    flags: list[tuple[str, str | None]] = []
    partition = slurm.partition if kind in gpu_kinds else (slurm.cpu_partition or slurm.partition)
    if partition:
        flags.append(("partition", partition))
    if kind in ("packed", "cpu_packed"):
        flags.append(("ntasks", str(ranks)))
        if kind == "packed" and slurm.array_gpus:
            flags.append(("gpus-per-task", str(slurm.array_gpus)))
    elif kind == "train":
        flags += [("nodes", str(slurm.nodes)), ("ntasks-per-node", str(max(1, slurm.gpus_per_node)))]
        if slurm.gpus_per_node:
            flags.append(("gpus-per-node", str(slurm.gpus_per_node)))
    else:
        flags += [("nodes", "1"), ("ntasks", "1")]
        if kind in ("array", "gpu") and slurm.array_gpus:
            flags.append(("gpus-per-node", str(slurm.array_gpus)))
    flags.append(("cpus-per-task", str(slurm.cpus_per_task if kind in gpu_kinds else 2)))
    flags.append(("time", str(slurm.time if kind in (*gpu_kinds, "cpu_array", "cpu_packed") else slurm.cpu_time)))
    if slurm.mem_gb and kind in gpu_kinds:
        flags.append(("mem", f"{slurm.mem_gb}G"))
    for key in ("account", "qos", "constraint", "exclude"):
        if getattr(slurm, key):
            flags.append((key, getattr(slurm, key)))
    for opt in slurm.extra:
        key, eq, value = opt.lstrip("-").partition("=")
        flags.append((key, value if eq else None))
    return flags


def sbatch_line(key: str, value: str | None) -> str:
    if value is not None and has_control_chars(value):
        raise ConfigError(f"the value of sbatch option --{key} contains a newline or control character: {value!r}")
    return f"#SBATCH --{key}" if value is None else f"#SBATCH --{key}={q(value)}"


def log_dir(run: RunDir, stage: int, step: str) -> Path:
    """The same folder the submitit executor logs to."""
    return run.path / "logs" / f"stage{stage}" / step


def cluster_max_array_size() -> int:
    """MaxArraySize from `scontrol show config` when a cluster answers, else Slurm's default 1001."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=20).stdout
            m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.MULTILINE)
            if m:
                return int(m.group(1))
        except (OSError, subprocess.TimeoutExpired):
            pass
    return 1001


def fill(template: str, values: dict[str, str]) -> str:
    """Replace every @@KEY@@ in one pass (a value containing @@X@@ is not expanded again)."""
    missing = sorted(set(_PLACEHOLDER.findall(template)) - set(values))
    if missing:
        raise KeyError(f"template placeholders without a value: {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def render_step(cfg: Config, run: RunDir, stage: int, step: str, tasks: int | None, *, python: str, repo: Path,
                max_array: int) -> list[tuple[str, str, tuple[int, int] | None]]:
    """[(file name, script text, (first task, count) or None)] for one step; an array longer than
    max_array becomes several parts."""
    spec = STEPS[step]
    if cfg.slurm.packed and spec.is_array:
        return [render_packed(cfg, run, stage, step, tasks, python=python, repo=repo)]
    template = (TEMPLATES / f"{step}.sbatch").read_text()
    common = (TEMPLATES / "_common.sh").read_text().rstrip("\n")
    logs = log_dir(run, stage, step)
    pattern = "%x-%A_%a.out" if spec.is_array else "%x-%j.out"
    base = [sbatch_line("job-name", job_name(cfg, stage, step)), sbatch_line("output", f"{logs}/{pattern}"),
            "#SBATCH --open-mode=append"]  # a requeued run adds to its log instead of truncating it
    base += [sbatch_line(k, v) for k, v in sbatch_flags(cfg.slurm, spec.kind)]
    values = {"REPO": q(repo), "PYTHON": q(python), "CONFIG": q(run.path / "config.yaml"), "RUN_DIR": q(run.path),
              "STAGE": str(int(stage)), "MAX_REQUEUES": str(int(cfg.slurm.max_requeues)), "COMMON": common}
    template = template.replace("USR1@120", f"USR1@{int(cfg.slurm.signal_delay_s)}")  # slurm.signal_delay_s
    if not spec.is_array or tasks is None:
        text = fill(template, {**values, "OFFSET": "0", "SBATCH": "\n".join(base)})
        return [(f"{step}.sbatch", text, (0, tasks) if tasks is not None else None)]
    parts = []
    cap = cfg.slurm.array_parallelism
    for k, lo in enumerate(range(0, tasks, max_array)):
        n = min(max_array, tasks - lo)
        array = f"0-{n - 1}" + (f"%{min(cap, n)}" if cap else "")
        text = fill(template, {**values, "OFFSET": str(lo), "SBATCH": "\n".join(base + [sbatch_line("array", array)])})
        name = f"{step}.sbatch" if tasks <= max_array else f"{step}.part{k}.sbatch"
        parts.append((name, text, (lo, n)))
    return parts


def render_packed(cfg: Config, run: RunDir, stage: int, step: str, tasks: int | None, *, python: str,
                  repo: Path) -> tuple[str, str, tuple[int, int | None]]:
    """sbatch/packed.sbatch for one fanned-out step: packed_ranks ranks (at most `tasks`, when known).
    The ranks read the plan themselves, so the script is complete without a task count."""
    kind = "cpu_packed" if STEPS[step].kind == "cpu_array" else "packed"
    ranks = packed_ranks(cfg.slurm, tasks)
    logs = log_dir(run, stage, step)
    lines = [sbatch_line("job-name", job_name(cfg, stage, step)), sbatch_line("output", f"{logs}/%x-%j.out"),
             "#SBATCH --open-mode=append"]
    lines += [sbatch_line(k, v) for k, v in sbatch_flags(cfg.slurm, kind, ranks)]
    template = (TEMPLATES / "packed.sbatch").read_text().replace("USR1@120", f"USR1@{int(cfg.slurm.signal_delay_s)}")
    text = fill(template, {"REPO": q(repo), "PYTHON": q(python), "CONFIG": q(run.path / "config.yaml"),
                           "RUN_DIR": q(run.path), "STAGE": str(int(stage)), "STEP": q(step), "RANKS": str(int(ranks)),
                           "MAX_REQUEUES": str(int(cfg.slurm.max_requeues)), "SBATCH": "\n".join(lines),
                           "COMMON": (TEMPLATES / "_common.sh").read_text().rstrip("\n")})
    return (f"{step}.sbatch", text, (0, tasks))  # never None: submit.sh need not wait for a task count


def _var(name: str) -> str:
    return re.sub(r"\W", "_", name).upper()


def submit_script(order: list[tuple[str, list[tuple[str, str, tuple[int, int] | None]]]], cap: int,
                  render_hint: str) -> str:
    """A bash script that submits the rendered steps in order with afterany dependencies; a step whose
    task count is unknown (and every step after it that needs it) is left for a later render."""
    lines = ["#!/bin/bash",
             "# Submits the scripts of this folder in order; each waits (afterany) for the steps it needs,",
             "# which check their own inputs. Written by jobs/render_sbatch.py.",
             "set -euo pipefail", 'cd "$(dirname "$0")"',
             "submit() { sbatch --parsable \"$@\" | cut -d';' -f1; }"]
    ids: dict[str, list[str]] = {}
    skipped: set[str] = set()
    for step, parts in order:
        spec = STEPS[step]
        needs = [s for s in spec.after if s in ids or s in skipped]
        if any(s in skipped for s in needs) or (spec.is_array and parts[0][2] is None):
            skipped.add(step)
            why = "needs " + ", ".join(s for s in needs if s in skipped) if any(s in skipped for s in needs) \
                else f"its task count is not known yet (give --tasks {step}=N, or render again once its plan exists)"
            lines.append(f"# {step}: not submitted here: {why}: {render_hint} --steps {step},...")
            continue
        dep_ids = [i for s in needs for i in ids[s]]
        ids[step] = []
        prev_part: list[str] = []
        for k, (name, _, _) in enumerate(parts):
            var = _var(f"{step}_{k}" if len(parts) > 1 else step)
            deps = dep_ids + prev_part
            dep = f"--dependency=afterany:{':'.join(deps)} " if deps else ""
            lines.append(f"{var}=$(submit {dep}{q(name)})")
            ids[step].append(f"${var}")
            if cap and len(parts) > 1:  # keep the array cap over all parts: each part waits for the one before
                prev_part = [f"${var}"]
        lines.append(f'echo "{step}: {" ".join(ids[step])}"')
    return "\n".join(lines) + "\n"


def check_inputs(run: RunDir, stage: int, steps: list[str] | None = None) -> list[str]:
    """The stage, the steps (default: every step; run-wide ones only in stage 1) and the run directory's
    name, checked before anything is written; returns the steps."""
    if stage < 1:
        raise ConfigError(f"--stage must be 1 or more, got {stage}")
    steps = steps or [s for s, spec in STEPS.items() if stage == 1 or not spec.per_run]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise ConfigError(f"unknown step(s) {', '.join(unknown)}; expected some of: {', '.join(STEPS)}")
    if has_control_chars(str(run.path)):
        raise ConfigError(f"the run directory {str(run.path)!r} contains a newline or control character, which an "
                          "#SBATCH line (the log path) cannot hold; use another run directory")
    return steps


def render(cfg: Config, run: RunDir, stage: int, steps: list[str] | None = None,
           tasks: dict[str, int | None] | None = None, *, python: str | None = None, repo: Path | None = None,
           max_array: int | None = None, freeze: bool = True) -> list[Path]:
    """Write the rendered scripts of `steps` (default: every step; run-wide ones only in stage 1) and
    submit.sh to <run>/sbatch/stage<N>/; returns the paths written."""
    steps = check_inputs(run, stage, steps)
    tasks = tasks or {}
    python = python or sys.executable
    repo = Path(repo or REPO)
    max_array = max_array or cluster_max_array_size()
    order = [(s, render_step(cfg, run, stage, s, tasks.get(s), python=python, repo=repo, max_array=max_array))
             for s in STEPS if s in steps]
    if freeze:
        run.freeze(cfg)  # the scripts read <run>/config.yaml: it must be this config
    out = run.path / "sbatch" / f"stage{stage}"
    written = []
    for step, parts in order:
        log_dir(run, stage, step).mkdir(parents=True, exist_ok=True)  # sbatch does not create it
        for name, text, _ in parts:
            atomic_write_text(out / name, text)
            (out / name).chmod(0o755)
            written.append(out / name)
    hint = f"python jobs/render_sbatch.py --run-dir {q(run.path)} --stage {stage}"
    atomic_write_text(out / "submit.sh", submit_script(order, cfg.slurm.array_parallelism, hint))
    (out / "submit.sh").chmod(0o755)
    written.append(out / "submit.sh")
    return written


def known_task_counts(cfg: Config, run: RunDir, stage: int) -> dict[str, int]:
    """Task counts of the array steps whose plans are already written (reads files only)."""
    from vip.steps.context import StageContext

    plans = {s: spec.read_plan(StageContext(run, cfg, 0 if spec.per_run else stage))
             for s, spec in STEPS.items() if spec.is_array}
    return {s: len(planned["tasks"]) for s, planned in plans.items() if planned is not None}
