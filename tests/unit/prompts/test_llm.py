"""The LLM backends (vip/prompts/llm.py): the offline toyvid backend, backoff, the answer cache's path, the API key check."""

import pytest

from vip import config
from vip.config import ConfigError
from vip.prompts.llm import ToyvidBackend, backoff_delay, cache_path, check_backend
from vip.toyvid import world



# --- the toyvid backend ------------------------------------------------------------------------------

def test_toyvid_backend_scores_follow_the_grammar():
    b = ToyvidBackend()
    prompts = [p.text for p in world.all_prompts()]
    dm = b.score(prompts, "dynamic_motion")
    vq = b.score(prompts, "visual_quality")
    for p, d, v in zip(world.all_prompts(), dm, vq):
        assert d == {"still": 1, "bounce": 2}.get(p.motion, 3)
        if p.background == "gray":
            assert v == 1
    assert [vq.count(k) for k in (1, 2, 3)] == [108, 90, 126]
    assert b.score(["a red car", "A  RED circle moving LEFT on a black background"], "dynamic_motion") == [0, 3]
    assert b.score(["a purple circle staying still on a black background"], "visual_quality") == [0]
    assert b.score(["a cyan triangle bouncing on a black background"], "visual_quality") == [3]
    assert b.score(["a blue square bouncing on a navy background"], "visual_quality") == [2]
    with pytest.raises(ValueError, match="unknown instruction"):
        b.score(["x"], "beauty")


def test_backoff_is_full_jitter_and_capped():
    import random

    rng = random.Random(0)
    for attempt in range(10):
        d = backoff_delay(attempt, 1.0, 8.0, rng)
        assert 0.0 <= d <= min(8.0, 2.0 ** attempt)


def test_cache_path_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv("VIP_CACHE_DIR", raising=False)
    assert str(cache_path("")).endswith(".cache/vip/llm_answers.sqlite")
    monkeypatch.setenv("VIP_CACHE_DIR", str(tmp_path))
    assert cache_path("") == tmp_path / "llm_answers.sqlite"
    assert cache_path(str(tmp_path / "x.sqlite")) == tmp_path / "x.sqlite"


def test_missing_key_is_a_config_error(monkeypatch):
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    cfg = config.load(None, ["filter.backend=gemini"])
    with pytest.raises(ConfigError, match="GEMINI_API_KEY.*GOOGLE_API_KEY"):
        check_backend(cfg.filter)
    check_backend(config.load(None, []).filter)  # toyvid needs nothing
