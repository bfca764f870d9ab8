"""vip.rewards.videoscore against the published VideoScore inference: TIGER-AI-Lab/VideoScore
examples/run_videoscore.py executed as published (scripts/goldens/videoscore.py, mantis-vl 0.0.5 under
transformers 4.45.2) on a tiny random checkpoint in the published layout, for v1 (16 frames) and v1.1
(48 frames). Here the same directory is loaded through load_reward as a user would."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vip.config import RewardConfig
from vip.rewards.frames import stride_indices
from vip.rewards.registry import load_reward
from vip.rewards.videoscore import OUTPUTS

GOLDEN = Path(__file__).parent / "videoscore"
VERSIONS = {"v1": 16, "v11": 48}
PROMPTS = json.loads((GOLDEN / "prompts.json").read_text())
# The published head order (run_videoscore.py's closing note: "model output on visual quality, temporal
# consistency, dynamic degree, text-to-video alignment, factual consistency, respectively"; the query's
# (1)-(5)), written out here independently of OUTPUTS so that a shifted mapping fails.
PUBLISHED_HEAD = {"visual_quality": 0, "temporal_consistency": 1, "dynamic_degree": 2, "text_alignment": 3,
                  "factual_consistency": 4}
ATOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    return load_file(GOLDEN / "outputs.safetensors"), load_file(GOLDEN / "clips.safetensors")


def videos(clips, v):
    """The decoder's uint8 rgb24 frames [B, F, H, W, 3] as our float clips [B, F, 3, H, W] (round(255 x)
    gives the same bytes back)."""
    return clips[v].permute(0, 1, 4, 2, 3).float() / 255.0


def want_logits(out, v):
    return torch.stack([out[f"{v}.{i}.logits"] for i in range(len(PROMPTS))])  # [clips, 5 heads]


@pytest.fixture(scope="module", params=list(VERSIONS))
def case(request, golden):
    v = request.param
    reward = load_reward(RewardConfig(name="videoscore", path=str(GOLDEN / "ckpt"), frames=VERSIONS[v], batch_size=3))
    return v, reward, videos(golden[1], v)


def test_golden_data_vary(golden):
    out, clips = golden
    for v in VERSIONS:
        logits = want_logits(out, v)
        assert (logits.max(0).values - logits.min(0).values > 1e-2).all(), (v, logits)  # across clips, per head
        assert (logits.max(1).values - logits.min(1).values > 0.5).all(), (v, logits)   # across heads, per clip
        ids = [out[f"{v}.{i}.input_ids"] for i in range(len(PROMPTS))]
        assert len({len(x) for x in ids}) == len(PROMPTS)  # the prompts differ in length: batching pads
        assert not torch.equal(clips[v][0], clips[v][1]) and not torch.equal(clips[v][1], clips[v][2])


def test_frame_sampling_matches(golden):
    out, clips = golden
    for v, n in VERSIONS.items():
        total = clips[v].shape[1]
        assert total > n  # the script's stride sampling ran (not "use every frame")
        for i in range(len(PROMPTS)):
            assert stride_indices(total, n) == out[f"{v}.{i}.indices"].tolist()


def test_input_ids_exact(case, golden):
    v, reward, vids = case
    out = golden[0]
    frames = reward.sample(vids)
    for i, prompt in enumerate(PROMPTS):  # one clip at a time, as the published script runs
        enc = reward.encode(frames[i:i + 1], [prompt])
        assert enc["input_ids"][0].tolist() == out[f"{v}.{i}.input_ids"].tolist(), (v, i)
        assert enc["attention_mask"][0].tolist() == out[f"{v}.{i}.attention_mask"].tolist()
    # batched: each row is the published sequence, then right padding
    enc = reward.encode(frames, PROMPTS)
    for i in range(len(PROMPTS)):
        want = out[f"{v}.{i}.input_ids"]
        n = len(want)
        assert enc["input_ids"][i, :n].tolist() == want.tolist()
        assert enc["attention_mask"][i].tolist() == [1] * n + [0] * (enc["input_ids"].shape[1] - n)


def test_pixel_values(golden):
    out, clips = golden
    reward = load_reward(RewardConfig(name="videoscore", path=str(GOLDEN / "ckpt"), frames=16))
    vids = videos(clips, "v1")
    enc = reward.encode(reward.sample(vids[:1]), PROMPTS[:1])
    want = out["v1.0.pixel_values"]
    assert enc["pixel_values"][0].shape == want.shape
    assert torch.allclose(enc["pixel_values"][0], want, atol=1e-6)
    assert enc["pixel_attention_mask"].all()


@pytest.mark.parametrize("batch_size", [3, 1])
def test_logits(case, golden, batch_size):
    v, reward, vids = case
    reward.batch_size = batch_size
    try:
        s = reward.score(vids, PROMPTS)
    finally:
        reward.batch_size = 3
    got = torch.stack([s[a] for a in OUTPUTS], 1)
    want = want_logits(golden[0], v)
    assert (got - want).abs().max().item() < ATOL, (got - want).abs().max().item()


def test_each_aspect_is_its_published_head(case, golden):
    v, reward, vids = case
    s = reward.score(vids, PROMPTS)
    want = want_logits(golden[0], v)
    assert set(s) == set(PUBLISHED_HEAD)
    for aspect, head in PUBLISHED_HEAD.items():
        diffs = {h: (s[aspect] - want[:, h]).abs().max().item() for h in range(want.shape[1])}
        assert diffs[head] < ATOL, f"{aspect} is not head {head}: max abs diff to each head {diffs}"
        assert all(d > 100 * ATOL for h, d in diffs.items() if h != head), (aspect, diffs)
