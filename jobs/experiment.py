"""Training-only experiments on a finished stage: retrain its pruned student on its pairs with train.*
overrides, score each arm as the outcome step does, and print the paper's tables over train.seed.

    python jobs/experiment.py sweep   --source runs/demo2 --stage 2 --arm train.loss=sft --arm train.beta=500,train.w_sft=1e4
    python jobs/experiment.py table-a --source runs/demo2 --stage 2 [--w-sft 0 1e2 1e3 1e4 1e5]   # w_SFT sweep + SFT only
    python jobs/experiment.py table-d --source runs/demo2 --stage 2                                # SFT vs ReDPO, equal compute
    python jobs/experiment.py table-b --source runs/demo2 --stage 2 --until 3                      # per arm, online to stage 3

Common options: --seeds 0 1 2 (train.seed; every arm runs once per seed), --out DIR (default
runs/exp/<source>-s<stage>; arms are shared between tables there), --jobs N (arms at once),
--threads N (torch threads per arm), --plot PNG, --markdown (also print the table as Markdown),
and any train.key=value after the options (applies to every arm). A finished arm is never redone.
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vip.cli import fail_cleanly  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", choices=["sweep", "table-a", "table-d", "table-b"])
    ap.add_argument("--source", required=True, help="a run directory with the stage finished up to its pairs")
    ap.add_argument("--stage", type=int, required=True)
    ap.add_argument("--until", type=int, help="table-b: the last stage (default: --stage + 1)")
    ap.add_argument("--out", help="experiment directory (default runs/exp/<source name>-s<stage>)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arm", action="append", default=[], help="sweep: comma-separated train.key=value (repeatable)")
    ap.add_argument("--w-sft", type=float, nargs="+", help="table-a: the w_SFT values")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plot", help="write the table's chart here (PNG)")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("overrides", nargs="*", help="train.key=value for every arm")
    args = ap.parse_intermixed_args()
    with fail_cleanly():
        import torch

        from vip.experiments import arms, tables
        from vip.experiments.arms import Experiment

        torch.set_num_threads(args.threads)
        common = arms.parse_overrides(args.overrides)
        out = args.out or f"runs/exp/{Path(args.source).resolve().name}-s{args.stage}"
        exp = Experiment(out, args.source, args.stage)
        if args.table == "table-b":
            return table_b(exp, args, common)
        if args.table == "sweep":
            settings = [tables.Setting(spec or "source", {**common, **arms.parse_overrides(spec.split(",") if spec else [])})
                        for spec in (args.arm or [""])]
            title = "Training-only sweep"
        elif args.table == "table-a":
            settings = tables.table_a_settings(*([args.w_sft] if args.w_sft else []))
            title = "Table A: w_SFT sweep (toyvid)"
        else:
            settings = tables.table_d_settings()
            title = "Table D: SFT vs ReDPO at equal compute (toyvid)"
        for s in settings:
            s.overrides = {**common, **s.overrides}
        tables.run_settings(exp, settings, args.seeds, threads=args.threads, jobs=args.jobs)
        from vip.experiments.figures import settings_chart

        show(f"{title}: stage {args.stage} of {exp.source.path}", *tables.table_rows(settings), args,
             lambda png: settings_chart(settings, png, title))
    return 0


def show(title: str, header, rows, args, chart) -> None:
    """The table as text (and Markdown with --markdown); its chart with --plot."""
    from vip.experiments import tables

    print(f"\n{title}, train.seed {args.seeds}, mean ± std over seeds")
    print(tables.format_table(header, rows))
    if args.markdown:
        print("\n" + tables.markdown_table(header, rows))
    if args.plot:
        print(f"chart: {chart(Path(args.plot))}")


def table_b(exp, args, common) -> int:
    from vip.experiments import online, tables

    until = args.until or args.stage + 1
    online.check_earlier_stages_untrained(exp)
    exp.open()
    from concurrent.futures import ThreadPoolExecutor

    settings = [tables.Setting(s.label, {**common, **s.overrides}) for s in tables.table_d_settings()]
    work = [(s.label, arm) for s in settings for arm in s.arms(exp, args.seeds)]
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        done = list(pool.map(lambda w: online.run_online(exp, w[1], until, threads=args.threads), work))
    per_arm = {s.label: [] for s in settings}
    for (label, _), stages in zip(work, done):
        per_arm[label].append(stages)
    from vip.experiments.figures import stages_chart

    show(f"Table B: stages 1-{until} (from stage {args.stage} of {exp.source.path} on, per arm)",
         *tables.stage_rows(per_arm), args,
         lambda png: stages_chart(per_arm, png, "Table B: stages, pruned vs trained (toyvid)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
