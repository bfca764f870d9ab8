"""ReDPO training of one stage's pruned student on its curated pairs (DeepSpeed).

Launch it however your cluster launches things; every rank runs this file:
    python jobs/train_redpo.py --run-dir runs/toyvid --stage 1                 # one process
    torchrun --nproc_per_node 2 jobs/train_redpo.py --run-dir ... --stage 1    # torchrun
    deepspeed --num_gpus 2 jobs/train_redpo.py --run-dir ... --stage 1         # DeepSpeed launcher
    srun --ntasks-per-node 4 python jobs/train_redpo.py --run-dir ... --stage 1
    mpirun -n 2 python jobs/train_redpo.py --run-dir ... --stage 1
The config is the run directory's frozen config.yaml. Exit status 75 means: stopped by a
signal after saving a checkpoint; run the same command again to resume.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vip import config as vip_config  # noqa: E402
from vip.cli import fail_cleanly  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--stage", type=int, required=True)
    ap.add_argument("--local_rank", "--local-rank", type=int, help=argparse.SUPPRESS)  # set by the deepspeed launcher
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    with fail_cleanly():
        from vip.store import RunDir

        run = RunDir(args.run_dir)
        frozen = run.path / "config.yaml"
        if not frozen.is_file():
            raise vip_config.ConfigError(f"{frozen} does not exist; --run-dir must be a run made by jobs/stage.py")
        cfg = vip_config.load(frozen)
        from vip.orchestrate.preflight import preflight

        preflight(cfg, run, args.stage, "train", freeze=False)  # the pruned student, the DeepSpeed file, ...
        from vip.train.redpo_trainer import train

        return train(run, cfg, args.stage, progress=not args.no_progress)


if __name__ == "__main__":
    sys.exit(main())
