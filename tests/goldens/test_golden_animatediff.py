"""AnimateDiff v1-5-2 sampling against diffusers' AnimateDiffPipeline (scripts/goldens/animatediff.py ran it on
these tiny weights, in its own environment), for both model.sampler_preset values: the same weights loaded
through our registry as a user would, the same prompts, negative prompt, seeds, steps and guidance."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vip.config import SAMPLER_PRESETS
from vip.models.animatediff import SAMPLER_PRESETS as BUILT_PRESETS, ddim_scheduler
from vip.models.registry import load_video_model

from helpers.goldens import outputs, sampling_config, settings

GOLDEN = Path(__file__).parent / "animatediff"
SETTINGS = settings(GOLDEN)
ATOL = 1e-4


@pytest.fixture(scope="module")
def ref():
    return outputs(GOLDEN)


_MODELS: dict = {}


def load(preset: str):
    """One model per preset for the module (loading is most of the time here)."""
    if preset in _MODELS:
        return _MODELS[preset]
    s = SETTINGS
    cfg = sampling_config(s, backbone="animatediff", path=str(GOLDEN / "sd15"), adapter=str(GOLDEN / "motion_adapter"),
                          sampler_preset=preset)
    model = load_video_model(cfg, cfg.path)
    model.meta["negative_prompt"] = s["negative_prompt"]  # a user's negative prompt (vip_model.json)
    _MODELS[preset] = model
    return model


@pytest.fixture(scope="module", params=list(SETTINGS["presets"]))
def sampled(request):
    model = load(request.param)
    return request.param, model, model.sample_latents(SETTINGS["prompts"], SETTINGS["seeds"])


def test_golden_data_vary(ref):
    assert set(SETTINGS["presets"]) == set(SAMPLER_PRESETS) == set(BUILT_PRESETS)
    for preset in SETTINGS["presets"]:
        lat = ref[f"latents_{preset}"]
        assert (lat[0] - lat[1]).abs().max() > 0.1  # same seed, other prompt
        assert (lat[0] - lat[2]).abs().max() > 0.1  # same prompt, other seed
        assert ref[f"frames_{preset}"].std() > 0.01
    assert (ref["latents_diffusers"] - ref["latents_animatediff_official"]).abs().max() > 0.1
    assert not torch.equal(ref["prompt_embeds"][0], ref["negative_embeds"][0])


def test_golden_prompt_encoding_and_noise(ref):
    model = load("diffusers")
    s = SETTINGS
    ids = model.tokenizer(s["prompts"] + [s["negative_prompt"]], padding="max_length", truncation=True,
                          max_length=model.tokenizer.model_max_length, return_tensors="pt").input_ids
    assert torch.equal(ids, ref["input_ids"])
    torch.testing.assert_close(model.encode_prompts(s["prompts"]), ref["prompt_embeds"], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.negative_text(len(s["prompts"])), ref["negative_embeds"], atol=ATOL, rtol=0)
    assert torch.equal(model.initial_noise(s["seeds"]), ref["noise"])  # our per-seed noise = one generator per sample


@pytest.mark.parametrize("preset", list(SETTINGS["presets"]))
@pytest.mark.parametrize("steps", [SETTINGS["steps"], 25])
def test_golden_timesteps(ref, preset, steps):
    sched = ddim_scheduler(preset)
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == ref[f"timesteps{steps}_{preset}"].tolist()


def test_golden_latents_and_frames(ref, sampled):
    preset, model, got = sampled
    want = ref[f"latents_{preset}"]
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    torch.testing.assert_close(model.decode(got), ref[f"frames_{preset}"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("steps", [SETTINGS["steps"], 25])
def test_golden_official_preset_is_the_official_scripts_ddim(steps):
    """animatediff_official against diffusers 0.11.1's own DDIMScheduler, built as guoyww/AnimateDiff's
    scripts/animate.py builds it (official_ddim/, from the 0.11.1 venv), on a fixed chain of model outputs."""
    want = load_file(GOLDEN / "official_ddim" / "ddim.safetensors")
    sched = ddim_scheduler("animatediff_official")
    sched.set_timesteps(steps)
    assert sched.timesteps.tolist() == want[f"timesteps{steps}"].tolist()
    x = want[f"samples{steps}"][0]
    assert torch.equal(x, torch.randn(x.shape, generator=torch.Generator().manual_seed(0)))
    samples = [x]
    for k, t in enumerate(sched.timesteps):  # the script's ddim_chain
        eps = torch.sin(x * (1 + 0.1 * k)) + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(k + 1))
        x = sched.step(eps, t, x).prev_sample
        samples.append(x)
    torch.testing.assert_close(torch.stack(samples), want[f"samples{steps}"], atol=ATOL, rtol=0)
    assert (want[f"samples{steps}"][-1] - want[f"samples{steps}"][0]).abs().max() > 0.1
