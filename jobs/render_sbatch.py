"""Write the sbatch scripts of one stage (sbatch/*.sbatch filled from the config) into the run directory.

    python jobs/render_sbatch.py --config configs/toyvid.yaml --stage 1 [--run-dir DIR] [section.key=value ...]
    python jobs/render_sbatch.py --run-dir runs/toyvid --stage 1 --steps pairs,curate,train   # config.yaml of the run
    python jobs/render_sbatch.py --config configs/toyvid.yaml --stage 1 --packed   # packed jobs instead of arrays
    bash runs/toyvid/sbatch/stage1/submit.sh        # submits them in order with afterany dependencies

Slurm settings come from the config's slurm section (slurm.partition=gpu slurm.account=... on the
command line works too). Array sizes come from the steps' plans: the leave-one-out plan is written
here if missing (this loads the model; --no-plan skips it), others are read if present, or given
with --tasks loo=12,pairs=4. The run directory's config is frozen like jobs/stage.py does, after the same
checks (vip/orchestrate/preflight.py). A new run directory's config is checked with the model loaded (the
units, select.k, the model's files and clip length) even with --no-plan: a frozen config cannot change.
"""
import argparse
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vip import config as vip_config  # noqa: E402
from vip.cli import fail_cleanly  # noqa: E402


def parse_tasks(text: str) -> dict[str, int]:
    out = {}
    for item in filter(None, (text or "").split(",")):
        step, sep, n = item.partition("=")
        if not sep or not n.isdigit() or int(n) < 1:
            raise vip_config.ConfigError(f"--tasks takes step=count pairs like loo=12,pairs=4; got {item!r}")
        out[step] = int(n)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="config file (default: <run-dir>/config.yaml, else configs/toyvid.yaml)")
    ap.add_argument("--run-dir", help="run directory (default: <run.root>/<run.name>)")
    ap.add_argument("--stage", type=int, default=1)
    ap.add_argument("--steps", default="", help="comma-separated steps (default: all; filter only in stage 1)")
    ap.add_argument("--tasks", default="", help="array sizes, e.g. loo=12,pairs=4 (default: from the plans)")
    ap.add_argument("--no-plan", action="store_true", help="do not write the leave-one-out plan (no model load, "
                                                           "unless the run directory is new: its config is checked "
                                                           "with the model before it is frozen)")
    ap.add_argument("--max-array-size", type=int, help="default: the cluster's MaxArraySize, else 1001")
    ap.add_argument("--packed", action="store_true", help="one job of slurm.packed_ranks ranks per fanned-out step "
                                                          "instead of an array (slurm.packed=true)")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = ap.parse_intermixed_args()

    with fail_cleanly():
        config_path = args.config
        if config_path is None:
            frozen = Path(args.run_dir) / "config.yaml" if args.run_dir else None
            config_path = frozen if frozen is not None and frozen.is_file() else ROOT / "configs/toyvid.yaml"
        cfg = vip_config.load(config_path, args.overrides + (["slurm.packed=true"] if args.packed else []))
        from vip.orchestrate import render
        from vip.orchestrate.preflight import preflight
        from vip.store import RunDir

        run = RunDir.for_config(cfg, args.run_dir)
        steps = render.check_inputs(run, args.stage, [s for s in args.steps.split(",") if s] or None)
        if cfg.loo.adaptive and "loo" in steps:
            raise vip_config.ConfigError(
                "config key 'loo.adaptive' is true, but a fixed script cannot hold rounds planned from scores: "
                "use jobs/stage.py --executor slurm (or sbatch/stage.sbatch), or set loo.adaptive=false")
        given = parse_tasks(args.tasks)
        # every check before the config is frozen (the scripts read <run>/config.yaml) and any plan written
        # --no-plan: no model load, once the run directory exists (a new one is checked with the model first)
        no_model = args.no_plan and (run.path / "config.sha256").is_file()
        ctx = preflight(cfg, run, args.stage, "render", load_model=False if no_model else None, render_steps=steps)
        tasks = {**render.known_task_counts(cfg, run, args.stage), **given}
        if "loo" not in tasks and not args.no_plan and "loo" in steps:
            from vip.steps import loo

            tasks["loo"] = len(loo.plan(ctx)["tasks"])
        if "filter" not in tasks and "filter" in steps:
            try:  # cheap: reads the source prompts only
                from vip.steps import filter as prompt_filter

                tasks["filter"] = len(prompt_filter.plan(run, cfg)["tasks"])
            except (ImportError, vip_config.ConfigError) as e:
                print(f"note: filter task count unknown ({e}); give --tasks filter=N", file=sys.stderr)
        written = render.render(cfg, run, args.stage, steps, tasks, max_array=args.max_array_size)
        for path in written:
            print(path)
        print(f"\nsubmit in order: bash {shlex.quote(str(written[-1]))}")


if __name__ == "__main__":
    main()
