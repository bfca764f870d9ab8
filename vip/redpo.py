"""ReDPO = Diffusion-DPO + w_SFT * L_SFT, on plain tensors (no model, no DeepSpeed).

Diffusion-DPO as in Wallace et al.'s public trainer: winner and loser are noised with the
SAME noise at the SAME timestep; the per-sample error is averaged over every non-batch
dimension (C, F, H, W for video); and

    L_DPO = -log sigmoid(-beta/2 * ((mse_w - mse_l) - (ref_w - ref_l)))

L_SFT is distillation on the preferred sample: the student's prediction on the noised
winner against a target (by default the frozen teacher M0's prediction, as the paper's
method figure feeds only M0 and the student into the loss; see docs/decisions.md).
The same code trains the toy 2-D models (jobs/toy2d.py) and the video models.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def per_sample_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all non-batch dims: [B, ...] -> [B] (for 5-D video: C, F, H, W)."""
    return (pred.float() - target.float()).pow(2).flatten(1).mean(1)


LOSS_KINDS = ("redpo", "sft", "dpo")


@dataclass
class ReDPOLoss:
    loss: torch.Tensor  # dpo + w_sft * sft, scalar, differentiable
    dpo: torch.Tensor
    sft: torch.Tensor
    metrics: dict[str, float]  # detached, TRL names where they exist


def redpo_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
               target_w: torch.Tensor, target_l: torch.Tensor, sft_target_w: torch.Tensor,
               beta: float, w_sft: float, kind: str = "redpo") -> ReDPOLoss:
    """All inputs [B, ...]: policy/reference predictions and the diffusion targets (epsilon or v)
    for the noised winner (w) and loser (l); `sft_target_w` is what the policy's winner
    prediction is distilled towards. ref_* and sft_target_w carry no gradient.

    `kind` picks what is optimised: redpo (dpo + w_sft * sft), sft (w_sft * sft: the paper's
    SFT baseline, identical to ReDPO minus the DPO term) or dpo. Every term is still
    computed and logged, so the arms are compared on the same metrics."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"loss kind must be one of {', '.join(LOSS_KINDS)}, got {kind!r}")
    mse_w, mse_l = per_sample_mse(policy_w, target_w), per_sample_mse(policy_l, target_l)
    with torch.no_grad():
        ref_mse_w, ref_mse_l = per_sample_mse(ref_w, target_w), per_sample_mse(ref_l, target_l)
    # implicit rewards: how much better than the reference the policy denoises each video
    chosen = -0.5 * beta * (mse_w - ref_mse_w)
    rejected = -0.5 * beta * (mse_l - ref_mse_l)
    margin = chosen - rejected
    dpo = -F.logsigmoid(margin).mean()
    sft = per_sample_mse(policy_w, sft_target_w.detach()).mean()
    loss = {"redpo": dpo + w_sft * sft, "sft": w_sft * sft, "dpo": dpo}[kind]
    metrics = {
        "loss": loss.item(), "dpo": dpo.item(), "sft": sft.item(),
        "rewards/chosen": chosen.mean().item(), "rewards/rejected": rejected.mean().item(),
        "rewards/margins": margin.mean().item(), "rewards/accuracies": (margin > 0).float().mean().item(),
        "mse/policy_chosen": mse_w.mean().item(), "mse/policy_rejected": mse_l.mean().item(),
        "mse/ref_chosen": ref_mse_w.mean().item(), "mse/ref_rejected": ref_mse_l.mean().item(),
    }
    return ReDPOLoss(loss, dpo, sft, metrics)


def prediction_type(scheduler) -> str:
    """epsilon, v_prediction or flow_prediction (velocity of a rectified flow). Flow-matching
    schedulers (FlowMatchEulerDiscreteScheduler) carry no prediction_type: they are all flow."""
    if type(scheduler).__name__.startswith("FlowMatch"):
        return "flow_prediction"
    return scheduler.config.prediction_type


def flow_sigma(scheduler, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Noise level of integer timestep t in a flow-matching model: sigma = t / T, the same map
    its samplers use (they feed the denoiser timestep = sigma * T), broadcastable to [B, ...]."""
    sigma = t.double() / scheduler.config.num_train_timesteps
    return sigma.reshape(-1, *([1] * (ndim - 1)))


# Samplers whose add_noise is the variance-preserving forward process the denoiser was trained
# on: x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps (VideoCrafter2's DDIM subclass adds its signal scale).
VP_FORWARD = ("DDIMScheduler", "DDPMScheduler", "UniPCMultistepScheduler", "DPMSolverMultistepScheduler",
              "VideoCrafterDDIMScheduler")
# Samplers that work in sigma space: add_noise returns x0 + sigma * eps and the sampler divides the
# denoiser's input by sqrt(sigma^2 + 1) (scale_model_input). Their denoisers were still trained on
# the VP form above (AnimateDiff-Lightning is SD1.5's epsilon U-Net), so training noises in VP form.
SIGMA_SPACE = ("EulerDiscreteScheduler",)


def _alpha_bar(scheduler, t: torch.Tensor, ndim: int, device, dtype) -> torch.Tensor:
    a = scheduler.alphas_cumprod.to(device=device, dtype=torch.float64)[t.to(device).long()]
    return a.reshape(-1, *([1] * (ndim - 1))).to(dtype)


def add_noise(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t at integer timesteps t [B], in the form the denoiser was TRAINED on, whatever sampler
    generates with it: the VP forward process for epsilon / v models (for a sigma-space sampler
    such as Lightning's Euler this is its add_noise after scale_model_input), and
    x_t = (1 - sigma) x0 + sigma * noise for flow-matching ones. The result goes to the denoiser
    as it is (no scale_model_input)."""
    name = type(scheduler).__name__
    work = torch.promote_types(x0.dtype, torch.float32)  # at least float32, even for bf16 latents
    if prediction_type(scheduler) == "flow_prediction":
        sigma = flow_sigma(scheduler, t, x0.ndim).to(x0.device, work)
        return ((1 - sigma) * x0.to(work) + sigma * noise.to(work)).to(x0.dtype)
    if name in VP_FORWARD:
        return scheduler.add_noise(x0, noise, t)
    if name in SIGMA_SPACE:
        a = _alpha_bar(scheduler, t, x0.ndim, x0.device, work)
        return (a.sqrt() * x0.to(work) + (1 - a).sqrt() * noise.to(work)).to(x0.dtype)
    raise ValueError(f"scheduler {name} is not supported for training: its forward process is unknown "
                     f"(expected one of {', '.join(VP_FORWARD + SIGMA_SPACE)} or a flow-matching scheduler)")


def diffusion_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the denoiser is trained to output: epsilon, v = sqrt(a_t) eps - sqrt(1 - a_t) x0 for
    v-prediction (diffusers' get_velocity; a sigma-space sampler's get_velocity takes sampling
    timesteps and works in sigma space, so v is computed here for those), or the flow velocity
    d x_t / d sigma = noise - x0 for flow-matching ones."""
    kind = prediction_type(scheduler)
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        # UniPC and DPM-Solver (VP, but without get_velocity) take the formula below, as sigma-space samplers do
        if type(scheduler).__name__ in VP_FORWARD and hasattr(scheduler, "get_velocity"):
            return scheduler.get_velocity(x0, noise, t)
        work = torch.promote_types(x0.dtype, torch.float32)
        a = _alpha_bar(scheduler, t, x0.ndim, x0.device, work)
        return (a.sqrt() * noise.to(work) - (1 - a).sqrt() * x0.to(work)).to(x0.dtype)
    if kind == "flow_prediction":
        return noise - x0
    raise ValueError(f"scheduler prediction_type {kind!r} is not supported "
                     "(expected epsilon, v_prediction or flow_prediction)")


Predict = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (noised [B,...], t [B]) -> prediction


def pair_loss(policy: Predict, teacher: Predict, scheduler, x_w: torch.Tensor, x_l: torch.Tensor,
              noise: torch.Tensor, t: torch.Tensor, beta: float, w_sft: float,
              reference: Predict | None = None, sft_target: str = "teacher", kind: str = "redpo") -> ReDPOLoss:
    """ReDPO on a batch of pairs of clean latents x_w (preferred) and x_l (unpreferred).

    Winner and loser share `noise` and `t`. The policy runs once on the stacked batch. The
    teacher runs once, without gradient, and its winner prediction serves both the DPO
    reference (unless a separate `reference` is given) and the SFT target.
    """
    if sft_target not in ("teacher", "noise"):
        raise ValueError(f"sft_target must be 'teacher' or 'noise', got {sft_target!r}")
    x = torch.cat([add_noise(scheduler, x_w, noise, t), add_noise(scheduler, x_l, noise, t)])
    tt = torch.cat([t, t])
    target = torch.cat([diffusion_target(scheduler, x_w, noise, t), diffusion_target(scheduler, x_l, noise, t)])
    pred = policy(x, tt)
    b = x_w.shape[0]
    with torch.no_grad():
        if reference is None:
            ref = teacher(x, tt)
            teacher_w = ref[:b]
        else:
            ref = reference(x, tt)
            teacher_w = teacher(x[:b], t) if sft_target == "teacher" else None
        sft_w = teacher_w if sft_target == "teacher" else target[:b]
    return redpo_loss(pred[:b], pred[b:], ref[:b], ref[b:], target[:b], target[b:], sft_w, beta, w_sft, kind)
