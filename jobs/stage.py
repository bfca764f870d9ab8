"""Run (or report on) one V.I.P. stage.

    python jobs/stage.py --stage 1 [--until 2] --config configs/toyvid.yaml [--run-dir DIR] [--status] [key=value ...]
    python jobs/stage.py --stage 1 --until 2 --executor slurm --partition gpu [--wait] [--dry-run] [--packed]

A stage: leave-one-out -> select -> prompt filter (once per run) -> target -> pairs -> curate
-> ReDPO training -> outcome. Stage N+1 starts from stage N's trained student.

With the local executor (the default) everything runs in this process, stage after stage. With
--executor slurm, what the stages still need is submitted as jobs chained with afterany
dependencies; the stages after the first are submitted by small continuation jobs, so nobody has to
watch. --wait follows the jobs in the foreground until the last stage's outcome exists or a job
fails. Calling it again never duplicates a pending or running job: after a failure or a preemption
it submits only what is missing. --dry-run prints the job scripts it would submit, and writes nothing.
--packed (slurm.packed=true) submits each fanned-out step (leave-one-out, pairs, prompt filter) as
one job of slurm.packed_ranks ranks that share out its tasks, instead of a job array.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vip import config as vip_config  # noqa: E402
from vip.cli import fail_cleanly  # noqa: E402


def print_status(cfg, run, first: int, last: int) -> None:
    from vip.orchestrate import status

    for n in range(first, last + 1):
        print(f"run {run.path}, stage {n}")
        rows = status.stage_status(run, n)
        if (run.stage(n) / "jobs.json").is_file():  # submitted to Slurm: job ids, states and logs too
            from vip.orchestrate import watch

            with_jobs = watch.job_columns(run, cfg, n, rows)
            if with_jobs is not None:
                print(status.format_rows(with_jobs, ("step", "state", "detail", "jobs", "log")) + "\n")
                continue
        print(status.format_rows(rows, ("step", "state", "detail")) + "\n")


def print_results(run, first: int, last: int) -> None:
    from vip.orchestrate import status

    print("\n" + status.run_summary(run, list(range(first, last + 1))))


def run_slurm(args, cfg, run, last: int) -> int:
    from vip.orchestrate import driver, dryrun, lock, slurm, submit, watch

    slurm.check_client()  # sbatch and friends on PATH, else one line suggesting --executor local
    slurm.check_names(cfg.slurm)  # partitions and account exist, before half a stage is queued
    warning = slurm.run_dir_warning(run.path)
    if warning:
        print(warning, file=sys.stderr)
    if args.dry_run:
        print(dryrun.dry_run(cfg, run.path, args.stage, last))
        return 0
    ctx = driver.preflight(cfg, run, args.stage)
    with lock.driver_lock(run):
        actions = submit.submit_stage(ctx, last)
    for a in actions:
        print(a.line())
    if any(a.verb in ("submitted", "resubmitted") for a in actions):
        print(f"\n{sum(len(a.ids) for a in actions if a.verb in ('submitted', 'resubmitted'))} job(s) submitted")
    elif any(a.verb in ("queued", "rechained") for a in actions):
        print("\nnothing new to submit: every missing step is queued already")
    else:
        print("\nnothing to submit: done")
    print(f"status: python jobs/stage.py --stage {args.stage} --until {last} --run-dir {run.path} --status")
    if not args.wait:
        return 0
    sys.stdout.flush()
    code = watch.wait_stages(run, cfg, args.stage, last, progress=cfg.runtime.progress)
    if code == 0:
        print_results(run, args.stage, last)
    return code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", type=int, default=1)
    ap.add_argument("--until", type=int, help="run stages --stage to --until (default: just --stage)")
    ap.add_argument("--config", default=str(ROOT / "configs/toyvid.yaml"),
                    help="config file (default: the project's configs/toyvid.yaml, from any directory)")
    ap.add_argument("--run-dir", help="run directory (default: <run.root>/<run.name>)")
    ap.add_argument("--executor", choices=["local", "slurm"], help="overrides runtime.executor")
    ap.add_argument("--partition", help="Slurm partition of the GPU jobs (overrides slurm.partition)")
    ap.add_argument("--status", action="store_true", help="print what is done and missing; run nothing")
    ap.add_argument("--wait", action="store_true", help="slurm: follow the jobs until the stages are done or one fails")
    ap.add_argument("--dry-run", action="store_true", help="slurm: print the job scripts it would submit; submit and "
                                                           "write nothing")
    ap.add_argument("--packed", action="store_true", help="slurm: one job of slurm.packed_ranks ranks per fanned-out "
                                                          "step instead of an array (slurm.packed=true)")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = ap.parse_intermixed_args()
    overrides = list(args.overrides) + ([f"runtime.executor={args.executor}"] if args.executor else []) \
        + ([f"slurm.partition={args.partition}"] if args.partition is not None else []) \
        + (["slurm.packed=true"] if args.packed else [])

    with fail_cleanly():
        cfg = vip_config.load(args.config, overrides)
        from vip.orchestrate import driver
        from vip.store import RunDir

        run = RunDir.for_config(cfg, args.run_dir)
        last = args.stage if args.until is None else args.until
        if last < args.stage:
            raise vip_config.ConfigError(f"--until ({last}) must be at least --stage ({args.stage})")
        if args.status:
            print_status(cfg, run, args.stage, last)
            return
        if cfg.runtime.executor == "slurm":
            code = run_slurm(args, cfg, run, last)
            if code:
                sys.exit(code)
            return
        for flag in ("wait", "dry_run", "packed"):
            if getattr(args, flag):
                raise vip_config.ConfigError(f"--{flag.replace('_', '-')} is for the Slurm executor "
                                             "(--executor slurm or runtime.executor=slurm)")
        for n in range(args.stage, last + 1):
            driver.run_stage(driver.preflight(cfg, run, n))
        print_results(run, args.stage, last)


if __name__ == "__main__":
    main()
