"""ReDPO noises pairs in the form each denoiser was trained on, whatever sampler generates with it.

The denoiser input must have the statistics the network saw in training: about unit std for the
variance-preserving (epsilon / v) models at every timestep, and the flow models' own
(1 - sigma) x0 + sigma * eps. AnimateDiff-Lightning samples with Euler in sigma space, whose
add_noise returns x0 + sigma * eps (std about 25 at t = 999); fed to the U-Net unscaled, that is
an input the network never saw. The inputs are read off the policy as pair_loss calls it."""
import pytest
import torch
from diffusers import UniPCMultistepScheduler

from vip.models.animatediff import lightning_scheduler
from vip.models.toyvid import build_scheduler as toyvid_scheduler
from vip.models.videocrafter2.scheduler import VideoCrafterDDIMScheduler
from vip.redpo import add_noise, diffusion_target, pair_loss, prediction_type

TIMESTEPS = (999, 750, 500, 250)


def animatediff_ddim():
    from diffusers import DDIMScheduler
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="linear", clip_sample=False,
                         steps_offset=1, prediction_type="epsilon")


SCHEDULERS = {
    "toyvid (v)": toyvid_scheduler,
    "animatediff (epsilon, DDIM)": animatediff_ddim,
    "animatediff_lightning (epsilon, Euler)": lightning_scheduler,
    "videocrafter2 (epsilon, scaled DDIM)": VideoCrafterDDIMScheduler,
    "wan2.1 (flow, UniPC)": lambda: UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                             flow_shift=3.0),
}


def denoiser_inputs(sched, t: int, n: int = 64) -> torch.Tensor:
    """What pair_loss hands the policy for unit-variance latents at timestep t."""
    g = torch.Generator().manual_seed(t)
    x_w, x_l, noise = (torch.randn(n, 4, 4, 8, 8, generator=g) for _ in range(3))
    seen = []

    def policy(x, tt):
        seen.append(x.detach().clone())
        return torch.zeros_like(x, requires_grad=True)

    pair_loss(policy, lambda x, tt: torch.zeros_like(x), sched, x_w, x_l, noise, torch.full((n,), t),
              beta=1.0, w_sft=1.0)
    return seen[0]


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("t", TIMESTEPS)
def test_the_denoiser_input_has_the_training_distributions_std(name, t):
    sched = SCHEDULERS[name]()
    std = denoiser_inputs(sched, t).std().item()
    if prediction_type(sched) == "flow_prediction":
        s = t / sched.config.num_train_timesteps
        expect = ((1 - s) ** 2 + s ** 2) ** 0.5  # (1 - sigma) x0 + sigma eps
    elif isinstance(sched, VideoCrafterDDIMScheduler):
        a, k = sched.alphas_cumprod[t].item(), sched.scale[t].item()  # lvdm's signal scale on x0
        expect = (a * k ** 2 + 1 - a) ** 0.5
    else:
        expect = 1.0
    assert abs(std - expect) < 0.05, f"{name} at t={t}: std {std:.3f}, trained on {expect:.3f}"
    assert 0.65 < std < 1.1, f"{name} at t={t}: std {std:.3f} is not about 1"


@pytest.mark.parametrize("t", TIMESTEPS)
def test_lightning_trains_on_what_its_sampler_feeds_the_unet(t):
    """Euler's sampler feeds scale_model_input(x0 + sigma eps) = the VP x_t: the same as training now."""
    sched = lightning_scheduler()
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, 2, 4, 4, generator=g), torch.randn(2, 4, 2, 4, 4, generator=g)
    tt = torch.full((2,), t)
    sigma = ((1 - sched.alphas_cumprod[t]) / sched.alphas_cumprod[t]) ** 0.5
    sampler_input = (x0 + sigma * eps) / (sigma ** 2 + 1) ** 0.5
    assert torch.allclose(add_noise(sched, x0, eps, tt), sampler_input, atol=1e-5)


def test_v_target_without_get_velocity_is_diffusers_velocity():
    """A v-prediction model under a sigma-space sampler (no get_velocity) still gets DDPM's v."""
    from diffusers import DDPMScheduler, EulerDiscreteScheduler

    ddpm, euler = DDPMScheduler(prediction_type="v_prediction"), EulerDiscreteScheduler(prediction_type="v_prediction")
    x0, eps, t = torch.randn(3, 4, 2, 2, 2), torch.randn(3, 4, 2, 2, 2), torch.tensor([10, 500, 990])
    assert torch.allclose(diffusion_target(euler, x0, eps, t), ddpm.get_velocity(x0, eps, t), atol=1e-5)
    assert torch.allclose(add_noise(euler, x0, eps, t), ddpm.add_noise(x0, eps, t), atol=1e-5)


def test_an_unknown_sampler_is_refused_by_name():
    from diffusers import HeunDiscreteScheduler

    with pytest.raises(ValueError, match="HeunDiscreteScheduler"):
        add_noise(HeunDiscreteScheduler(), torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([5]))
