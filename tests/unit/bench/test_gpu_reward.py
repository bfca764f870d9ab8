"""The reward benchmark (vip/bench/gpu_reward.py, `python -m vip.bench gpu-reward`) on the CPU at tiny
widths: the published configs have the published parameter counts (meta device), the benchmark path
runs for each reward, and leave-one-out with scoring overlapped on a worker thread gives exactly the
serial scores."""
import threading

import numpy as np
import pytest
import torch

from vip.bench import gpu as gpu_bench, gpu_reward, reward_configs
from vip.rewards.base import ASPECTS
from vip.steps.loo.engine import FULL, FastLoo, FastLooOptions

SHAPE = gpu_bench.Shape(frames=2, height=64, width=64, steps=2, guidance=7.5, scale=8)
PROMPTS = gpu_bench.PROMPTS[:2]
SEEDS = [11, 12]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: more threads only fight the other processes on this machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def built():
    return gpu_bench.build(SHAPE, "cpu")


def test_published_configs_have_the_published_parameter_counts():
    # HuggingFace's figures (safetensors parameter counts): HuggingFaceM4/idefics2-8b 8,402,768,112 (8.4B);
    # Qwen/Qwen2-VL-2B-Instruct 2,208,985,600 (2.21B, tied embeddings counted once)
    counts = reward_configs.param_counts()
    assert counts["idefics2-8b"] == reward_configs.IDEFICS2_8B_PARAMS == 8_402_768_112
    assert counts["qwen2-vl-2b-instruct"] == reward_configs.QWEN2_VL_2B_PARAMS == 2_208_985_600
    # the reward networks: no lm_head (32003 x 4096), a 5-output head; the embedding resized to 151660 rows
    assert counts["videoscore"] == counts["idefics2-8b"] - 32003 * 4096 + 4096 * 5 + 5
    assert counts["videoreward"] == counts["qwen2-vl-2b-instruct"] - (151936 - 151660) * 1536 + 1536


@pytest.mark.parametrize("name, frames", [("videoscore-v1", 16), ("videoscore-v1.1", 48), ("videoreward", 16)])
def test_reward_bench_runs_and_counts_flops(name, frames):
    reward = reward_configs.build(name, scale=8, prompts=gpu_reward.PROMPTS)
    clips = gpu_reward.synthetic_clips(2, frames, 32, 32)
    s = reward.score(clips, PROMPTS)
    assert s["visual_quality"].shape == (2,) and all(torch.isfinite(s[a]).all() for a in ASPECTS)
    assert float((s["visual_quality"][0] - s["visual_quality"][1]).abs()) > 0  # the clips differ, so do scores
    rows = gpu_reward.bench_reward(reward, (frames, 32, 32, 8.0), [1, 2], iters=1)
    assert [r["batch"] for r in rows] == [1, 2] and not any("error" in r for r in rows)
    assert all(r["clips_per_s"] > 0 and r["forward_clips_per_s"] > 0 and r["mfu"] is None for r in rows)
    assert rows[0]["tflop_per_clip"] > 0 and rows[0]["tokens_per_clip"] > 10 * frames // 16
    # FLOPs were counted with eager attention, then the network is back on SDPA
    impls = {c._attn_implementation for m in reward.net.modules() if (c := getattr(m, "config", None)) is not None}
    assert impls == {"sdpa"}


def test_eager_attention_counts_the_attention_too():
    from vip.bench.flops import count_flops

    reward = reward_configs.build("videoscore-v1", scale=8)
    fwd, tokens = gpu_reward.forward_call(reward, gpu_reward.synthetic_clips(1, 16, 32, 32), PROMPTS[:1])
    with torch.inference_mode():
        sdpa = count_flops(fwd)
        with gpu_reward.eager_attention(reward.net):
            eager = count_flops(fwd)
    # at least the text model's attention, 4 L^2 d per layer, beyond what the SDPA count holds on a CPU
    text = reward.net.model.config.text_config
    assert eager >= 4 * tokens ** 2 * text.hidden_size * text.num_hidden_layers
    assert eager > sdpa


class Recording:
    """A reward that notes the thread it scored on."""

    def __init__(self, inner):
        self.inner, self.threads = inner, []
        self.name, self.aspects = inner.name, inner.aspects

    def score(self, videos, prompts):
        self.threads.append(threading.current_thread().name)
        return self.inner.score(videos, prompts)


def test_overlapped_scoring_gives_exactly_the_serial_scores(built):
    model, _ = built
    reward = Recording(reward_configs.videoscore(frames=2, scale=8, batch_size=2, prompts=PROMPTS))
    variants = [FULL] + model.units()[:3]
    got = {}
    for overlap in (False, True):
        reward.threads.clear()
        with FastLoo(model, reward, FastLooOptions(batch_clips=3, overlap_score=overlap)) as fl:
            got[overlap] = fl.run(variants, PROMPTS, SEEDS, SHAPE.steps, SHAPE.guidance)
            assert ("score_wait" in fl.timings) == overlap
        assert len(reward.threads) == 3  # 8 jobs in batches of 3
        assert all(t.startswith("loo-score") == overlap for t in reward.threads)
    assert np.abs(got[False][1:] - got[False][0]).max() > 0  # removing a unit changes the scores
    np.testing.assert_array_equal(got[True], got[False])


def test_an_error_while_scoring_surfaces_from_the_overlapped_run(built):
    model, _ = built

    class Broken:
        name, aspects = "broken", ASPECTS

        def score(self, videos, prompts):
            raise RuntimeError("reward broke")
    with FastLoo(model, Broken(), FastLooOptions(batch_clips=2, overlap_score=True)) as fl:
        with pytest.raises(RuntimeError, match="reward broke"):
            fl.run([FULL], PROMPTS, SEEDS, 1, SHAPE.guidance)


def test_loo_bench_with_a_real_reward_runs_serial_overlapped_and_the_pipeline_loop(built):
    model, parts = built
    reward = reward_configs.videoscore(frames=2, scale=8, batch_size=2, prompts=gpu_reward.PROMPTS)

    def factory(overlap):
        return FastLoo(model, reward, FastLooOptions(batch_clips=2, overlap_score=overlap))
    out = gpu_reward.bench_loo_reward(factory, parts, SHAPE, n_prompts=2, n_variants=2, baseline_variants=1,
                                      device="cpu")
    assert out["overlapped_equals_serial"] and out["max_abs_diff_overlapped_vs_serial"] == 0.0
    assert out["serial"]["clips"] == out["overlapped"]["clips"] == 4 and out["baseline"]["clips"] == 2
    assert out["max_score_diff_vs_baseline"] < 1e-4  # fp32 on the CPU: our sampler is the pipeline's
    assert out["baseline"]["split_s"]["build"] > 0


def test_reward_share():
    assert gpu_reward.reward_share(1.0, 3.0) == pytest.approx(0.25)
    clips = gpu_reward.synthetic_clips(2, 3, 8, 8)
    assert clips.shape == (2, 3, 3, 8, 8) and 0 <= clips.min() and clips.max() <= 1
    assert (clips[0] - clips[1]).abs().max() > 0.1 and (clips[:, 0] - clips[:, 1]).abs().max() > 0.01
