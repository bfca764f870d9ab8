"""VideoReward on a tiny random Qwen2-VL in the published layout: model_config.json,
checkpoint-<step>/model.pth holding the PEFT-wrapped LoRA fine-tune (transformers 4.45 names),
and the base model's config, preprocessor and tokenizer files; loaded through load_reward."""
from __future__ import annotations

import json

import pytest
import torch

from vip.config import ConfigError, RewardConfig
from vip.rewards.base import ASPECTS, total
from vip.rewards.registry import load_reward
from vip.rewards.videoreward import DETAILED_PROMPT_WITH_SPECIAL_TOKEN, patchify, published_frame_count, smart_resize

from helpers.tiny_rewards import VIDEOREWARD_NORM as NORM, copy_checkpoint, videoreward_net


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("vr") / "VideoReward"
    return path, videoreward_net(path)


@pytest.fixture(scope="module")
def reward(ckpt):
    return load_reward(RewardConfig(name="videoreward", path=str(ckpt[0]), batch_size=4))


def clips(n=3, frames=16, seed=0, size=(32, 32)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, frames, 3, *size, generator=g)


PROMPTS = ["a red circle moves left", "a blue square", "a green triangle bounces on a white background"]


def test_loads_and_merges_the_published_lora(ckpt, reward):
    _, net = ckpt  # net holds W0 + alpha/r B A by construction of the published file
    mine = reward.net.state_dict()
    assert set(mine) == set(net.state_dict())
    for k, v in net.state_dict().items():
        assert torch.allclose(mine[k], v, atol=1e-6), k


def test_frame_count_follows_the_published_fps_rule():
    # total / 8 fps * 2 fps, clamped to [4, total rounded down to even], rounded to even (by hand)
    assert published_frame_count(16, 8.0, 2.0) == 4
    assert published_frame_count(48, 8.0, 2.0) == 12
    assert published_frame_count(8, 8.0, 2.0) == 4  # at least 4
    assert published_frame_count(3, 8.0, 2.0) == 2  # short clip: even count no larger than the clip
    assert published_frame_count(81, 16.0, 2.0) == 10


def test_frames_sampled_to_the_count_in_order(reward, ckpt):
    assert reward.frame_indices(16) == [0, 5, 10, 15]  # linspace(0, 15, 4) rounded
    fixed = load_reward(RewardConfig(name="videoreward", path=str(ckpt[0]), frames=6))
    assert fixed.frame_indices(16) == [0, 3, 6, 9, 12, 15]


def test_resize_follows_smart_resize():
    assert smart_resize(32, 32, 128 * 28 * 28, 200704) == (336, 336)  # up to the minimum area
    assert smart_resize(320, 512, 128 * 28 * 28, 200704) == (308, 504)  # nearest multiples of 28
    assert smart_resize(512, 512, 128 * 28 * 28, 200704) == (448, 448)  # down to the maximum area


def test_patchify_layout():
    T, C, H, W, p, m = 3, 3, 56, 84, 14, 2  # odd T: the last frame is repeated
    x = torch.randn(T, C, H, W)
    patches, (t, h, w) = patchify(x, p, 2, m)
    assert (t, h, w) == (2, 4, 6) and patches.shape == (t * h * w, C * 2 * p * p)
    xx = torch.cat([x, x[-1:]])
    rows = []  # the reference order: time, merged block row/col, position inside the 2x2 block
    for ti in range(t):
        for bi in range(h // m):
            for bj in range(w // m):
                for i in range(m):
                    for j in range(m):
                        r, c = (bi * m + i) * p, (bj * m + j) * p
                        rows.append(xx[2 * ti:2 * ti + 2, :, r:r + p, c:c + p].permute(1, 0, 2, 3).reshape(-1))
    assert torch.equal(patches, torch.stack(rows))


def capture(reward, monkeypatch):
    seen = {}
    forward = reward.net.forward

    def spy(input_ids, attention_mask, pix, thw, token_ids):
        seen.update(input_ids=input_ids, attention_mask=attention_mask, thw=thw)
        return forward(input_ids, attention_mask, pix, thw, token_ids)

    monkeypatch.setattr(reward.net, "forward", spy)
    return seen


def test_query_holds_the_template_the_prompt_and_the_video(reward, monkeypatch):
    seen = capture(reward, monkeypatch)
    reward.score(clips(1), ["a red circle"])
    text = reward.tokenizer.decode(seen["input_ids"][0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|>")
    assert DETAILED_PROMPT_WITH_SPECIAL_TOKEN.format(text_prompt="a red circle") in text
    assert "Textual prompt - a red circle\nPlease provide the ratings of Text Alignment: <|TA_reward|>" in text
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    # 4 frames of 32x32 -> 336x336: grid (2, 24, 24), 2x2 merged = 288 video tokens
    assert seen["thw"].tolist() == [[2, 24, 24]] and text.count("<|video_pad|>") == 288


def test_head_reads_the_reward_tokens(reward, monkeypatch):
    seen = capture(reward, monkeypatch)
    v = clips(1)
    base = reward.raw(v, PROMPTS[:1])
    ids, mask = seen["input_ids"], seen["attention_mask"]
    pix, grid = reward.pixels(v[:, reward.frame_indices(16)].mul(255).round().to(torch.uint8))
    net, tids, thw = reward.net, reward.token_ids, torch.tensor([grid])
    forward_raw = net(ids, mask, pix, thw, tids)
    assert torch.allclose(forward_raw, base, atol=1e-5)
    pos = [int((ids[0] == t).nonzero()) for t in tids]
    assert pos == sorted(pos)  # VQ, MQ, TA in the template's order
    # a token after the TA token cannot change any score; one before the VQ token changes all three
    after, before = ids.clone(), ids.clone()
    after[0, pos[2] + 3] = 65
    before[0, pos[0] - 3] = 66 if int(ids[0, pos[0] - 3]) != 66 else 67
    assert torch.allclose(net(after, mask, pix, thw, tids), forward_raw, atol=1e-5)
    changed = net(before, mask, pix, thw, tids)
    assert (changed - forward_raw).abs().min() > 1e-5
    # a token between MQ and TA changes TA only
    mid = ids.clone()
    mid[0, pos[1] + 3] = 66 if int(ids[0, pos[1] + 3]) != 66 else 67
    d = (net(mid, mask, pix, thw, tids) - forward_raw).abs()[0]
    assert d[0] < 1e-5 and d[1] < 1e-5 and d[2] > 1e-5


def test_language_model_gets_the_published_sequential_positions(reward, monkeypatch):
    """The published Qwen2VLRewardModelBT (VideoAlign trainer.py) calls its language model with
    position_ids=None, and transformers 4.45 then uses 0..L-1 on all three M-RoPE axes: no 3-D positions
    for the video tokens, so the first text token after the video sits at its own index."""
    seen = capture(reward, monkeypatch)
    got = {}

    def grab(_module, args, kwargs):
        got["position_ids"] = (args[1] if len(args) > 1 else kwargs["position_ids"]).clone()

    hook = reward.net.model.language_model.rotary_emb.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        reward.raw(clips(2), PROMPTS[:2])
    finally:
        hook.remove()
    ids, pos = seen["input_ids"], got["position_ids"]
    B, L = ids.shape
    assert pos.shape == (3, B, L)
    assert torch.equal(pos, torch.arange(L).expand(3, B, L))
    end = int((ids[0] == reward.tokenizer.convert_tokens_to_ids("<|vision_end|>")).nonzero()[0])
    assert int(pos[0, 0, end + 1]) == end + 1 > 288  # after 288 video tokens, not max(t, h, w) + 1


def test_three_output_head_takes_the_diagonal(tmp_path):
    videoreward_net(tmp_path / "VR3", output_dim=3, seed=1)
    r = load_reward(RewardConfig(name="videoreward", path=str(tmp_path / "VR3")))
    h = torch.randn(1, 3, r.net.rm_head.in_features)
    s = r.net.rm_head(h)
    assert torch.equal(s.diagonal(dim1=1, dim2=2)[0], torch.stack([s[0, 0, 0], s[0, 1, 1], s[0, 2, 2]]))
    assert r.score(clips(1), PROMPTS[:1])["visual_quality"].shape == (1,)


def test_scores_are_the_published_normalisation_and_mapping(reward):
    v = clips(2)
    raw = reward.raw(v, PROMPTS[:2])
    s = reward.score(v, PROMPTS[:2])
    vq = (raw[:, 0] - NORM["VQ_mean"]) / NORM["VQ_std"]
    mq = (raw[:, 1] - NORM["MQ_mean"]) / NORM["MQ_std"]
    ta = (raw[:, 2] - NORM["TA_mean"]) / NORM["TA_std"]
    assert torch.allclose(s["visual_quality"], vq) and torch.allclose(s["text_alignment"], ta)
    for a in ("temporal_consistency", "dynamic_degree", "motion_quality"):
        assert torch.allclose(s[a], mq), a


def test_batch_equals_one_at_a_time(ckpt):
    v = clips(3)
    batched = load_reward(RewardConfig(name="videoreward", path=str(ckpt[0]), batch_size=3)).score(v, PROMPTS)
    single = load_reward(RewardConfig(name="videoreward", path=str(ckpt[0]), batch_size=1)).score(v, PROMPTS)
    for a in batched:
        assert torch.allclose(batched[a], single[a], atol=1e-4), a
    assert not torch.allclose(batched["visual_quality"][:1], batched["visual_quality"][1:2])


def test_output_keys_and_shapes(reward):
    s = reward.score(clips(2, frames=8, size=(24, 40)), PROMPTS[:2])
    assert set(s) == set(ASPECTS) | {"motion_quality"}
    for a in s:
        assert s[a].shape == (2,) and s[a].dtype == torch.float32 and torch.isfinite(s[a]).all()
    assert total(s).shape == (2,)


def test_too_few_frames_is_a_config_error(ckpt, reward):
    fixed = load_reward(RewardConfig(name="videoreward", path=str(ckpt[0]), frames=6))
    with pytest.raises(ConfigError, match="frames fewer than the reward model needs"):
        fixed.score(clips(1, frames=4), PROMPTS[:1])
    with pytest.raises(ConfigError, match="frames fewer than the reward model needs"):
        reward.score(clips(1, frames=1), PROMPTS[:1])


@pytest.mark.parametrize("remove,named", [
    ("model_config.json", "model_config.json"),
    ("checkpoint-11352/model.pth", "model.pth"),
    ("Qwen2-VL-2B-Instruct/preprocessor_config.json", "preprocessor_config.json"),
    ("Qwen2-VL-2B-Instruct/tokenizer.json", "tokenizer.json"),
    ("Qwen2-VL-2B-Instruct", "Qwen2-VL-2B-Instruct"),
])
def test_missing_file_is_named(ckpt, tmp_path, remove, named):
    d = copy_checkpoint(ckpt[0], tmp_path / "VideoReward", remove)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_reward(RewardConfig(name="videoreward", path=str(d)))


def test_config_that_does_not_match_is_named(ckpt, tmp_path):
    d = copy_checkpoint(ckpt[0], tmp_path / "VideoReward")
    mc = json.loads((d / "model_config.json").read_text())
    mc["data_config"]["prompt_template_type"] = "simple"
    (d / "model_config.json").write_text(json.dumps(mc))
    with pytest.raises(ConfigError, match="prompt_template_type"):
        load_reward(RewardConfig(name="videoreward", path=str(d)))
    d2 = copy_checkpoint(ckpt[0], tmp_path / "2" / "VideoReward")
    cfg = json.loads((d2 / "Qwen2-VL-2B-Instruct" / "config.json").read_text())
    cfg["text_config"]["intermediate_size"] = 48  # the weights have 64
    (d2 / "Qwen2-VL-2B-Instruct" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match=r"model\.language_model\.layers\.0\.mlp\.gate_proj\.weight.*\[64, 32\]"):
        load_reward(RewardConfig(name="videoreward", path=str(d2)))
    cfg["text_config"]["num_hidden_layers"] = 3  # contradicts its own layer_types: named, not a traceback
    (d2 / "Qwen2-VL-2B-Instruct" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="config.json"):
        load_reward(RewardConfig(name="videoreward", path=str(d2)))
