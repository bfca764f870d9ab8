"""Run (or report on) one V.I.P. stage.

    python jobs/stage.py --stage 1 [--until 2] --config configs/toyvid.yaml [--run-dir DIR] [--status] [key=value ...]

A stage: leave-one-out -> select -> prompt filter (once per run) -> target -> pairs -> curate
-> ReDPO training -> outcome. Stage N+1 starts from stage N's trained student.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vip import config as vip_config  # noqa: E402
from vip.cli import fail_cleanly  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", type=int, default=1)
    ap.add_argument("--until", type=int, help="run stages --stage to --until (default: just --stage)")
    ap.add_argument("--config", default="configs/toyvid.yaml")
    ap.add_argument("--run-dir", help="run directory (default: <run.root>/<run.name>)")
    ap.add_argument("--executor", choices=["local"], help="overrides runtime.executor")
    ap.add_argument("--status", action="store_true", help="print what is done and missing; run nothing")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = ap.parse_intermixed_args()
    overrides = list(args.overrides) + ([f"runtime.executor={args.executor}"] if args.executor else [])

    with fail_cleanly():
        cfg = vip_config.load(args.config, overrides)
        from vip.orchestrate import driver, status
        from vip.steps import pairs, select
        from vip.store import RunDir

        run = RunDir.for_config(cfg, args.run_dir)
        last = args.until or args.stage
        if last < args.stage:
            raise vip_config.ConfigError(f"--until ({last}) must be at least --stage ({args.stage})")
        if args.status:
            for n in range(args.stage, last + 1):
                print(f"run {run.path}, stage {n}")
                print(status.format_rows(status.stage_status(run, n), ("step", "state", "detail")) + "\n")
            return
        for n in range(args.stage, last + 1):
            ctx = driver.preflight(cfg, run, n)
            driver.run_stage(ctx)
            print(f"\nstage {n}: leave-one-out and selection\n" + status.selection_table(select.load(ctx)))
            print(f"\nstage {n}: curation\n" + status.curation_summary(pairs.load(ctx)))
        print("\n" + status.outcome_table(status.all_outcomes(run)))
        print(f"\nrun directory: {run.path}")


if __name__ == "__main__":
    main()
