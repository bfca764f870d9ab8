"""Measure a toyvid model against ground truth and against itself without motion modules,
and render a PNG grid of its samples next to the ground truth.

    python jobs/eval_teacher.py [--model vip/toyvid/weights/teacher] [--prompts 72] [--out docs/teacher]
"""
import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from vip.evaluate import evaluate, mean_scores  # noqa: E402
from vip.models.motion_unet import MotionUNetModel  # noqa: E402
from vip.models.registry import SHIPPED_TEACHER  # noqa: E402
from vip.prompts.sets import eval_set  # noqa: E402
from vip.rewards.base import ASPECTS, as_matrix  # noqa: E402
from vip.rewards.toyvid_score import ToyvidScore  # noqa: E402
from vip.toyvid import world  # noqa: E402
from vip.plots import frame_grid  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=SHIPPED_TEACHER)
    ap.add_argument("--prompts", type=int, default=72)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1000, help="evaluation seeds (not those of stage runs)")
    ap.add_argument("--out", type=Path, default=Path("docs/teacher"))
    args = ap.parse_args()

    model = MotionUNetModel.load(args.model)
    model.meta.update(steps=args.steps, guidance=args.guidance)
    reward = ToyvidScore()
    es = eval_set("toyvid", args.prompts, 1, args.seed)
    truth = torch.stack([world.render(world.parse(p), s) for p, s in zip(es.prompts, es.seeds)])
    rows = {"ground truth": as_matrix(reward.score(truth, es.prompts))}
    rows["teacher"], clips = evaluate(model, reward, es.prompts, es.seeds, 24, keep_clips=True)
    rows["teacher, no motion modules"], flat = evaluate(model, reward, es.prompts, es.seeds, 24,
                                                        units_off=model.units(), keep_clips=True)
    header = "| model | " + " | ".join(ASPECTS) + " | total |"
    lines = [header, "|" + "---|" * (len(ASPECTS) + 2)]
    for name, s in rows.items():
        m = mean_scores(s)
        lines.append(f"| {name} | " + " | ".join(f"{m[a]:.3f}" for a in ASPECTS) + f" | {m['total']:.3f} |")
    table = "\n".join(lines)
    print(f"{len(es.prompts)} prompts, seeds {args.seed}+, {args.steps} DDIM steps, guidance {args.guidance}\n")
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scores.md").write_text(
        f"Command: `python jobs/eval_teacher.py --prompts {args.prompts} --steps {args.steps} "
        f"--guidance {args.guidance} --seed {args.seed}`\n\n{table}\n")
    k = 12
    inter = torch.stack([x for trio in zip(clips[:k], flat[:k], truth[:k]) for x in trio])
    labels = [f"{tag}: {p}" for p in es.prompts[:k] for tag in ("teacher", "no MM", "truth")]
    print(f"\nsamples: {frame_grid(inter, labels, args.out / 'samples.png')}")


if __name__ == "__main__":
    main()
