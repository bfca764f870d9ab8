"""Supplement E end to end: per seed, train the teacher and the base student on the data, build
the Mode-2 preference pairs, distil with SFT, DPO and DPO+SFT, and count modes, OOD samples and
the sliced Wasserstein distance to the teacher. Then check the paper's three findings.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import torch

from vip.toy2d.data import TwoModes
from vip.toy2d.diffusion import make_scheduler, sample, train_on_data
from vip.toy2d.distill import VARIANTS, DistillConfig, distill, preference_pairs
from vip.toy2d.metrics import sliced_wasserstein
from vip.toy2d.mlp import DenoiserMLP

MODELS = ("teacher", "base student") + VARIANTS
PHASES = ("teacher", "base student", "pairs") + VARIANTS


@dataclass(frozen=True)
class ToyConfig:
    data: TwoModes = field(default_factory=TwoModes)
    teacher_layers: int = 4
    teacher_width: int = 64
    student_layers: int = 2
    student_width: int = 32
    train_steps: int = 8000          # teacher and base student, same recipe
    train_lr: float = 3e-3
    train_batch: int = 512
    sample_steps: int = 50           # DDPM ancestral steps
    n_pool: int = 5000               # teacher and student draws from which the pairs are filtered
    n_eval: int = 5000               # samples per model for counts and distance
    check_every: int = 200           # distillation steps between points of the training curves
    n_check: int = 2000              # samples per point of the training curves
    distill: DistillConfig = field(default_factory=DistillConfig)

    def quick(self) -> "ToyConfig":
        return replace(self, train_steps=1500, n_pool=1000, n_eval=1000, check_every=50, n_check=500,
                       distill=replace(self.distill, steps=100, batch=128))


def _gen(seed: int, stream: int) -> torch.Generator:
    """One generator per (seed, purpose), so e.g. every model is sampled with the same noise."""
    return torch.Generator().manual_seed(1_000_003 * stream + seed)


@dataclass
class Prepared:
    seed: int
    teacher: DenoiserMLP
    base: DenoiserMLP
    winners: torch.Tensor
    losers: torch.Tensor
    teacher_ref: torch.Tensor        # an independent teacher draw: the target of the distance
    scheduler: object


def prepare(seed: int, cfg: ToyConfig, tick=lambda phase: None) -> Prepared:
    scheduler = make_scheduler()
    draw = lambda n, g: cfg.data.sample(n, g)[0]  # noqa: E731
    torch.manual_seed(seed)
    teacher = DenoiserMLP(cfg.teacher_layers, cfg.teacher_width)
    train_on_data(teacher, scheduler, draw, cfg.train_steps, cfg.train_lr, cfg.train_batch, _gen(seed, 1))
    tick("teacher")
    base = DenoiserMLP(cfg.student_layers, cfg.student_width)
    train_on_data(base, scheduler, draw, cfg.train_steps, cfg.train_lr, cfg.train_batch, _gen(seed, 2))
    tick("base student")
    teacher.eval(), base.eval()
    teacher_pool = sample(teacher, scheduler, cfg.n_pool, cfg.sample_steps, _gen(seed, 3))
    student_pool = sample(base, scheduler, cfg.n_pool, cfg.sample_steps, _gen(seed, 4))
    winners, losers = preference_pairs(teacher_pool, student_pool, cfg.data.reward)
    teacher_ref = sample(teacher, scheduler, cfg.n_eval, cfg.sample_steps, _gen(seed, 5))
    tick("pairs")
    return Prepared(seed, teacher, base, winners, losers, teacher_ref, scheduler)


def measure(model, prep: Prepared, cfg: ToyConfig, n: int | None = None) -> tuple[torch.Tensor, dict]:
    """The model's evaluation samples (same sampler noise for every model) and their numbers:
    counts per mode and OOD, and SW to the teacher reference (n_eval samples unless n is given)."""
    x = sample(model, prep.scheduler, n or cfg.n_eval, cfg.sample_steps, _gen(prep.seed, 6))
    return x, {**cfg.data.counts(x), "SW": sliced_wasserstein(x, prep.teacher_ref), "n": len(x)}


def run_seed(seed: int, cfg: ToyConfig, tick=lambda phase: None, keep_samples: bool = False) -> dict:
    t0 = time.perf_counter()
    prep = prepare(seed, cfg, tick)
    samples, numbers, curves = {}, {}, {}
    for name, model in (("teacher", prep.teacher), ("base student", prep.base)):
        samples[name], numbers[name] = measure(model, prep, cfg)
    for variant in VARIANTS:
        curve = []
        check = lambda step, policy: curve.append({"step": step, **measure(policy, prep, cfg, cfg.n_check)[1]})  # noqa: E731
        model = distill(prep.base, prep.teacher, prep.scheduler, prep.winners, prep.losers, variant,
                        cfg.distill, _gen(seed, 7), every=cfg.check_every, on_check=check)
        samples[variant], numbers[variant] = measure(model, prep, cfg)
        curves[variant] = curve
        tick(variant)
    out = {"seed": seed, "numbers": numbers, "curves": curves, "pairs": [len(prep.winners), len(prep.losers)],
           "seconds": time.perf_counter() - t0}
    if keep_samples:
        out["samples"] = samples
        out["data"] = cfg.data.sample(cfg.n_eval, _gen(seed, 8))[0]
    return out


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(results: list[dict]) -> dict:
    """{model: {metric: (mean, std)}} over seeds."""
    metrics = ("Mode 1", "Mode 2", "OOD", "SW")
    return {m: {k: mean_std([r["numbers"][m][k] for r in results]) for k in metrics} for m in MODELS}


ROBUST = 0.8  # a comparison that holds on the means is robust if it also holds on >= 80% of the seeds
_OPS = {"<": lambda a, b: a < b, ">": lambda a, b: a > b}


def _part(name: str, comparisons: list[tuple[str, str, str, str]], results: list[dict], s: dict) -> dict:
    """A claim made of comparisons (model_a, metric, op, model_b), all of which must hold; judged on
    the means over seeds and, separately, seed by seed."""
    def ok(get) -> bool:
        return all(_OPS[op](get(a, k), get(b, k)) for a, k, op, b in comparisons)
    mean_ok = ok(lambda m, k: s[m][k][0])
    seeds_ok = sum(ok(lambda m, k, r=r: r["numbers"][m][k]) for r in results)
    fmt = lambda k, v: f"{v:.3f}" if k == "SW" else f"{v:.0f}"  # noqa: E731
    rel = lambda x, y: "<" if x < y else ">" if x > y else "="  # noqa: E731  the actual relation, not the claimed one
    text = ", ".join(f"{k} {a} {fmt(k, s[a][k][0])} {rel(s[a][k][0], s[b][k][0])} {b} {fmt(k, s[b][k][0])}"
                     for a, k, _, b in comparisons)
    return {"name": name, "mean_ok": mean_ok, "seeds_ok": seeds_ok, "n": len(results),
            "robust": mean_ok and seeds_ok >= ROBUST * len(results),
            "evidence": f"{text} (on {seeds_ok}/{len(results)} seeds)"}


def findings(results: list[dict]) -> list[dict]:
    """The three findings of supplement E (and a stricter form of the third), each a list of parts."""
    s = summarise(results)
    b, d = "base student", "DPO+SFT"
    spec = [
        (1, "SFT gives more OOD samples than the base student",
         [("more OOD", [("SFT", "OOD", ">", b)])]),
        (2, "DPO favours Mode 2 but degrades Mode 1",
         [("more Mode 2", [("DPO", "Mode 2", ">", b)]), ("less Mode 1", [("DPO", "Mode 1", "<", b)])]),
        (3, "DPO+SFT gives the fewest OOD samples and is closest to the teacher (among the three losses)",
         [("fewest OOD", [(d, "OOD", "<", "SFT"), (d, "OOD", "<", "DPO")]),
          ("closest", [(d, "SW", "<", "SFT"), (d, "SW", "<", "DPO")])]),
        ("3+", "DPO+SFT also beats the undistilled base student",
         [("fewer OOD than base", [(d, "OOD", "<", b)]), ("closer than base", [(d, "SW", "<", b)])]),
    ]
    out = []
    for fid, claim, parts in spec:
        ps = [_part(name, comps, results, s) for name, comps in parts]
        out.append({"id": fid, "claim": claim, "parts": ps, "holds": all(p["mean_ok"] for p in ps),
                    "robust": all(p["robust"] for p in ps),
                    "evidence": " | ".join(f"{p['name']}: {p['evidence']}" for p in ps)})
    return out


def verdict(f: dict) -> str:
    """HOLDS (means and >= 80% of seeds), HOLDS ON THE MEANS ONLY, PARTLY, or DOES NOT HOLD."""
    if f["robust"]:
        return "HOLDS"
    if f["holds"]:
        weak = [p for p in f["parts"] if not p["robust"]]
        return "HOLDS ON THE MEANS ONLY (" + ", ".join(f"{p['name']}: {p['seeds_ok']}/{p['n']} seeds" for p in weak) + ")"
    if any(p["mean_ok"] for p in f["parts"]):
        return "PARTLY (" + ", ".join(f"{p['name']}: {'yes' if p['mean_ok'] else 'no'}" for p in f["parts"]) + ")"
    return "DOES NOT HOLD"


def config_dict(cfg: ToyConfig) -> dict:
    d = asdict(cfg)
    d["data"] = {k: v for k, v in d["data"].items() if not k.startswith("_")}
    return d
