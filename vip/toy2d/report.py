"""The Markdown report of the toy experiment: the table over seeds and the findings."""
from __future__ import annotations

from vip.toy2d.experiment import MODELS, ToyConfig, summarise, verdict


def ood_definition(cfg: ToyConfig) -> str:
    d = cfg.data
    r = [round(x, 3) for x in d.radii.tolist()]
    return (f"A sample is in Mode k if it lies within {d.radius_sigmas:g}σ_k of centre k "
            f"(Mode 1: centre {d.centres[0]}, σ = {d.stds[0]}, radius {r[0]}; "
            f"Mode 2: centre {d.centres[1]}, σ = {d.stds[1]}, radius {r[1]}); "
            f"a sample in neither disc is OOD (the data themselves: about 1.1% OOD)")


def table(results: list[dict], cfg: ToyConfig) -> str:
    s = summarise(results)
    seeds = ", ".join(str(r["seed"]) for r in results)
    lines = [f"Samples per mode, OOD samples (of {cfg.n_eval} per model) and sliced Wasserstein-1 distance "
             f"to an independent draw of {cfg.n_eval} teacher samples; mean ± std over {len(results)} seeds "
             f"({seeds}). {ood_definition(cfg)}. The teacher's own distance is the sampling-noise floor.",
             "", "| model | Mode 1 | Mode 2 | OOD | SW₁ to teacher |", "|---|---|---|---|---|"]
    for m in MODELS:
        row = s[m]
        lines.append(f"| {m} | " + " | ".join(f"{row[k][0]:.0f} ± {row[k][1]:.0f}" for k in ("Mode 1", "Mode 2", "OOD"))
                     + f" | {row['SW'][0]:.3f} ± {row['SW'][1]:.3f} |")
    return "\n".join(lines)


def findings_md(found: list[dict]) -> str:
    lines = ["Each finding is judged on the means over seeds; it is called robust (HOLDS) when every "
             "comparison in it also holds on at least 80% of the seeds.", ""]
    for f in found:
        tag = f"({f['id']})" if f["id"] != "3+" else "(3, stricter)"
        lines.append(f"- {tag} {f['claim']}: **{verdict(f)}**. " + "; ".join(
            f"{p['name']}: {p['evidence']}" for p in f["parts"]) + ".")
    return "\n".join(lines)


def setup_md(cfg: ToyConfig, results: list[dict]) -> str:
    d = cfg.distill
    wl = [r["pairs"] for r in results]
    return (f"Teacher: {cfg.teacher_layers}-layer MLP of width {cfg.teacher_width}; base student: "
            f"{cfg.student_layers}-layer MLP of width {cfg.student_width} (layers = Linear layers; time enters "
            f"as a 16-d sinusoidal embedding concatenated to x). Both trained on the data with the same recipe: "
            f"{cfg.train_steps} steps, batch {cfg.train_batch}, AdamW lr {cfg.train_lr:g} with cosine decay, "
            f"DDPM with 1000 steps (cosine schedule, ε-prediction). Sampling: DDPM ancestral, "
            f"{cfg.sample_steps} steps. Preference pairs: reward = 1 in Mode 2, else 0; winners = teacher samples "
            f"in Mode 2, losers = base-student samples outside Mode 2, each from {cfg.n_pool} draws "
            f"(about {sum(w for w, _ in wl) / len(wl):.0f} winners and {sum(l for _, l in wl) / len(wl):.0f} "
            f"losers per seed), paired at random in each batch. Distillation: `vip.redpo.pair_loss` with "
            f"the frozen teacher as DPO reference and SFT target; SFT = w_sft·L_SFT, DPO = L_DPO (w_sft = 0), "
            f"DPO+SFT = L_DPO + w_sft·L_SFT; β = {d.beta:g}, w_sft = {d.w_sft:g}, {d.steps} steps, batch "
            f"{d.batch} pairs, AdamW lr {d.lr:g} (constant); all three variants see the same batches, noise "
            f"and timesteps.")
