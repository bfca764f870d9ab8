"""AnimateDiff-Lightning sampling against its model card's diffusers usage (scripts/goldens/animatediff_lightning.py
ran it on these tiny weights, in its own environment): the bare MotionAdapter file and the SD1.5 directory
loaded through our registry as a user would, the same prompts, seeds and the file's 2 steps, no guidance."""
import copy
from pathlib import Path

import pytest
import torch

from vip.models.registry import load_video_model

from helpers.goldens import outputs, sampling_config, settings

GOLDEN = Path(__file__).parent / "animatediff_lightning"
SETTINGS = settings(GOLDEN)
ATOL = 1e-4


@pytest.fixture(scope="module")
def ref():
    return outputs(GOLDEN)


@pytest.fixture(scope="module")
def model():
    s = SETTINGS
    cfg = sampling_config(s, backbone="animatediff_lightning", path=str(GOLDEN / "sd15"),
                          adapter=str(GOLDEN / s["adapter"]))
    return load_video_model(cfg, cfg.path)


def test_golden_data_vary(ref):
    lat = ref["latents_lightning"]
    assert (lat[0] - lat[1]).abs().max() > 0.1  # same seed, other prompt
    assert (lat[0] - lat[2]).abs().max() > 0.1  # same prompt, other seed
    assert ref["frames_lightning"].std() > 0.01
    assert ref["sigmas"][0] > 1  # Euler: scale_model_input and init_noise_sigma matter


def test_golden_adapter_config_read_off_the_file(model):
    want = SETTINGS["adapter_config"]
    cfg = model.unet.config
    assert list(cfg.block_out_channels) == want["block_out_channels"]
    assert cfg.motion_max_seq_length == want["motion_max_seq_length"]
    assert cfg.motion_num_attention_heads == want["motion_num_attention_heads"]  # not in the shapes: our default 8
    # (the joined U-Net's motion modules take the U-Net's norm_num_groups, so the adapter's 32 never enters)


def test_golden_schedule(model, ref):
    sched = copy.deepcopy(model.scheduler)
    sched.set_timesteps(SETTINGS["steps"])
    assert sched.timesteps.tolist() == ref["timesteps"].tolist()
    torch.testing.assert_close(sched.sigmas, ref["sigmas"], atol=1e-6, rtol=0)
    assert torch.equal(model.initial_noise(SETTINGS["seeds"]), ref["noise"])


def test_golden_latents_and_frames(model, ref):
    got = model.sample_latents(SETTINGS["prompts"], SETTINGS["seeds"])
    torch.testing.assert_close(got, ref["latents_lightning"], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.decode(got), ref["frames_lightning"], atol=ATOL, rtol=0)
