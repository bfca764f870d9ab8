"""ReDPO noising and targets for flow-matching schedulers, next to the epsilon / v ones."""
import torch
from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from hypothesis import given, settings
from hypothesis import strategies as st

from vip.redpo import add_noise, diffusion_target, prediction_type

X0 = torch.tensor([[1.0, 2.0]])
NOISE = torch.tensor([[3.0, -1.0]])


def wan_scheduler() -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)


def test_flow_noising_and_target_by_hand():
    for sched in (wan_scheduler(), FlowMatchEulerDiscreteScheduler(shift=3.0)):
        assert prediction_type(sched) == "flow_prediction"
        t = torch.tensor([250])  # sigma = 250 / 1000
        # x_t = 0.75 * [1, 2] + 0.25 * [3, -1]; velocity = noise - x0
        assert torch.allclose(add_noise(sched, X0, NOISE, t), torch.tensor([[1.5, 1.25]]))
        assert torch.equal(diffusion_target(sched, X0, NOISE, t), torch.tensor([[2.0, -3.0]]))
    # per-sample sigmas broadcast over every other dim
    x0, noise = torch.zeros(2, 3, 2, 2, 2), torch.ones(2, 3, 2, 2, 2)
    xt = add_noise(wan_scheduler(), x0, noise, torch.tensor([0, 1000]))
    assert torch.equal(xt[0], torch.zeros(3, 2, 2, 2)) and torch.equal(xt[1], torch.ones(3, 2, 2, 2))


def test_flow_noising_matches_diffusers_flow_match_forward_process():
    """FlowMatchEulerDiscreteScheduler.scale_noise at timestep t (unshifted, 1000 steps: t = sigma * 1000)."""
    ref = FlowMatchEulerDiscreteScheduler(shift=1.0)
    ref.set_timesteps(1000)
    for t in (1, 250, 999):
        expect = ref.scale_noise(X0, torch.tensor([float(t)]), NOISE)
        assert torch.allclose(add_noise(ref, X0, NOISE, torch.tensor([t])), expect, atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(t=st.integers(0, 999), a=st.floats(-3, 3), b=st.floats(-3, 3))
def test_an_euler_step_along_the_true_velocity_lands_on_x0(t, a, b):
    sched = wan_scheduler()
    x0, noise, tt = torch.tensor([[a]], dtype=torch.float64), torch.tensor([[b]], dtype=torch.float64), torch.tensor([t])
    xt, v = add_noise(sched, x0, noise, tt), diffusion_target(sched, x0, noise, tt)
    assert torch.allclose(xt - (t / 1000) * v, x0, atol=1e-9)  # from sigma straight to 0
    assert torch.allclose(xt + (1 - t / 1000) * v, noise, atol=1e-9)  # and up to sigma = 1


def test_epsilon_and_v_prediction_are_unchanged():
    for kind in ("epsilon", "v_prediction"):
        sched = DDPMScheduler(prediction_type=kind)
        t = torch.tensor([500])
        assert torch.equal(add_noise(sched, X0, NOISE, t), sched.add_noise(X0, NOISE, t))
        expect = NOISE if kind == "epsilon" else sched.get_velocity(X0, NOISE, t)
        assert torch.equal(diffusion_target(sched, X0, NOISE, t), expect)
