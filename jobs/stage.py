"""Run (or report on) one V.I.P. stage.

    python jobs/stage.py --stage 1 --config configs/toyvid.yaml [--run-dir DIR] [--status] [section.key=value ...]
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
        from vip.store import RunDir

        run = RunDir.for_config(cfg, args.run_dir)
        if args.status:
            print(f"run {run.path}, stage {args.stage}")
            print(status.format_rows(status.stage_status(run, args.stage), ("step", "state", "detail")))
            return
        ctx = driver.preflight(cfg, run, args.stage)
        selection = driver.run_stage(ctx)
        print(status.selection_table(selection))
        print(f"\nchart: {run.stage(args.stage) / 'selection.png'}\nrun directory: {run.path}")


if __name__ == "__main__":
    main()
