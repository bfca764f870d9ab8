import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vip.models.codec import SpaceToDepth
from vip.models.toyvid import build_scheduler
from vip.toyvid import world
from vip.toyvid.text import build_tokenizer

PROMPTS = world.all_prompts()
prompt_st = st.sampled_from(PROMPTS)
seed_st = st.integers(0, 2**31 - 1)


def test_grammar_size_and_parse_round_trip():
    assert len(PROMPTS) == 6 * 3 * 6 * 3 == len({p.text for p in PROMPTS})
    assert all(world.parse(p.text) == p for p in PROMPTS)
    assert world.parse("  A Red circle   moving left on a black background ").colour == "red"
    with pytest.raises(ValueError, match="purple"):
        world.parse("a purple circle moving left on a black background")


def _centroid(frame, p):
    """Centre of the object's coverage, recovered exactly from the blend of object and background."""
    fg = torch.tensor(world.COLOURS[p.colour])[:, None, None]
    bg = torch.tensor(world.BACKGROUNDS[p.background])[:, None, None]
    alpha = ((frame - bg) * (fg - bg)).sum(0) / ((fg - bg) ** 2).sum()
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    return (alpha * xs).sum().item() / alpha.sum().item(), (alpha * ys).sum().item() / alpha.sum().item()


@settings(max_examples=40, deadline=None)
@given(prompt_st, seed_st)
def test_rendered_object_moves_as_the_prompt_says(p, seed):
    clip = world.render(p, seed)
    assert clip.shape == (world.FRAMES, 3, world.SIZE, world.SIZE) and 0 <= clip.min() and clip.max() <= 1
    xy = np.array([_centroid(f, p) for f in clip])
    step = np.diff(xy, axis=0)
    expect = {"left": (-world.SPEED, 0), "right": (world.SPEED, 0), "up": (0, -world.SPEED), "down": (0, world.SPEED)}
    if p.motion in expect:
        np.testing.assert_allclose(step, np.tile(expect[p.motion], (world.FRAMES - 1, 1)), atol=0.05)
    elif p.motion == "still":
        assert np.abs(step).max() < 1e-4
    else:  # bounce: vertical only, back near the start after a period
        assert np.abs(step[:, 0]).max() < 0.05 and np.abs(step[:, 1]).max() > 2
    # the background is the prompt's, in the corners
    bg = torch.tensor(world.BACKGROUNDS[p.background])
    assert any(torch.allclose(clip[0, :, y, x], bg, atol=1e-6) for y, x in ((0, 0), (0, 31), (31, 0), (31, 31)))


def test_same_seed_same_clip_other_seed_other_position():
    p = PROMPTS[40]
    assert torch.equal(world.render(p, 5), world.render(p, 5))
    assert not torch.equal(world.render(p, 5), world.render(p, 6))


def test_tokenizer_makes_each_word_one_token_and_fits():
    tok = build_tokenizer()
    for w in world.vocabulary():
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    for p in PROMPTS:
        ids = tok(p.text).input_ids
        assert len(ids) <= tok.model_max_length
        assert tok.decode(ids, skip_special_tokens=True) == p.text


@given(prompt_st, seed_st)
@settings(max_examples=10, deadline=None)
def test_space_to_depth_is_lossless(p, seed):
    clip = world.render(p, seed)[None]
    codec = SpaceToDepth(2)
    lat = codec.encode(clip)
    assert lat.shape == (1, 12, world.FRAMES, 16, 16)
    assert torch.allclose(codec.decode(lat), clip, atol=1e-6)


def test_sampler_recovers_a_clip_from_an_oracle_denoiser():
    """The schedule and DDIM sampler are exact when the denoiser is: v from the true clip."""
    sched, codec = build_scheduler(), SpaceToDepth(2)
    clip = world.render(PROMPTS[50], 3)[None]
    x0 = codec.encode(clip)
    sched.set_timesteps(10)
    x = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    for t in sched.timesteps:
        a = sched.alphas_cumprod[t]
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        x = sched.step(a.sqrt() * eps - (1 - a).sqrt() * x0, t, x).prev_sample
    assert (codec.decode(x) - clip).abs().max() < 1e-4
    assert sched.timesteps[0] == 999  # trailing spacing starts from pure noise
