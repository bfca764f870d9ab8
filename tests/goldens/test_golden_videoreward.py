"""vip.rewards.videoreward against the published VideoReward inference: KwaiVGI/VideoAlign inference.py
(VideoVLMRewardInference, trainer.py Qwen2VLRewardModelBT, vision_process.py, prompt_template.py) run under
transformers 4.45.2 by scripts/goldens/videoreward.py on a tiny random checkpoint in the published layout
(checkpoint-*/model.pth with the PEFT wrapper's keys, output_dim 3) and five lossless .mp4 clips. Here the
same directory is loaded through load_reward and the same uint8 frames are scored, as a user would."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vip.config import RewardConfig
from vip.rewards.registry import load_reward
from vip.rewards.videoreward import reward_positions

GOLDEN = Path(__file__).parent / "videoreward"
CKPT = GOLDEN / "VideoReward"
CASES = json.loads((GOLDEN / "cases.json").read_text())
SOURCE = json.loads((GOLDEN / "SOURCE.json").read_text())
# Our batches: clips of one shape and frame rate share a call (a, b: padding to the longer prompt).
GROUPS = [("a", "b"), ("c",), ("d",), ("e",)]
HEADS = ("VQ", "MQ", "TA")  # the published order of inference.py's reward dict, rm_head outputs 0, 1, 2
ATOL = 1e-4


def clip(clips, name) -> torch.Tensor:
    """The decoder's uint8 rgb24 frames [F, H, W, 3] as our float clip [F, 3, H, W] (round(255 x) gives
    the same bytes back)."""
    c = clips[name].numpy()
    if CASES[name]["stored_repeat"] > 1:
        r = CASES[name]["stored_repeat"]
        c = np.repeat(np.repeat(c, r, 1), r, 2)
    assert hashlib.sha256(np.ascontiguousarray(c).tobytes()).hexdigest() == SOURCE["clip_sha256"][name]
    return torch.from_numpy(c).permute(0, 3, 1, 2).float() / 255.0


@pytest.fixture(scope="module")
def golden():
    return load_file(GOLDEN / "outputs.safetensors"), load_file(GOLDEN / "clips.safetensors")


def reward_for(fps):
    return load_reward(RewardConfig(name="videoreward", path=str(CKPT), fps=fps, dtype="float32", batch_size=4))


@pytest.fixture(scope="module")
def ours(golden):
    """Per case: what our net was given (input ids, grid), the positions that reached the language model's
    rotary embedding, the hidden states at the reward tokens, raw and normalised scores."""
    _, clips = golden
    rewards = {fps: reward_for(fps) for fps in sorted({CASES[n]["fps"] for n in CASES})}
    out = {}
    for group in GROUPS:
        reward = rewards[CASES[group[0]]["fps"]]
        net, seen = reward.net, {}
        forward = net.forward

        def spy(input_ids, attention_mask, pix, thw, token_ids):
            seen.update(input_ids=input_ids, attention_mask=attention_mask, thw=thw)
            seen["raw"] = forward(input_ids, attention_mask, pix, thw, token_ids)  # what reward.raw returns
            return seen["raw"]

        def grab_pos(_m, a, kw):
            seen["position_ids"] = (a[1] if len(a) > 1 else kw["position_ids"]).clone()

        def grab_hidden(_m, _a, _kw, output):
            seen["hidden"] = output.last_hidden_state.clone()

        net.forward = spy
        hooks = [net.model.language_model.rotary_emb.register_forward_pre_hook(grab_pos, with_kwargs=True),
                 net.model.register_forward_hook(grab_hidden, with_kwargs=True)]
        try:
            v = torch.stack([clip(clips, n) for n in group])
            prompts = [CASES[n]["prompt"] for n in group]
            scores = reward.score(v, prompts)  # one forward; raw (before normalisation) seen by the spy
        finally:
            for h in hooks:
                h.remove()
            del net.forward
        tok = reward_positions(seen["input_ids"], reward.token_ids)
        h = seen["hidden"].gather(1, tok[..., None].expand(-1, -1, seen["hidden"].shape[-1]))
        full = net.rm_head(h).detach()  # [B, 3 reward tokens, 3 outputs]
        for j, n in enumerate(group):
            out[n] = {"input_ids": seen["input_ids"][j], "mask": seen["attention_mask"][j], "thw": seen["thw"][j],
                      "position_ids": seen["position_ids"][:, j], "raw": seen["raw"][j].float(), "full_head": full[j],
                      "scores": {k: s[j] for k, s in scores.items()},
                      "frames": len(reward.frame_indices(CASES[n]["frames"]))}
    return out


def want(out, name, key):
    return out[f"{name}.{key}"]


def test_golden_data_vary(golden):
    out, _ = golden
    raw = torch.stack([want(out, n, "raw") for n in CASES])  # [clips, 3]
    assert (raw.max(0).values - raw.min(0).values > 0.05).all(), raw  # each head differs across clips
    assert ((raw[:, :, None] - raw[:, None, :]).abs() + torch.eye(3) > 0.05).all(), raw  # heads differ per clip
    frames = {n: int(want(out, n, "frames")) for n in CASES}
    assert frames == {"a": 4, "b": 4, "c": 4, "d": 12, "e": 4}  # the 2-fps rule at work (c: round(2.5) = 2)
    assert len({tuple(want(out, n, "grid_thw").tolist()) for n in CASES}) == 4


def test_frames_and_grid_match(golden, ours):
    out, _ = golden
    for n in CASES:
        assert ours[n]["frames"] == int(want(out, n, "frames")), n
        assert ours[n]["thw"].tolist() == want(out, n, "grid_thw").tolist(), n


def test_token_ids_match_exactly(golden, ours):
    out, _ = golden
    for n in CASES:
        ref = want(out, n, "input_ids").long()
        mine, mask = ours[n]["input_ids"], ours[n]["mask"]
        assert int(mask.sum()) == len(ref) and bool(mask[:len(ref)].all()), n  # right padding, as published
        assert torch.equal(mine[:len(ref)], ref), n


def test_position_ids_are_the_published_sequential_ones(golden, ours):
    """Qwen2VLRewardModelBT runs its language model with position_ids=None: 0..L-1 on all three M-RoPE
    axes, video tokens included (no 3-D positions)."""
    out, _ = golden
    for n in CASES:
        ref = want(out, n, "position_ids").long()
        assert torch.equal(ref, torch.arange(ref.shape[1]).expand(3, -1)), n  # what the reference gave
        assert torch.equal(ours[n]["position_ids"][:, :ref.shape[1]], ref), n


def test_rewards_match(golden, ours):
    out, _ = golden
    for n in CASES:
        ref = want(out, n, "raw").float()
        assert torch.allclose(ours[n]["raw"], ref, atol=ATOL, rtol=0), (n, ours[n]["raw"], ref)
        normed = want(out, n, "normalised").float()
        s = ours[n]["scores"]
        assert torch.allclose(s["visual_quality"], normed[0], atol=ATOL, rtol=0), n
        assert torch.allclose(s["text_alignment"], normed[2], atol=ATOL, rtol=0), n
        for a in ("motion_quality", "temporal_consistency", "dynamic_degree"):
            assert torch.allclose(s[a], normed[1], atol=ATOL, rtol=0), (n, a)


def test_three_output_head_takes_the_diagonal(golden, ours):
    """The published mapping (trainer.py: logits at the special tokens viewed [B, 3, N], then
    .diagonal for output_dim 3): VQ is output 0 at <|VQ_reward|>, MQ output 1 at <|MQ_reward|>, TA output 2
    at <|TA_reward|>. Every other (token, output) pair is far from the golden value, so a head that reads
    another column (s[..., 0]) or another token fails here."""
    out, _ = golden
    for n in CASES:
        ref, full = want(out, n, "raw").float(), ours[n]["full_head"]
        for k, head in enumerate(HEADS):
            assert abs(float(full[k, k]) - float(ref[k])) < ATOL, (n, head)
            others = [float(full[i, j]) for i in range(3) for j in range(3) if (i, j) != (k, k)]
            assert min(abs(o - float(ref[k])) for o in others) > 1e-3, (n, head, full)
            assert abs(float(ours[n]["raw"][k]) - float(ref[k])) < ATOL, (n, head, "reward.raw")
