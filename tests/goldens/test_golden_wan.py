"""Wan2.1 T2V sampling against diffusers' WanPipeline (scripts/goldens/wan.py ran it on these tiny weights, in its
own environment): the published Diffusers directory loaded through our registry as a user would, the same
prompts (one with an HTML entity and extra spaces), negative prompt, seeds, steps and guidance."""
import copy
from pathlib import Path

import pytest
import torch

from vip.models.registry import load_video_model
from vip.models.wan import clean_prompt

from helpers.goldens import outputs, sampling_config, settings

GOLDEN = Path(__file__).parent / "wan"
SETTINGS = settings(GOLDEN)
ATOL = 1e-4


@pytest.fixture(scope="module")
def ref():
    return outputs(GOLDEN)


@pytest.fixture(scope="module")
def model():
    s = SETTINGS
    path = GOLDEN / s["model"]
    cfg = sampling_config(s, backbone="wan2.1", path=str(path))
    m = load_video_model(cfg, path)
    assert m.meta["max_sequence_length"] == s["max_sequence_length"]  # our default is the pipeline's 512
    m.meta["negative_prompt"] = s["negative_prompt"]  # a user's negative prompt (vip_model.json)
    return m


def test_golden_data_vary(ref):
    lat = ref["latents"]
    assert (lat[0] - lat[1]).abs().max() > 0.1  # same seed, other prompt
    assert (lat[0] - lat[2]).abs().max() > 0.1  # same prompt, other seed
    assert ref["frames"].std() > 0.01
    assert not torch.equal(ref["prompt_embeds"][0], ref["negative_embeds"][0])


def test_golden_prompt_encoding_and_noise(model, ref):
    s = SETTINGS
    n = len(s["prompts"])
    tok = model.tokenizer([clean_prompt(p) for p in s["prompts"] + [s["negative_prompt"]]], padding="max_length",
                          truncation=True, max_length=s["max_sequence_length"], add_special_tokens=True,
                          return_attention_mask=True, return_tensors="pt")
    assert torch.equal(tok.input_ids, ref["input_ids"]) and torch.equal(tok.attention_mask, ref["attention_mask"])
    torch.testing.assert_close(model.encode_prompts(s["prompts"]), ref["prompt_embeds"], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.negative_text(n), ref["negative_embeds"], atol=ATOL, rtol=0)
    assert torch.equal(model.initial_noise(s["seeds"]), ref["noise"])
    sched = copy.deepcopy(model.scheduler)
    sched.set_timesteps(s["steps"])
    assert sched.timesteps.tolist() == ref["timesteps"].tolist()


def test_golden_latents_and_frames(model, ref):
    got = model.sample_latents(SETTINGS["prompts"], SETTINGS["seeds"])
    torch.testing.assert_close(got, ref["latents"], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.decode(got), ref["frames"], atol=ATOL, rtol=0)
