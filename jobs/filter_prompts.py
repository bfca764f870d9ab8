"""Score and filter the run's prompts with an LLM (supplement F), once per run: <run>/filter/.

    python jobs/filter_prompts.py --config configs/toyvid.yaml [--run-dir DIR] [section.key=value ...]
    python jobs/filter_prompts.py ... --task 3      # one task (an array task); then --merge
    python jobs/filter_prompts.py ... --merge       # build the sets once every task is done
    python jobs/filter_prompts.py ... --status      # what is done and missing; runs nothing

filter.backend=gemini reads the API key from GEMINI_API_KEY or GOOGLE_API_KEY, nowhere else.
Exit codes: 2 = bad input (one line, nothing written); 1 = the LLM service kept failing (re-run:
answers already received are cached and not asked again).
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vip import config as vip_config  # noqa: E402
from vip.cli import fail_cleanly  # noqa: E402


def print_status(run) -> None:
    from vip.steps import filter as step

    planned = step.read_plan(run)
    if planned is None:
        print(f"run {run.path}: prompt filtering not planned yet")
        return
    tasks = range(len(planned["tasks"]))
    todo = step.shards(run).missing(tasks)
    print(f"run {run.path}: {len(planned['prompts'])} prompts from {planned['source']!r}, backend "
          f"{planned['backend']}, {len(tasks) - len(todo)}/{len(tasks)} tasks done"
          + (f", missing {todo[:20]}{' ...' if len(todo) > 20 else ''}" if todo else ""))
    summary = step.read_summary(run)
    if step.scores_path(run).is_file() and summary:
        print_summary(run, summary)
    else:
        print("not merged yet")


def print_summary(run, summary: dict) -> None:
    from vip.steps import filter as step

    print("set sizes: " + ", ".join(f"{k} {v}" for k, v in summary["sets"].items()))
    print("unparseable answers: " + ", ".join(f"{k} {v}" for k, v in summary["unparseable"].items()))
    print(f"sets: {step.set_path(run, '<name>')}\nFigure C: {step.histogram_path(run)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs/toyvid.yaml"),
                    help="config file (default: the project's configs/toyvid.yaml, from any directory)")
    ap.add_argument("--run-dir", help="run directory (default: <run.root>/<run.name>)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--task", type=int, help="run only this task (0-based), e.g. $SLURM_ARRAY_TASK_ID")
    mode.add_argument("--merge", action="store_true", help="only merge finished tasks into the sets")
    mode.add_argument("--status", action="store_true", help="print what is done and missing; run nothing")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = ap.parse_intermixed_args()

    with fail_cleanly():
        cfg = vip_config.load(args.config, list(args.overrides))
        from vip.orchestrate import local
        from vip.prompts.llm import LLMRequestError, describe, make_backend
        from vip.steps import filter as step
        from vip.store import RunDir

        run = RunDir.for_config(cfg, args.run_dir)
        if args.status:
            print_status(run)
            return
        from vip.orchestrate.preflight import preflight

        preflight(cfg, run, 1, "filter")  # the backend, the source prompts and the rest, then the config frozen
        try:
            if args.task is not None:
                step.plan(run, cfg)
                if step.shards(run).is_done(args.task):
                    print(f"task {args.task} already done")
                    return
                step.shards(run).discard(args.task)  # a truncated or mismatched shard is redone from scratch
                backend = make_backend(cfg.filter)
                step.run_task(run, cfg, args.task, backend)
                print(f"task {args.task} done ({describe(backend)})")
                return
            if not args.merge:
                planned = step.plan(run, cfg)
                todo = step.missing(run, cfg)
                for i in todo:
                    step.shards(run).discard(i)
                backend = make_backend(cfg.filter) if todo else None
                local.run_tasks(
                    todo, lambda i, advance: step.run_task(run, cfg, i, backend, advance),
                    total_units=sum(2 * (planned["tasks"][i][1] - planned["tasks"][i][0]) for i in todo),
                    desc=f"prompt filtering ({len(todo)}/{len(planned['tasks'])} tasks)",
                    progress=cfg.runtime.progress)
                if backend is not None:
                    print(describe(backend))
            step.merge(run, cfg)
            print_summary(run, step.read_summary(run))
        except LLMRequestError as e:
            print(f"error: {e}; re-run to resume (answers received so far are cached)", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
