"""The Gemini backend against a real local HTTP server that speaks generateContent, and the
filter job as a subprocess. No SDK internals are mocked: google-genai talks HTTP to the server."""
import json
import multiprocessing
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from vip import config
from vip.config import ConfigError
from vip.prompts.instructions import template_sha256
from vip.prompts.llm import UNPARSEABLE_REASKS, AnswerCache, GeminiBackend, LLMRequestError
from vip.prompts.sets import load_prompts
from vip.steps import filter as step
from vip.store import RunDir
from vip.toyvid import world

from helpers.gemini_server import KEY, FakeGemini, run_filter_job, score_of


def make_cfg(server: FakeGemini, tmp_path: Path, *extra: str) -> config.Config:
    return config.load(None, ["filter.backend=gemini", f"filter.base_url={server.url}",
                              f"filter.cache={tmp_path / 'answers.sqlite'}", "filter.max_retries=3",
                              "filter.timeout_s=0.5", "filter.concurrency=4", "runtime.progress=false", *extra])


def backend(server, tmp_path, *extra) -> GeminiBackend:
    cfg = make_cfg(server, tmp_path, *extra)
    return GeminiBackend(cfg.filter, AnswerCache(cfg.filter.cache), backoff_base_s=0.01, backoff_cap_s=0.05)


def test_normal_answers_path_key_and_request(server, tmp_path, key_env):
    b = backend(server, tmp_path)
    assert b.score(["a dog runs 1", "a cat sleeps", "a car 3"], "dynamic_motion") == [1, 3, 3]
    assert b.score(["a cat sleeps"], "visual_quality") == [2]
    r = server.requests[0]
    assert r["path"] == "/v1/models/gemini-2.0-flash:generateContent"
    assert r["key"] == KEY
    assert r["body"]["contents"][0]["parts"][0]["text"].startswith("###Task Overview:")
    assert r["body"]["generationConfig"]["temperature"] == 0.0
    assert len(server.requests) == 4 and b.stats["retries"] == 0


def test_429_then_200_is_retried_and_counted(server, tmp_path, key_env):
    server.behave = lambda p, i, n: ("status", 429) if n == 0 else ("ok", "[RESULT] 2")
    b = backend(server, tmp_path)
    assert b.score(["p", "q"], "dynamic_motion") == [2, 2]
    assert len(server.requests) == 4 and b.stats["retries"] == 2 and b.stats["requests"] == 4


def test_5xx_retried_until_success_or_one_line_error(server, tmp_path, key_env):
    server.behave = lambda p, i, n: ("status", 503) if n < 2 else ("ok", "[RESULT] 3")
    b = backend(server, tmp_path)
    assert b.score(["x"], "visual_quality") == [3] and b.stats["retries"] == 2

    server.behave = lambda p, i, n: ("status", 500)
    b = backend(server, tmp_path, "filter.max_retries=2")
    before = len(server.requests)
    with pytest.raises(LLMRequestError) as e:
        b.score(["ok 1", "always fails"], "dynamic_motion", ids=[40, 41])
    msg = str(e.value)
    assert re.search(r"request for prompt 4[01] \(dynamic_motion\) failed after 3 attempts: HTTP 500", msg)
    assert "\n" not in msg and KEY not in msg and KEY not in repr(e.value)
    assert len(server.requests) - before == 2 * 3  # both prompts, 1 + max_retries attempts each


def test_client_errors_are_not_retried(server, tmp_path, key_env):
    server.behave = lambda p, i, n: ("status", 403)
    b = backend(server, tmp_path)
    with pytest.raises(LLMRequestError, match=r"prompt 0 \(dynamic_motion\) failed on the first attempt: HTTP 403"):
        b.score(["x"], "dynamic_motion")
    assert len(server.requests) == 1


def test_a_failure_sends_nothing_new_but_keeps_answers_in_flight(server, tmp_path, key_env):
    server.behave = lambda p, i, n: ("status", 400) if p == "bad" else ("sleep", 0.2)
    b = backend(server, tmp_path)  # concurrency 4: "bad" and three slow ones start together
    prompts = ["bad", "s1", "s2", "s3"] + [f"queued {k}" for k in range(20)]
    with pytest.raises(LLMRequestError, match=r"prompt 0 \(visual_quality\) failed on the first attempt: HTTP 400"):
        b.score(prompts, "visual_quality")
    asked = {r["prompt"] for r in server.requests}
    assert {"bad", "s1", "s2", "s3"} <= asked and len(asked) < 10  # the queue was dropped
    cached = AnswerCache(tmp_path / "answers.sqlite").get_many("gemini-2.0-flash", template_sha256("visual_quality"),
                                                               prompts)
    assert {"s1", "s2", "s3"} <= set(cached) and "bad" not in cached


def test_timeout_is_retried_then_fails_naming_it(server, tmp_path, key_env):
    server.behave = lambda p, i, n: ("sleep", 1.5) if n == 0 else ("ok", "[RESULT] 1")
    b = backend(server, tmp_path)
    t0 = time.monotonic()
    assert b.score(["slow"], "dynamic_motion") == [1]
    assert b.stats["retries"] == 1 and time.monotonic() - t0 < 1.4  # gave up on the sleeper at timeout_s

    server.behave = lambda p, i, n: ("sleep", 1.5)
    b = backend(server, tmp_path, "filter.max_retries=1")
    with pytest.raises(LLMRequestError, match=r"prompt 0 .* after 2 attempts: timeout"):
        b.score(["always slow"], "dynamic_motion")


def test_malformed_bodies_are_retried(server, tmp_path, key_env):
    server.behave = lambda p, i, n: ("raw", b"{not json") if n == 0 else ("ok", "[RESULT] 0")
    b = backend(server, tmp_path)
    assert b.score(["m"], "dynamic_motion") == [0] and b.stats["retries"] == 1

    server.behave = lambda p, i, n: ("raw", b'{"candidates": "nonsense"')
    with pytest.raises(LLMRequestError, match="malformed response body"):
        backend(server, tmp_path, "filter.max_retries=1").score(["m2"], "dynamic_motion")


def test_unparseable_answers_are_none_counted_and_not_cached(server, tmp_path, key_env):
    answers = {"a": "I think it is quite dynamic.", "b": "[RESULT] 7", "c": "", "d": "[RESULT] 3"}
    server.behave = lambda p, i, n: ("ok", answers[p])
    b = backend(server, tmp_path)
    assert b.score(["a", "b", "c", "d"], "dynamic_motion") == [None, None, None, 3]
    assert b.stats["unparseable"] == 3 and b.stats["reasks"] == 3 * UNPARSEABLE_REASKS
    n = len(server.requests)
    again = backend(server, tmp_path)  # only "d" is served from the cache; the others are asked again
    assert again.score(["d", "c", "b", "a"], "dynamic_motion") == [3, None, None, None]
    assert again.stats["cache_hits"] == 1 and again.stats["requests"] == 3 * (1 + UNPARSEABLE_REASKS)
    assert len(server.requests) == 2 * n - 1


def test_cache_prevents_a_second_request_and_holds_no_key(server, tmp_path, key_env):
    prompts = [f"prompt {i}" for i in range(10)] + ["prompt 3"]  # a duplicate is asked once
    b = backend(server, tmp_path)
    first = b.score(prompts, "visual_quality")
    assert len(server.requests) == 10
    assert backend(server, tmp_path).score(prompts, "visual_quality") == first
    assert len(server.requests) == 10
    backend(server, tmp_path).score(prompts[:2], "dynamic_motion")  # another instruction is another key
    assert len(server.requests) == 12
    other_model = backend(server, tmp_path, "filter.model=gemini-2.5-flash")
    other_model.score(prompts[:1], "visual_quality")
    assert len(server.requests) == 13
    cache = tmp_path / "answers.sqlite"
    assert KEY.encode() not in cache.read_bytes()
    assert len(AnswerCache(cache)) == 13


def _score_in_process(url: str, cache: str, prompts: list[str], out: str) -> None:
    os.environ["GEMINI_API_KEY"] = KEY
    cfg = config.load(None, ["filter.backend=gemini", f"filter.base_url={url}", f"filter.cache={cache}",
                             "filter.concurrency=4", "filter.timeout_s=5"])
    b = GeminiBackend(cfg.filter, AnswerCache(cache), backoff_base_s=0.01)
    Path(out).write_text(json.dumps(b.score(prompts, "dynamic_motion")))


def test_two_processes_share_one_cache(server, tmp_path, key_env):
    server.delay_s = 0.01  # keep both processes writing at the same time
    cache = str(tmp_path / "shared.sqlite")
    a = [f"a {i}" for i in range(30)] + [f"both {i}" for i in range(10)]
    b = [f"b {i}" for i in range(30)] + [f"both {i}" for i in range(10)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_score_in_process, args=(server.url, cache, p, str(tmp_path / f"{n}.json")))
             for n, p in (("a", a), ("b", b))]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    for n, prompts in (("a", a), ("b", b)):
        assert json.loads((tmp_path / f"{n}.json").read_text()) == [score_of(p, "dynamic_motion") for p in prompts]
    assert len(AnswerCache(cache)) == 70
    assert 70 <= len(server.requests) <= 80  # shared prompts at most twice, when both missed at once
    before = len(server.requests)
    _score_in_process(server.url, cache, a + b, str(tmp_path / "c.json"))
    assert len(server.requests) == before


def test_missing_key_is_a_config_error_before_anything_is_written(server, tmp_path, monkeypatch):
    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    cfg = make_cfg(server, tmp_path)
    run = RunDir(tmp_path / "run")
    with pytest.raises(ConfigError, match="export GEMINI_API_KEY"):
        step.preflight(cfg, run)
    assert not run.path.exists() and not (tmp_path / "answers.sqlite").exists() and server.requests == []
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)  # the other variable works too
    step.preflight(cfg, run)


def test_step_on_gemini_keeps_the_key_out_of_the_run_dir(server, tmp_path, key_env):
    src = tmp_path / "prompts.txt"
    car = "a red car speeds down a rainy neon street at night 3"  # the fake model reads the last digit
    src.write_text(f"{car}\na quiet still lake 1\nshort 2\n")
    cfg = make_cfg(server, tmp_path, f"filter.source={src}", "filter.prompts_per_task=2")
    run = RunDir(tmp_path / "run")
    step.preflight(cfg, run)
    b = GeminiBackend(cfg.filter, AnswerCache(cfg.filter.cache), backoff_base_s=0.01)
    for i in step.missing(run, cfg):
        step.run_task(run, cfg, i, b)
    step.merge(run, cfg)
    for aspect in ("dynamic_degree", "visual_quality", "text_alignment"):  # the others: too few words
        assert step.prompts_for(run, aspect) == [car]
    assert step.static_dynamic(run) == (["a quiet still lake 1", "short 2"], [car])
    for f in [*run.path.rglob("*"), tmp_path / "answers.sqlite"]:
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f


# --- the job as a subprocess ---------------------------------------------------------------------------

def run_job(tmp_path: Path, *args: str, key: str | None = None):
    return run_filter_job(tmp_path, *args, key=key)


def test_job_on_toyvid_prompts(tmp_path):
    chosen = [world.parse(t) for t in load_prompts("toyvid")[:12]]  # balanced: every motion twice
    src = tmp_path / "twelve.txt"
    src.write_text("\n".join(p.text for p in chosen) + "\n")
    run_dir = tmp_path / "run"
    r = run_job(tmp_path, "--run-dir", str(run_dir), f"filter.source={src}", "filter.prompts_per_task=5")
    assert r.returncode == 0, r.stderr
    assert "set sizes:" in r.stdout
    run = RunDir(run_dir)
    assert step.prompts_for(run, "dynamic_degree") == [p.text for p in chosen if p.motion not in ("still", "bounce")]
    assert step.static_dynamic(run)[0] == [p.text for p in chosen if p.motion in ("still", "bounce")]
    far = [np.linalg.norm(np.subtract(world.COLOURS[p.colour], world.BACKGROUNDS[p.background])) >= 1.0 for p in chosen]
    assert step.prompts_for(run, "visual_quality") == [p.text for p, f in zip(chosen, far) if f]
    assert step.prompts_for(run, "text_alignment") == [p.text for p in chosen]
    assert (run_dir / "config.sha256").is_file() and step.histogram_path(run).is_file()
    status = run_job(tmp_path, "--run-dir", str(run_dir), f"filter.source={src}", "filter.prompts_per_task=5",
                     "--status")
    assert status.returncode == 0 and "3/3 tasks done" in status.stdout


def test_job_with_hostile_prompts_on_gemini(server, tmp_path):
    (tmp_path / "x").write_text("sentinel")
    hostile = [
        'a "quoted" dog runs across the wide green field',
        "a man types $(rm -rf x) and `rm -rf x` into a terminal quickly",
        "ein Fuchs läuft über die verschneite Wiese 東京 🌸 at dawn",
        "first line of a long prompt\nsecond line about a racing car",
        "it's a cat's toy. 'Single' quotes \\ backslash",  # two sentences: not for text alignment
    ]
    src = tmp_path / "hostile.jsonl"
    src.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in hostile), encoding="utf-8")
    server.behave = lambda p, i, n: ("ok", "[RESULT] 3")
    run_dir = tmp_path / "run"
    r = run_job(tmp_path, "--run-dir", str(run_dir), f"filter.source={src}", "filter.backend=gemini",
                f"filter.base_url={server.url}", key=KEY)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "x").read_text() == "sentinel"  # nothing was evaluated by a shell
    run = RunDir(run_dir)
    assert step.prompts_for(run, "dynamic_degree") == hostile  # exactly, newline and all
    assert step.prompts_for(run, "text_alignment") == hostile[:4]
    assert sorted(q["prompt"] for q in server.requests if q["instruction"] == "visual_quality") == sorted(hostile)
    for f in [*run_dir.rglob("*"), *(tmp_path / "cache").rglob("*")]:
        if f.is_file():
            assert KEY.encode() not in f.read_bytes(), f
    assert KEY not in r.stdout + r.stderr
    assert list((tmp_path / "cache").glob("*.sqlite")), "the default cache honours VIP_CACHE_DIR"

    (tmp_path / "prompts.yaml").write_text("- a dog\n")
    bad = run_job(tmp_path, "--run-dir", str(tmp_path / "run2"), f"filter.source={tmp_path / 'prompts.yaml'}")
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "unknown extension '.yaml'" in bad.stderr
    assert not (tmp_path / "run2").exists()


def test_job_without_key_and_with_a_failing_service(server, tmp_path):
    args = ("--run-dir", str(tmp_path / "run"), "filter.backend=gemini", f"filter.base_url={server.url}",
            "filter.max_retries=0")
    r = run_job(tmp_path, *args)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "GEMINI_API_KEY" in r.stderr
    assert not (tmp_path / "run").exists()

    server.behave = lambda p, i, n: ("status", 503) if "square" in p else ("ok", "[RESULT] 1")
    r = run_job(tmp_path, *args, "filter.concurrency=1", key=KEY)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: gemini-2.0-flash request for prompt") and "HTTP 503" in last
    assert KEY not in r.stderr + r.stdout
