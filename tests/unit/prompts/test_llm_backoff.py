"""The retry delays themselves, on a controlled clock: backoff_delay's bounds (full jitter, doubling,
capped) with a random source that answers a fixed point of the interval it is given, and the
delays the Gemini backend actually sleeps between attempts (time.sleep replaced by a recorder; the
requests go to a local port nobody listens on, so every attempt is a refused connection)."""
import random
import socket

import pytest

from vip import config
from vip.prompts import llm
from vip.prompts.llm import GeminiBackend, LLMRequestError, backoff_delay

# what GeminiBackend sleeps by default (make_backend passes no base or cap): 1 s doubling, capped at 60 s
DEFAULT_BOUNDS = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]


class PointRng:
    """uniform(a, b) -> a + share * (b - a), recording every interval asked for."""

    def __init__(self, share: float):
        self.share, self.asked = share, []

    def uniform(self, a: float, b: float) -> float:
        self.asked.append((a, b))
        return a + self.share * (b - a)


def test_the_delay_is_uniform_up_to_a_doubling_capped_bound():
    top = PointRng(1.0)
    assert [backoff_delay(a, 1.0, 60.0, top) for a in range(9)] == DEFAULT_BOUNDS
    assert top.asked == [(0.0, b) for b in DEFAULT_BOUNDS]  # full jitter: from 0, never from the bound's half
    assert [backoff_delay(a, 0.25, 3.0, PointRng(0.5)) for a in range(6)] == [0.125, 0.25, 0.5, 1.0, 1.5, 1.5]
    # a real random source: exactly its draws on [0, bound] in turn, and the draws differ
    rng, same = random.Random(7), random.Random(7)
    draws = [backoff_delay(a, 1.0, 60.0, rng) for a in range(9)]
    assert draws == [same.uniform(0.0, b) for b in DEFAULT_BOUNDS]
    assert all(0.0 < d <= b for d, b in zip(draws, DEFAULT_BOUNDS)) and len(set(draws)) == len(draws)


def _refused_url() -> str:
    with socket.socket() as s:  # a port that was free a moment ago: connecting to it is refused at once
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("share", [1.0, 0.5])
def test_the_backend_sleeps_the_backoff_between_attempts(monkeypatch, tmp_path, share):
    monkeypatch.setenv("GEMINI_API_KEY", "sk-test-0123456789")
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    slept = []
    monkeypatch.setattr(llm.time, "sleep", slept.append)  # the clock: nothing waits, every delay is recorded
    cfg = config.load(None, ["filter.backend=gemini", f"filter.base_url={_refused_url()}", "filter.max_retries=8",
                             "filter.timeout_s=5", f"filter.cache={tmp_path / 'answers.sqlite'}"])
    rng = PointRng(share)
    backend = GeminiBackend(cfg.filter, None, rng=rng)  # the default base and cap, as make_backend builds it
    with pytest.raises(LLMRequestError, match="failed after 9 attempts: connection error"):
        backend.ask("a prompt", "prompt 0 (dynamic_motion)")
    assert backend.stats["requests"] == 9 and backend.stats["retries"] == 8
    # one sleep between consecutive attempts (none after the last), each the backoff of its attempt
    assert slept == [share * b for b in DEFAULT_BOUNDS[:8]]
    assert rng.asked == [(0.0, b) for b in DEFAULT_BOUNDS[:8]]
