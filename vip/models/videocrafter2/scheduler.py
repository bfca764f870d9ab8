"""DDIM with VideoCrafter2's signal scale (lvdm LatentDiffusion `use_scale`, `scale_b: 0.7`).

VideoCrafter2 was trained on x_t = sqrt(a_t) * s_t * x0 + sqrt(1 - a_t) * eps, where s_t
falls linearly from scale_a = 1 to scale_b = 0.7 over the first `scale_mid_step` timesteps
and stays at scale_b after. Its DDIM sampler therefore divides the predicted x0 by s_t and
re-scales it by s_{t-1}. Plain diffusers DDIM (s = 1) would sample from a model trained on
another forward process, and ReDPO's add_noise would noise pairs off the training
distribution, so both add_noise and step carry the scale here. Epsilon prediction only.
"""
from __future__ import annotations

import torch
from diffusers import DDIMScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput


class VideoCrafterDDIMScheduler(DDIMScheduler):
    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", clip_sample: bool = False, set_alpha_to_one: bool = False,
                 steps_offset: int = 1, prediction_type: str = "epsilon", timestep_spacing: str = "leading",
                 scale_a: float = 1.0, scale_b: float = 0.7, scale_mid_step: int = 400, **kwargs):
        super().__init__(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                         beta_schedule=beta_schedule, clip_sample=clip_sample, set_alpha_to_one=set_alpha_to_one,
                         steps_offset=steps_offset, prediction_type=prediction_type,
                         timestep_spacing=timestep_spacing, **kwargs)
        if prediction_type != "epsilon":
            raise ValueError(f"VideoCrafterDDIMScheduler supports prediction_type 'epsilon' only, got {prediction_type!r}")
        if beta_schedule == "scaled_linear" and kwargs.get("trained_betas") is None:
            # lvdm's make_beta_schedule("linear") and DDPM.register_schedule compute the schedule in float64 and
            # store it as float32 (utils_diffusion.py:33-34, ddpm3d.py:119-133); diffusers' float32 linspace and
            # cumprod land up to 1e-6 (relative) away, which CFG's large steps amplify.
            betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
            self.betas = betas.float()
            self.alphas = (1.0 - betas).float()
            self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float()
            self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]
        t = torch.arange(num_train_timesteps, dtype=torch.float64)
        ramp = scale_a + (scale_b - scale_a) * t / max(scale_mid_step - 1, 1)  # np.linspace(a, b, mid)
        self.scale = torch.where(t < scale_mid_step, ramp, torch.full_like(t, scale_b)).float()

    def _scale_at(self, t) -> torch.Tensor:
        t = torch.as_tensor(t).long()
        return torch.where(t >= 0, self.scale[t.clamp(min=0)], self.scale[0])

    def add_noise(self, original_samples, noise, timesteps):
        s = self._scale_at(timesteps.cpu()).to(original_samples.device, original_samples.dtype)
        return super().add_noise(original_samples * s.reshape(-1, *[1] * (original_samples.dim() - 1)),
                                 noise, timesteps)

    def step(self, model_output, timestep, sample, eta: float = 0.0, variance_noise: torch.Tensor | None = None,
             generator=None, return_dict: bool = True, **kwargs):
        """lvdm's p_sample_ddim: x_prev = sqrt(a_prev) * s_prev * x0 + dir_xt + sigma_t * z with
        x0 = (x - sqrt(1 - a_t) * eps) / (sqrt(a_t) * s_t). `variance_noise` (z) is required for eta > 0,
        so the caller owns the randomness (one generator per sample)."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        t = int(timestep)
        prev = t - self.config.num_train_timesteps // self.num_inference_steps
        a_t = self.alphas_cumprod[t]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        s_t, s_prev = self._scale_at(t), self._scale_at(prev)
        x0 = (sample - (1 - a_t) ** 0.5 * model_output) / a_t ** 0.5 / s_t
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
        prev_sample = a_prev ** 0.5 * s_prev * x0 + (1 - a_prev - sigma ** 2) ** 0.5 * model_output
        if eta > 0:
            if variance_noise is None:
                raise ValueError("eta > 0 needs variance_noise (per-sample noise from the caller)")
            prev_sample = prev_sample + sigma * variance_noise
        prev_sample = prev_sample.to(model_output.dtype)
        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
