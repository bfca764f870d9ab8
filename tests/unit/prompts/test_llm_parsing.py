"""The Gemini backend's own rules, on a scripted client (no HTTP; helpers.gemini_server and
test_llm_answers.py drive the real google-genai path): which failures are retried and how each is named,
how unparseable answers are asked again and recorded, what the answer cache stores and serves, and
what happens to the other requests after one fails. time.sleep is replaced, so nothing waits."""
import threading
from types import SimpleNamespace

import pytest
from google.genai import errors

from vip import config
from vip.prompts import llm
from vip.prompts.instructions import INSTRUCTIONS, request_text, template_sha256
from vip.prompts.llm import ANSWER_CHARS, UNPARSEABLE_REASKS, AnswerCache, GeminiBackend, LLMRequestError

# the HTTP client under google-genai: httpx or its fork httpx2, whichever llm found
httpx = __import__(llm._TRANSIENT[0].__module__.split(".")[0])
KEY = "sk-test-parsing-0123456789"
MODEL = "gemini-2.0-flash"


def api_error(code, status="", message="fake"):
    return errors.APIError(code, {"error": {"code": code, "message": message, "status": status}})


class Script:
    """generate_content that answers from `behave(prompt, n)` (n = earlier requests for that prompt):
    a string is the answer text (None: no text), an exception is raised."""

    def __init__(self, behave):
        self.behave, self.seen, self.contents, self.lock = behave, {}, [], threading.Lock()

    def generate_content(self, model, contents, config):
        assert model == MODEL and config.temperature == 0.0  # a score, not prose: as repeatable as it gets
        prompt = contents.split("### Prompt:\n", 1)[1] if "### Prompt:\n" in contents else contents
        with self.lock:
            n = self.seen.get(prompt, 0)
            self.seen[prompt] = n + 1
            self.contents.append(contents)
        out = self.behave(prompt, n)
        if isinstance(out, BaseException):
            raise out
        return SimpleNamespace(text=out)


@pytest.fixture
def make(monkeypatch, tmp_path):
    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    slept = []
    monkeypatch.setattr(llm.time, "sleep", slept.append)

    def make(behave, retries=3, cache=True, concurrency=2):
        cfg = config.load(None, ["filter.backend=gemini", f"filter.max_retries={retries}", "filter.timeout_s=2.5",
                                 f"filter.concurrency={concurrency}", f"filter.cache={tmp_path / 'a.sqlite'}"])
        b = GeminiBackend(cfg.filter, AnswerCache(cfg.filter.cache) if cache else None, backoff_base_s=1.0,
                          backoff_cap_s=4.0, rng=SimpleNamespace(uniform=lambda a, b: b))
        b._client = SimpleNamespace(models=Script(behave))
        b.slept = slept
        return b
    return make


# --- ask: retries and the one-line failure ---------------------------------------------------------------

def test_an_answer_without_text_is_empty(make):
    b = make(lambda p, n: None)
    assert b.ask("x", "prompt 0 (dynamic_motion)") == ""
    assert b.stats == {"requests": 1}


@pytest.mark.parametrize("error", [api_error(429, "RESOURCE_EXHAUSTED"), api_error(408), api_error(500, "INTERNAL"),
                                   api_error(503), httpx.ConnectError("refused"), httpx.ReadTimeout("slow"),
                                   httpx.RemoteProtocolError("cut"), ValueError("not json")])
def test_transient_failures_are_retried_with_backoff(make, error):
    b = make(lambda p, n: error if n < 2 else "[RESULT] 2")
    assert b.ask("a prompt", "prompt 0 (dynamic_motion)") == "[RESULT] 2"
    assert dict(b.stats) == {"requests": 3, "retries": 2}
    assert b.slept == [1.0, 2.0]  # the cap of attempt 0, then 1 (full jitter at its top here)


@pytest.mark.parametrize("error, failure", [
    (api_error(429, "RESOURCE_EXHAUSTED"), "HTTP 429 RESOURCE_EXHAUSTED"),
    (api_error(503), "HTTP 503"),
    (httpx.ConnectError("refused"), "connection error"),
    (httpx.ConnectTimeout("slow"), "timeout (filter.timeout_s=2.5)"),
    (ValueError("not json"), "malformed response body"),
])
def test_the_last_attempt_names_what_failed(make, error, failure):
    b = make(lambda p, n: error, retries=2)
    with pytest.raises(LLMRequestError) as e:
        b.ask("a prompt", "prompt 7 (visual_quality)")
    assert str(e.value) == f"{MODEL} request for prompt 7 (visual_quality) failed after 3 attempts: {failure}"
    assert dict(b.stats) == {"requests": 3, "retries": 2, "failures": 1}
    assert b.slept == [1.0, 2.0]  # none after the last attempt


@pytest.mark.parametrize("error, failure", [
    (api_error(400, "INVALID_ARGUMENT"), "HTTP 400 INVALID_ARGUMENT"),
    (api_error(404, "NOT_FOUND"), "HTTP 404 NOT_FOUND"),
    (api_error(401, "UNAUTHENTICATED"), "HTTP 401 UNAUTHENTICATED (check the key in GEMINI_API_KEY or GOOGLE_API_KEY)"),
    (api_error(403), "HTTP 403 (check the key in GEMINI_API_KEY or GOOGLE_API_KEY)"),
    (api_error(499), "HTTP 499"),
])
def test_other_http_errors_fail_at_once(make, error, failure):
    b = make(lambda p, n: error)
    with pytest.raises(LLMRequestError) as e:
        b.ask("a prompt", "prompt 3 (dynamic_motion)")
    assert str(e.value) == f"{MODEL} request for prompt 3 (dynamic_motion) failed on the first attempt: {failure}"
    assert dict(b.stats) == {"requests": 1, "failures": 1} and b.slept == []


def test_a_code_that_is_not_a_number_counts_as_zero(make):
    e = api_error(400)
    e.code, e.status = "bad", None
    b = make(lambda p, n: e)
    with pytest.raises(LLMRequestError, match="failed on the first attempt: HTTP 0$"):
        b.ask("a prompt", "prompt 0 (dynamic_motion)")


def test_zero_retries_is_one_attempt(make):
    b = make(lambda p, n: api_error(503), retries=0)
    with pytest.raises(LLMRequestError, match="on the first attempt: HTTP 503$"):
        b.ask("a prompt", "prompt 0 (dynamic_motion)")
    assert b.stats["requests"] == 1


def test_the_key_never_reaches_the_message(make):
    b = make(lambda p, n: api_error(400, "INVALID_ARGUMENT"))
    with pytest.raises(LLMRequestError) as e:
        b.ask("x", f"prompt {KEY}")
    assert KEY not in str(e.value) and "prompt <key>" in str(e.value)


# --- score / _ask_all: unparseable answers, the cache and failures ---------------------------------------

def test_unparseable_answers_are_asked_again_then_recorded(make):
    answers = {"never": "no score here " + KEY + " " + "x" * 300, "late": None}
    b = make(lambda p, n: (answers[p] if n < UNPARSEABLE_REASKS else "[RESULT] 1") if p == "late" else
             answers.get(p, "[RESULT] 3"))
    assert b.score(["never", "late", "fine", "fine"], "dynamic_motion") == [None, 1, 3, 3]
    script = b._client.models
    assert script.seen == {"never": 1 + UNPARSEABLE_REASKS, "late": 1 + UNPARSEABLE_REASKS, "fine": 1}
    assert request_text(INSTRUCTIONS["dynamic_motion"], "never") in script.contents  # the instruction, then it
    assert b.stats["reasks"] == 2 * UNPARSEABLE_REASKS and b.stats["unparseable"] == 1
    assert b.stats["requests"] == 2 * (1 + UNPARSEABLE_REASKS) + 1
    recorded = b.unparseable[("dynamic_motion", "never")]
    assert recorded == ("no score here <key> " + "x" * 300)[:ANSWER_CHARS] and len(recorded) == ANSWER_CHARS
    assert ("dynamic_motion", "late") not in b.unparseable and ("dynamic_motion", "fine") not in b.unparseable
    cached = b.cache.get_many(MODEL, template_sha256("dynamic_motion"), ["never", "late", "fine"])
    assert cached == {"late": ("[RESULT] 1", 1), "fine": ("[RESULT] 3", 3)}


def test_a_later_good_answer_clears_an_earlier_unparseable_record(make):
    b = make(lambda p, n: "none" if b.stats["requests"] <= 1 + UNPARSEABLE_REASKS else "[RESULT] 0")
    assert b.score(["p"], "visual_quality") == [None]
    assert ("visual_quality", "p") in b.unparseable
    assert b.score(["p"], "visual_quality") == [0]
    assert b.unparseable == {} and b.stats["cache_hits"] == 0
    assert b.score(["p"], "visual_quality") == [0] and b.stats["cache_hits"] == 1  # served from the cache now


def test_without_a_cache_nothing_is_stored(make):
    b = make(lambda p, n: "[RESULT] 2", cache=False)
    assert b.score(["a", "b"], "dynamic_motion") == [2, 2]
    assert b.score(["a"], "dynamic_motion") == [2] and b.stats["requests"] == 3


def test_after_a_failure_nothing_new_is_sent_and_the_first_failure_is_raised(make):
    started, release = threading.Event(), threading.Event()

    def behave(p, n):
        if p == "bad":
            started.wait(5)
            return api_error(400, "INVALID_ARGUMENT")
        if p == "slow":
            started.set()
            release.wait(5)
            return "[RESULT] 3"
        release.wait(1.0)  # a request that starts right after the failure is still running when it is seen
        return "[RESULT] 1"

    b = make(behave, concurrency=2)
    prompts = ["bad", "slow"] + [f"later {i}" for i in range(5)]

    def release_soon():
        release.wait(0.5)
        release.set()
    threading.Thread(target=release_soon, daemon=True).start()
    with pytest.raises(LLMRequestError, match=r"request for prompt 0 \(dynamic_motion\) failed on the first attempt"):
        b.score(prompts, "dynamic_motion", ids=[0, 1, 2, 3, 4, 5, 6])
    script = b._client.models
    assert set(script.seen) <= {"bad", "slow", "later 0"}  # the queue behind the failure was cancelled
    # the answer in flight when the failure came is still cached
    assert b.cache.get_many(MODEL, template_sha256("dynamic_motion"), ["slow"]) == {"slow": ("[RESULT] 3", 3)}


def test_an_unparseable_answer_after_a_failure_is_not_asked_again(make):
    gate = threading.Event()

    def behave(p, n):
        if p == "bad":
            return api_error(400)
        gate.wait(0.5)  # answers after the failure is known
        return "no score"

    b = make(behave, concurrency=2)
    with pytest.raises(LLMRequestError):
        b.score(["bad", "garbled"], "dynamic_motion")
    assert b._client.models.seen.get("garbled", 0) <= 1 and b.stats["reasks"] == 0


def test_ids_name_the_prompts_and_each_distinct_prompt_is_asked_once(make):
    b = make(lambda p, n: api_error(403) if p == "p" else "[RESULT] 2")
    with pytest.raises(LLMRequestError, match=r"request for prompt 41 \(visual_quality\)"):
        b.score(["q", "p", "p"], "visual_quality", ids=[40, 41, 42])
    assert b._client.models.seen["p"] == 1


# --- the answer cache -------------------------------------------------------------------------------------

def test_the_cache_serves_parsed_answers_by_model_instruction_and_prompt(tmp_path):
    c = AnswerCache(tmp_path / "c.sqlite")
    c.put("m", "sha", "a", "[RESULT] 2", 2)
    c.put("m", "sha", "b", "garbled", None)  # not stored
    c.put("m", "other", "a", "[RESULT] 1", 1)
    c.put("n", "sha", "a", "[RESULT] 0", 0)
    assert len(c) == 3
    assert c.get_many("m", "sha", ["a", "b", "a"]) == {"a": ("[RESULT] 2", 2)}
    c.put("m", "sha", "a", "[RESULT] 3", 3)  # replaced, not duplicated
    assert c.get_many("m", "sha", ["a"]) == {"a": ("[RESULT] 3", 3)} and len(c) == 3
    # a stored answer is parsed again: one an older version stored with a wrong score counts by its text
    c._db.execute("INSERT INTO answers VALUES ('m', 'sha', 'old', 'thinking... [RESULT] 1', 3, 0)")
    c._db.execute("INSERT INTO answers VALUES ('m', 'sha', 'junk', 'no tag', 2, 0)")
    assert c.get_many("m", "sha", ["old", "junk"]) == {"old": ("thinking... [RESULT] 1", 1)}
    c.close()


def test_the_cache_answers_more_prompts_than_sqlite_binds_at_once(tmp_path):
    c = AnswerCache(tmp_path / "c.sqlite")
    prompts = [f"p{i}" for i in range(1201)]
    for i, p in enumerate(prompts):
        c.put("m", "sha", p, f"[RESULT] {i % 4}", i % 4)
    got = c.get_many("m", "sha", prompts + prompts[:3])
    assert len(got) == 1201 and got["p0"] == ("[RESULT] 0", 0) and got["p1200"] == ("[RESULT] 0", 0)
    assert got["p501"] == ("[RESULT] 1", 1) and got["p999"] == ("[RESULT] 3", 3)
