"""Run one step of one V.I.P. stage (what the sbatch templates and array tasks call).

    python jobs/step.py loo     --config C --run-dir R --stage N [--task I]   # one task; no --task: all missing
    python jobs/step.py select  --config C --run-dir R --stage N              # merge the LOO shards, then select
    python jobs/step.py target  --config C --run-dir R --stage N
    python jobs/step.py pairs   --config C --run-dir R --stage N [--task I]
    python jobs/step.py curate  --config C --run-dir R --stage N
    python jobs/step.py outcome --config C --run-dir R --stage N
    srun python jobs/step.py loo --packed --run-dir R --stage N     # packed mode: every rank, its share
    mpirun -n 4 python jobs/step.py pairs --packed --run-dir R --stage N   # the same without srun

--packed (loo, pairs, filter) runs on every rank of one job: rank r of R (from srun, mpirun or torchrun)
runs tasks r, r+R, r+2R, ... of the plan, skipping those already done (sbatch/packed.sbatch).

Prompt filtering is jobs/filter_prompts.py and training jobs/train_redpo.py. Every step checks its
inputs first (vip/orchestrate/preflight.py, before the config is frozen) and stops with one line
naming what is missing (exit 2); a step already done says so and does nothing. The config is
normally the run's frozen <run>/config.yaml.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vip import config as vip_config  # noqa: E402
from vip.cli import fail_cleanly  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from vip.orchestrate.stepjobs import ARRAY_STEPS, STEP_CHOICES

    ap.add_argument("step", choices=(*STEP_CHOICES, "filter"))
    ap.add_argument("--config", help="config file (default: <run-dir>/config.yaml)")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--stage", type=int, required=True)
    ap.add_argument("--task", type=int, help="loo / pairs: run only this task (0-based), e.g. $SLURM_ARRAY_TASK_ID")
    ap.add_argument("--packed", action="store_true", help="loo / pairs / filter: this process is one rank of a "
                                                          "packed job (srun, mpirun) and runs its share of the tasks")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value")
    args = ap.parse_intermixed_args()

    with fail_cleanly():
        from vip.orchestrate.stepjobs import run_step
        from vip.store import RunDir

        run = RunDir(args.run_dir)
        config_path = args.config or run.path / "config.yaml"
        if args.config is None and not Path(config_path).is_file():
            raise vip_config.ConfigError(f"{config_path} does not exist; give --config, or a --run-dir made by "
                                         "jobs/stage.py or jobs/render_sbatch.py")
        cfg = vip_config.load(config_path, list(args.overrides))
        if args.step == "filter" and not args.packed:
            raise vip_config.ConfigError("the prompt filter runs with jobs/filter_prompts.py (jobs/step.py filter only "
                                         "with --packed)")
        if args.packed and args.step not in ARRAY_STEPS:
            raise vip_config.ConfigError(f"--packed is for the fanned-out steps loo, pairs and filter, not {args.step}")
        from vip.orchestrate.preflight import preflight

        # every check before the config is frozen (which refuses a config other than the run's)
        # (a packed rank loads the model only once it has picked its own GPU)
        ctx = preflight(cfg, run, args.stage, args.step, load_model=False if args.packed else None)
        if args.packed:
            run_packed(args.step, run, cfg, args.stage, args.task, ctx)
            return
        print(run_step(args.step, ctx, args.task), flush=True)


def run_packed(step: str, run, cfg, stage: int, task, stage_ctx=None) -> None:
    from vip.orchestrate import packed
    from vip.orchestrate.stepjobs import ARRAY_STEPS, STEPS, check_pair_inputs
    from vip.steps.context import StageContext
    from vip.train.dist import discover

    if step not in ARRAY_STEPS:
        raise vip_config.ConfigError(f"--packed is for the fanned-out steps loo, pairs and filter, not {step}")
    if task is not None:
        raise vip_config.ConfigError("--packed shares out every task of the step; leave out --task")
    # the prompt filter is run-wide
    ctx = StageContext(run, cfg, 0) if STEPS[step].per_run else stage_ctx or StageContext(run, cfg, stage)
    if STEPS[step].done(ctx):
        print(f"{step}: already merged", flush=True)
        return
    if step == "pairs":
        check_pair_inputs(ctx)
    env = discover()
    packed.use_own_gpu(env.local_rank)
    records = packed.run_rank(ctx, step, env.rank, env.world_size)
    ran = [r["task"] for r in records if not r["skipped"]]
    print(f"{step}: rank {env.rank} of {env.world_size} ({env.launcher}) ran tasks {ran}, "
          f"{len(records) - len(ran)} already done", flush=True)


if __name__ == "__main__":
    main()
