"""Toy 2-D experiment of supplement E: distil a 4x64 diffusion MLP teacher into a 2x32 student with
SFT, DPO and DPO+SFT (the shared ReDPO loss of vip/redpo.py), and check the paper's three findings.

    python jobs/toy2d.py [--seeds 5] [--out runs/toy2d] [--quick]
    python jobs/toy2d.py --sweep            # the hyperparameter sweep on tuning seeds 100, 101

Writes toy2d_modes.png (Figure A), toy2d_samples.png (Figure B), toy2d_training.png,
results.md and results.json into --out.
"""
import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from vip.toy2d import figures  # noqa: E402
from vip.toy2d.distill import VARIANTS  # noqa: E402
from vip.toy2d.experiment import (MODELS, PHASES, ToyConfig, config_dict, findings, run_seed,  # noqa: E402
                                  summarise, verdict)
from vip.toy2d.report import findings_md, setup_md, table  # noqa: E402
from vip.toy2d.sweep import run_sweep, sweep_md  # noqa: E402


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5, help="number of seeds (0, 1, ... unless --first-seed)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/toy2d"))
    ap.add_argument("--quick", action="store_true", help="tiny budgets, for tests (seconds, not minutes)")
    ap.add_argument("--sweep", action="store_true", help="run the hyperparameter sweep instead (tuning seeds)")
    ap.add_argument("--beta", type=float)
    ap.add_argument("--w-sft", type=float)
    ap.add_argument("--lr", type=float, help="distillation learning rate")
    ap.add_argument("--distill-steps", type=int)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be at least 1")
    return args


def build_config(args) -> ToyConfig:
    cfg = ToyConfig()
    if args.quick:
        cfg = cfg.quick()
    over = {k: v for k, v in (("beta", args.beta), ("w_sft", args.w_sft), ("lr", args.lr),
                              ("steps", args.distill_steps)) if v is not None}
    return replace(cfg, distill=replace(cfg.distill, **over)) if over else cfg


def main(argv=None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    cfg = build_config(args)
    args.out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python jobs/toy2d.py", *(sys.argv[1:] if argv is None else argv)])
    t0 = time.perf_counter()

    if args.sweep:
        seeds = [100, 101] if not args.quick else [100]
        bar = tqdm(desc="sweep", unit="run")
        rows, best = run_sweep(cfg, seeds, progress=lambda r: bar.update(1))
        bar.close()
        md = sweep_md(rows, best, seeds, cfg.distill.steps)
        (args.out / "sweep.md").write_text(f"Command: `{command}`, {time.perf_counter() - t0:.0f} s\n\n{md}\n")
        print(md)
        return

    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    results = []
    with tqdm(total=len(seeds) * len(PHASES), unit="phase") as bar:
        def tick(phase):
            bar.update(1)
            bar.set_postfix_str(f"seed {seed}: {phase} done")
        for seed in seeds:
            bar.set_description(f"seed {seed}")
            results.append(run_seed(seed, cfg, tick, keep_samples=seed == seeds[0]))
    wall = time.perf_counter() - t0

    first = results[0]
    summary = summarise(results)
    per_seed = {m: {k: [r["numbers"][m][k] for r in results] for k in ("Mode 1", "Mode 2", "OOD")} for m in MODELS}
    paths = [figures.modes_figure(cfg.data, first["data"], summary, MODELS, cfg.n_eval, len(results),
                                  args.out / "toy2d_modes.png", per_seed),
             figures.samples_figure(cfg.data, first["data"], first["samples"], MODELS, first["seed"],
                                    args.out / "toy2d_samples.png"),
             figures.curves_figure(results, VARIANTS, args.out / "toy2d_training.png")]
    found = findings(results)
    md = "\n\n".join([f"Command: `{command}` ({wall:.0f} s wall, {args.threads} thread)", table(results, cfg),
                      findings_md(found), setup_md(cfg, results)])
    (args.out / "results.md").write_text(md + "\n")
    (args.out / "results.json").write_text(json.dumps(
        {"config": config_dict(cfg), "wall_s": wall, "summary": summary,
         "findings": [{**f, "verdict": verdict(f)} for f in found],
         "seeds": [{k: v for k, v in r.items() if k not in ("samples", "data")} for r in results]}, indent=1))
    print(table(results, cfg), "\n")
    for f in found:
        print(f"finding {f['id']}: {verdict(f)}: {f['claim']}\n    {f['evidence']}")
    print(f"\nwall time {wall:.0f} s; wrote " + ", ".join(str(p) for p in paths) + f", {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
