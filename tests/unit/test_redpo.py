import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from vip.redpo import diffusion_target, pair_loss, per_sample_mse, redpo_loss


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
