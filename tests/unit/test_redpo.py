import math

import pytest
import torch
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler,
                       FlowMatchEulerDiscreteScheduler, HeunDiscreteScheduler, UniPCMultistepScheduler)
from hypothesis import given, settings
from hypothesis import strategies as st

from vip.redpo import _alpha_bar, add_noise, diffusion_target, pair_loss, per_sample_mse, redpo_loss


def test_per_sample_mse_averages_every_non_batch_dim_of_a_video():
    pred = torch.zeros(2, 3, 4, 5, 6)  # B, C, F, H, W
    target = torch.zeros(2, 3, 4, 5, 6)
    target[0, :, 3] = 2.0  # only the last frame of sample 0 is wrong: 1/4 of its elements, error 4 each
    mse = per_sample_mse(pred, target)
    assert mse.tolist() == [pytest.approx(1.0), 0.0]  # averaging only dims 1-3 would give 4.0 for frame 3


def test_loss_matches_a_hand_computed_case():
    b = torch.zeros(1, 4)
    tw, tl = torch.ones(1, 4), torch.ones(1, 4)
    # policy errors: winner 0.25, loser 1.0; reference errors: winner 0.5, loser 0.5
    pw, pl = torch.full((1, 4), 0.5), b.clone()
    rw, rl = torch.full((1, 4), 1 - math.sqrt(0.5)), torch.full((1, 4), 1 - math.sqrt(0.5))
    sft_t = torch.full((1, 4), 0.25)  # student winner 0.5 vs target 0.25: sft 0.0625
    out = redpo_loss(pw, pl, rw, rl, tw, tl, sft_t, beta=2.0, w_sft=10.0)
    inside = -0.5 * 2.0 * ((0.25 - 1.0) - (0.5 - 0.5))  # = 0.75
    assert out.dpo.item() == pytest.approx(-math.log(1 / (1 + math.exp(-inside))), rel=1e-5)
    assert out.sft.item() == pytest.approx(0.0625)
    assert out.loss.item() == pytest.approx(out.dpo.item() + 10.0 * 0.0625, rel=1e-6)
    assert out.metrics["rewards/margins"] == pytest.approx(inside, rel=1e-5)
    assert out.metrics["rewards/accuracies"] == 1.0


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(1.0, 5000.0))
def test_without_sft_it_is_plain_diffusion_dpo(seed, beta):
    g = torch.Generator().manual_seed(seed)
    t = [torch.randn(3, 2, 4, 4, generator=g) for _ in range(6)]
    out = redpo_loss(*t[:6], sft_target_w=torch.randn(3, 2, 4, 4, generator=g), beta=beta, w_sft=0.0)
    pw, pl, rw, rl, tw, tl = t
    m = lambda a, b: ((a - b) ** 2).mean(dim=(1, 2, 3))  # noqa: E731
    wallace = -torch.nn.functional.logsigmoid(-0.5 * beta * ((m(pw, tw) - m(pl, tl)) - (m(rw, tw) - m(rl, tl)))).mean()
    assert out.loss.item() == pytest.approx(wallace.item(), rel=1e-5, abs=1e-6)


def test_policy_equal_to_reference_gives_log2_and_the_expected_gradient():
    g = torch.Generator().manual_seed(0)
    pw = torch.randn(4, 8, generator=g).requires_grad_(True)
    pl = torch.randn(4, 8, generator=g).requires_grad_(True)
    tw, tl = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    beta = 10.0
    out = redpo_loss(pw, pl, pw.detach(), pl.detach(), tw, tl, pw.detach(), beta=beta, w_sft=0.0)
    assert out.dpo.item() == pytest.approx(math.log(2), rel=1e-6)
    out.loss.backward()
    # d/dpw of -logsigmoid(-beta/2 (mse_w - ...)) at margin 0 = 0.5 * beta/2 * dmse_w/dpw / B
    n, d = pw.shape
    expect_w = 0.5 * (beta / 2) * 2 * (pw.detach() - tw) / d / n
    assert torch.allclose(pw.grad, expect_w, atol=1e-6)
    assert torch.allclose(pl.grad, -0.5 * (beta / 2) * 2 * (pl.detach() - tl) / d / n, atol=1e-6)


def test_winner_and_loser_share_noise_and_timestep():
    sched = DDPMScheduler(num_train_timesteps=100)
    seen = {}

    def policy(x, t):
        seen["x"], seen["t"] = x.clone(), t.clone()
        return torch.zeros_like(x)

    x_w, x_l = torch.zeros(2, 3, 2, 4, 4), torch.ones(2, 3, 2, 4, 4)
    noise, t = torch.randn(2, 3, 2, 4, 4), torch.tensor([10, 70])
    pair_loss(policy, lambda x, t_: torch.zeros_like(x), sched, x_w, x_l, noise, t, beta=1.0, w_sft=1.0)
    assert torch.equal(seen["t"], torch.cat([t, t]))
    a = sched.alphas_cumprod[t].sqrt().view(-1, 1, 1, 1, 1)
    s = (1 - sched.alphas_cumprod[t]).sqrt().view(-1, 1, 1, 1, 1)
    # winner is 0 and loser is 1 everywhere: the noisy inputs differ by exactly sqrt(alpha_bar)
    assert torch.allclose(seen["x"][:2], s * noise, atol=1e-6)
    assert torch.allclose(seen["x"][2:] - seen["x"][:2], a.expand_as(noise), atol=1e-6)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_targets_for_epsilon_and_v_prediction(kind):
    sched = DDIMScheduler(num_train_timesteps=100, prediction_type=kind)
    x0, noise, t = torch.randn(2, 4), torch.randn(2, 4), torch.tensor([5, 90])
    target = diffusion_target(sched, x0, noise, t)
    if kind == "epsilon":
        assert torch.equal(target, noise)
    else:
        a = sched.alphas_cumprod[t].sqrt().unsqueeze(1)
        s = (1 - sched.alphas_cumprod[t]).sqrt().unsqueeze(1)
        assert torch.allclose(target, a * noise - s * x0, atol=1e-6)


def test_teacher_prediction_serves_both_reference_and_sft_target():
    sched = DDPMScheduler(num_train_timesteps=50)
    calls = []

    def teacher(x, t):
        calls.append(x.shape[0])
        return torch.full_like(x, 0.5)

    x = torch.zeros(3, 2, 4)
    pair_loss(lambda x_, t_: torch.zeros_like(x_), teacher, sched, x, x, torch.randn(3, 2, 4),
              torch.tensor([1, 2, 3]), beta=1.0, w_sft=1.0)
    assert calls == [6]  # one forward over the stacked winners and losers, nothing more
    out = pair_loss(lambda x_, t_: torch.zeros_like(x_), teacher, sched, x, x, torch.randn(3, 2, 4),
                    torch.tensor([1, 2, 3]), beta=1.0, w_sft=1.0, sft_target="teacher")
    assert out.sft.item() == pytest.approx(0.25)  # (0 - 0.5)^2


def test_loss_kinds_optimise_their_own_terms_and_log_all():
    g = torch.Generator().manual_seed(3)
    pw, pl, rw, rl, tw, tl, st_ = (torch.randn(2, 8, generator=g) for _ in range(7))
    full = redpo_loss(pw, pl, rw, rl, tw, tl, st_, beta=50.0, w_sft=7.0, kind="redpo")
    sft = redpo_loss(pw, pl, rw, rl, tw, tl, st_, beta=50.0, w_sft=7.0, kind="sft")
    dpo = redpo_loss(pw, pl, rw, rl, tw, tl, st_, beta=50.0, w_sft=7.0, kind="dpo")
    assert sft.loss.item() == pytest.approx(7.0 * full.sft.item())
    assert dpo.loss.item() == pytest.approx(full.dpo.item())
    assert sft.metrics["dpo"] == pytest.approx(full.metrics["dpo"])  # still logged, not optimised
    with pytest.raises(ValueError, match="loss kind"):
        redpo_loss(pw, pl, rw, rl, tw, tl, st_, beta=1.0, w_sft=1.0, kind="ppo")


# --- exact values, dtypes, names and messages (pinned for mutation testing, docs/testing.md) ----------

def _mse(a, b):
    return (a - b).pow(2).flatten(1).mean(1)


def test_metrics_carry_their_names_and_values():
    g = torch.Generator().manual_seed(5)
    pw, pl, rw, rl, tw, tl, st_ = (torch.randn(4, 3, generator=g) for _ in range(7))
    out = redpo_loss(pw, pl, rw, rl, tw, tl, st_, beta=2.0, w_sft=3.0)
    chosen, rejected = -(_mse(pw, tw) - _mse(rw, tw)), -(_mse(pl, tl) - _mse(rl, tl))  # -beta/2 * ..., beta = 2
    expect = {
        "loss": out.loss.item(), "dpo": -torch.nn.functional.logsigmoid(chosen - rejected).mean().item(),
        "sft": _mse(pw, st_).mean().item(),
        "rewards/chosen": chosen.mean().item(), "rewards/rejected": rejected.mean().item(),
        "rewards/margins": (chosen - rejected).mean().item(),
        "rewards/accuracies": (chosen > rejected).float().mean().item(),
        "mse/policy_chosen": _mse(pw, tw).mean().item(), "mse/policy_rejected": _mse(pl, tl).mean().item(),
        "mse/ref_chosen": _mse(rw, tw).mean().item(), "mse/ref_rejected": _mse(rl, tl).mean().item(),
    }
    assert list(out.metrics) == list(expect)
    assert out.metrics == pytest.approx(expect, rel=1e-6)
    assert out.loss.item() == pytest.approx(expect["dpo"] + 3.0 * expect["sft"], rel=1e-6)
    same = redpo_loss(rw, rl, rw, rl, tw, tl, st_, beta=2.0, w_sft=3.0)  # policy = reference: margin 0
    assert same.metrics["rewards/accuracies"] == 0.0  # a tie is not a correct preference


def test_bad_arguments_are_named():
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match=r"^loss kind must be one of redpo, sft, dpo, got 'ppo'$"):
        redpo_loss(x, x, x, x, x, x, x, beta=1.0, w_sft=1.0, kind="ppo")
    with pytest.raises(ValueError, match=r"^sft_target must be 'teacher' or 'noise', got 'student'$"):
        pair_loss(None, None, DDPMScheduler(), x, x, x, torch.tensor([1]), 1.0, 1.0, sft_target="student")
    with pytest.raises(ValueError, match=r"^scheduler prediction_type 'sample' is not supported \(expected epsilon, "
                                         r"v_prediction or flow_prediction\)$"):
        diffusion_target(DDIMScheduler(prediction_type="sample"), x, x, torch.tensor([1]))
    with pytest.raises(ValueError) as e:
        add_noise(HeunDiscreteScheduler(), x, x, torch.tensor([1]))
    assert str(e.value).endswith("(expected one of DDIMScheduler, DDPMScheduler, UniPCMultistepScheduler, "
                                 "DPMSolverMultistepScheduler, VideoCrafterDDIMScheduler, EulerDiscreteScheduler "
                                 "or a flow-matching scheduler)")


def _latents(dtype=torch.float32):
    g = torch.Generator().manual_seed(11)
    return torch.randn(3, 4, 2, 5, 5, generator=g).to(dtype), torch.randn(3, 4, 2, 5, 5, generator=g).to(dtype)


T = torch.tensor([10, 500, 990])


def test_flow_noising_is_float32_arithmetic_on_float32_latents():
    sched = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000)
    x0, noise = _latents()
    sigma = (T.double() / 1000).float().view(-1, 1, 1, 1, 1)
    assert torch.equal(add_noise(sched, x0, noise, T), (1 - sigma) * x0 + sigma * noise)


def test_sigma_space_noising_and_v_target_are_float32_arithmetic_on_float32_latents():
    x0, noise = _latents()
    a = EulerDiscreteScheduler().alphas_cumprod[T].view(-1, 1, 1, 1, 1)  # float32, as _alpha_bar hands it on
    assert torch.equal(add_noise(EulerDiscreteScheduler(), x0, noise, T), a.sqrt() * x0 + (1 - a).sqrt() * noise)
    v = diffusion_target(EulerDiscreteScheduler(prediction_type="v_prediction"), x0, noise, T)
    assert torch.equal(v, a.sqrt() * noise - (1 - a).sqrt() * x0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_vp_scheduler_gives_its_own_velocity(dtype):
    sched = DDIMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    x0, noise = _latents(dtype)
    assert torch.equal(diffusion_target(sched, x0, noise, T), sched.get_velocity(x0, noise, T))  # bf16: its arithmetic


@pytest.mark.parametrize("sched", [FlowMatchEulerDiscreteScheduler(), EulerDiscreteScheduler(),
                                   EulerDiscreteScheduler(prediction_type="v_prediction")])
def test_bf16_latents_stay_bf16(sched):
    x0, noise = _latents(torch.bfloat16)
    assert add_noise(sched, x0, noise, T).dtype == torch.bfloat16
    assert diffusion_target(sched, x0, noise, T).dtype == torch.bfloat16


def test_alpha_bar_comes_in_the_asked_dtype_and_broadcasts():
    a = _alpha_bar(EulerDiscreteScheduler(), T, 5, "cpu", torch.float32)
    assert a.dtype == torch.float32 and a.shape == (3, 1, 1, 1, 1)
    assert torch.equal(a.flatten(), EulerDiscreteScheduler().alphas_cumprod[T])


@pytest.mark.parametrize("sft_target", ["teacher", "noise"])
@pytest.mark.parametrize("separate_reference", [False, True])
@pytest.mark.parametrize("kind", ["redpo", "dpo", "sft"])
def test_pair_loss_is_redpo_loss_on_the_noised_pair(sft_target, separate_reference, kind):
    sched = DDPMScheduler(num_train_timesteps=50)
    g = torch.Generator().manual_seed(0)
    x_w, x_l, noise = (torch.randn(2, 3, 4, generator=g) for _ in range(3))
    t = torch.tensor([7, 30])
    calls = []

    def policy(x, tt):
        return 0.9 * x + 0.01 * tt.view(-1, 1, 1)

    def teacher_fn(x, tt):
        return 0.5 * x - 0.02 * tt.view(-1, 1, 1)

    def teacher(x, tt):
        calls.append(x.shape[0])
        return teacher_fn(x, tt)

    def reference(x, tt):
        return 0.7 * x + 0.03 * tt.view(-1, 1, 1)

    out = pair_loss(policy, teacher, sched, x_w, x_l, noise, t, beta=3.0, w_sft=2.0,
                    reference=reference if separate_reference else None, sft_target=sft_target, kind=kind)
    ref = reference if separate_reference else teacher_fn
    xw, xl = sched.add_noise(x_w, noise, t), sched.add_noise(x_l, noise, t)
    expect = redpo_loss(policy(xw, t), policy(xl, t), ref(xw, t), ref(xl, t), noise, noise,
                        teacher_fn(xw, t) if sft_target == "teacher" else noise, 3.0, 2.0, kind)
    assert out.metrics == pytest.approx(expect.metrics, rel=1e-6)
    # the teacher runs once: as the reference on the stacked pair, or only on the winners for the SFT target
    assert calls == ([4] if not separate_reference else [2] if sft_target == "teacher" else [])


@pytest.mark.parametrize("sched", [UniPCMultistepScheduler(prediction_type="v_prediction"),
                                   DPMSolverMultistepScheduler(prediction_type="v_prediction")])
def test_v_target_of_a_vp_sampler_without_get_velocity(sched):
    # a published v-prediction model may come with UniPC or DPM-Solver (vip.models.diffusion.SCHEDULERS): they
    # noise in VP form but have no get_velocity; this raised AttributeError before (found by mutation testing)
    x0, noise = _latents()
    a = sched.alphas_cumprod[T].view(-1, 1, 1, 1, 1)
    assert torch.equal(diffusion_target(sched, x0, noise, T), a.sqrt() * noise - (1 - a).sqrt() * x0)
