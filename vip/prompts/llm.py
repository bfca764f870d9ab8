"""Backends that score prompts on one of the paper's instructions: `score(prompts, aspect) -> [0-3 | None]`.

- ToyvidBackend: offline; a toyvid prompt's scores follow from the grammar.
- GeminiBackend: google-genai (the maintained successor of the end-of-life google-generativeai),
  with our own retries (so they are counted and testable), bounded concurrency and an answer cache.

An unparseable answer (no `[RESULT] 0-3`, parse_result) is asked again up to UNPARSEABLE_REASKS
times within a run and is never served from the answer cache: it is not stored, and one stored by an
older version is read as a miss, so a later run against a working model asks again.

The API key is read from the environment only and never written anywhere: not to the cache, the
run directory, logs or error messages.
"""
from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Protocol

import numpy as np

from vip.config import ConfigError, FilterConfig
from vip.prompts.instructions import INSTRUCTIONS, parse_result, request_text, template_sha256
from vip.toyvid import world

KEY_VARS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
UNPARSEABLE_REASKS = 2  # an unparseable answer is asked again at most this often per run (so 1 + 2 requests)
ANSWER_CHARS = 200  # an unparseable answer kept for the error message is cut to this many characters


class LLMRequestError(RuntimeError):
    """A request still failing after every retry (or failing for good, e.g. HTTP 400/403).
    The message is one line naming the prompt and the HTTP code; it never holds the key."""


class Backend(Protocol):
    model: str  # what produced the answers (recorded in shards)

    def score(self, prompts: list[str], aspect: str, ids: list[int] | None = None) -> list[int | None]:
        """One score per prompt on INSTRUCTIONS[aspect]: 0-3, or None for an unparseable answer.
        `ids` name the prompts in error messages (default: their positions)."""
        ...

    # Optional: `unparseable: dict[(aspect, prompt), str]`, the last unparseable answer per prompt
    # (redacted, at most ANSWER_CHARS); the filter records one per shard for its error message.


def _check_aspect(aspect: str) -> None:
    if aspect not in INSTRUCTIONS:
        raise ValueError(f"unknown instruction {aspect!r}; expected one of {', '.join(INSTRUCTIONS)}")


def api_key() -> str | None:
    """The key from the environment; GOOGLE_API_KEY wins when both are set, as in google-genai itself."""
    return os.environ.get("GOOGLE_API_KEY") or os.environ.get("GEMINI_API_KEY") or None


def _no_key() -> ConfigError:
    return ConfigError(f"filter.backend is 'gemini' but no API key is set: export {KEY_VARS[0]} "
                       f"(or {KEY_VARS[1]}) before running; the key is read from the environment only")


def check_backend(fcfg: FilterConfig) -> None:
    """Everything the backend needs, checked before anything is written."""
    if fcfg.backend == "gemini":
        if not api_key():
            raise _no_key()
        if not fcfg.model:
            raise ConfigError("config key 'filter.model' must name a Gemini model, e.g. gemini-2.0-flash")
    elif fcfg.backend != "toyvid":
        raise ConfigError(f"config key 'filter.backend' must be toyvid or gemini, got {fcfg.backend!r}")


def make_backend(fcfg: FilterConfig) -> Backend:
    check_backend(fcfg)
    if fcfg.backend == "toyvid":
        return ToyvidBackend()
    return GeminiBackend(fcfg, AnswerCache(cache_path(fcfg.cache)))


def cache_path(setting: str) -> Path:
    """filter.cache, or $VIP_CACHE_DIR/llm_answers.sqlite, or ~/.cache/vip/llm_answers.sqlite."""
    if setting:
        return Path(setting).expanduser()
    root = os.environ.get("VIP_CACHE_DIR") or str(Path.home() / ".cache" / "vip")
    return Path(root).expanduser() / "llm_answers.sqlite"


class AnswerCache:
    """LLM answers on disk, keyed by (model, instruction template sha256, prompt text).

    Shared by runs and by the array tasks of one run. SQLite with its default rollback journal
    and a long busy timeout: writers queue on SQLite's file lock, which (unlike WAL mode, whose
    shared memory needs all processes on one host) also holds between nodes sharing a filesystem.
    Each answer is one short autocommitted INSERT. Only the answer text and the parsed score are
    stored: never a key or a header. Only answers that parse are stored, and a stored answer that does
    not parse (written by an older version, which cached every answer) is read as a miss.
    """

    BUSY_TIMEOUT_S = 120.0

    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # one connection, used under a lock (GeminiBackend touches it from the calling thread only)
            self._db = sqlite3.connect(self.path, timeout=self.BUSY_TIMEOUT_S, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {int(self.BUSY_TIMEOUT_S * 1000)}")
            self._db.execute("CREATE TABLE IF NOT EXISTS answers (model TEXT NOT NULL, instruction_sha256 TEXT "
                             "NOT NULL, prompt TEXT NOT NULL, answer TEXT NOT NULL, score INTEGER, created REAL "
                             "NOT NULL, PRIMARY KEY (model, instruction_sha256, prompt))")
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"filter.cache: cannot open the answer cache {str(self.path)!r}: {e}") from None
        self._lock = threading.Lock()

    def get_many(self, model: str, instruction_sha256: str, prompts: list[str]) -> dict[str, tuple[str, int]]:
        """{prompt: (answer, score)} for the prompts already answered with a score. The score is read
        from the answer again (parse_result): an answer without one counts as not answered."""
        out: dict[str, tuple[str, int]] = {}
        distinct = list(dict.fromkeys(prompts))
        with self._lock:
            for lo in range(0, len(distinct), 500):  # stay under SQLite's bound-parameter limit
                chunk = distinct[lo:lo + 500]
                rows = self._db.execute(
                    f"SELECT prompt, answer, score FROM answers WHERE model = ? AND instruction_sha256 = ? "
                    f"AND prompt IN ({','.join('?' * len(chunk))})", [model, instruction_sha256, *chunk])
                for p, a, _ in rows:
                    s = parse_result(a)
                    if s is not None:
                        out[p] = (a, s)
        return out

    def put(self, model: str, instruction_sha256: str, prompt: str, answer: str, score: int | None) -> None:
        """Store one answer; an unparseable one (score None) is not stored, so it is asked again later."""
        if score is None:
            return
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                             (model, instruction_sha256, prompt, answer, score, time.time()))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class ToyvidBackend:
    """The grammar's own answers, standing in for the LLM on toyvid prompts.

    Dynamic motion (Listing 1): "staying still" -> 1 (no motion); "bouncing" -> 2 (a small repetitive
    motion, 6 px amplitude); "moving left/right/up/down" -> 3 (travels 14 px over the 8-frame clip).

    Visual quality (Listing 2), from the contrast of object and background: d = Euclidean distance of
    their RGB colours (world.COLOURS, world.BACKGROUNDS, each channel in [0, 1]).
    d < 0.75 -> 1, 0.75 <= d < 1.0 -> 2, d >= 1.0 -> 3. Over the 324 prompts: 108 / 90 / 126
    (every colour on gray scores 1; on black or navy, blue/green/red score 2 at least once).

    A prompt outside the grammar is "unusable": 0 on both.
    """

    model = "toyvid-grammar"
    MOTION_SCORE = {"still": 1, "bounce": 2, "left": 3, "right": 3, "up": 3, "down": 3}
    VQ_THRESHOLDS = (0.75, 1.0)

    @classmethod
    def contrast(cls, colour: str, background: str) -> float:
        return float(np.linalg.norm(np.subtract(world.COLOURS[colour], world.BACKGROUNDS[background])))

    def score_one(self, prompt: str, aspect: str) -> int:
        _check_aspect(aspect)
        try:
            p = world.parse(prompt)
        except ValueError:
            return 0
        if aspect == "dynamic_motion":
            return self.MOTION_SCORE[p.motion]
        d = self.contrast(p.colour, p.background)
        return 1 + sum(d >= t for t in self.VQ_THRESHOLDS)

    def score(self, prompts: list[str], aspect: str, ids: list[int] | None = None) -> list[int | None]:
        return [self.score_one(p, aspect) for p in prompts]


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter (AWS's "full jitter"): uniform in [0, min(cap, base * 2^attempt)].
    Spreads the retries of many array tasks hitting one quota instead of synchronising them."""
    return rng.uniform(0.0, min(cap_s, base_s * 2.0 ** attempt))


def _transient_transport_errors() -> tuple[type[BaseException], ...]:
    """Timeouts and refused connections of the HTTP client under google-genai (httpx or its fork httpx2)."""
    found: list[type[BaseException]] = []
    for mod in ("httpx", "httpx2"):
        try:
            m = __import__(mod)
        except ImportError:
            continue
        found += [getattr(m, n) for n in ("TimeoutException", "ConnectError", "RemoteProtocolError") if hasattr(m, n)]
    return tuple(found)


_TRANSIENT = _transient_transport_errors()
_RETRY_CODES = {408, 429}  # plus every 5xx


class GeminiBackend:
    """Scores prompts with a Gemini model through google-genai, caching every answer.

    Retries: 429, 408, 5xx, timeouts, refused connections and malformed response bodies are retried
    up to `max_retries` times with full-jitter exponential backoff; the SDK's own retries are off so
    that each attempt is ours to count. Other HTTP errors (400, 401, 403, 404) fail at once.
    """

    def __init__(self, fcfg: FilterConfig, cache: AnswerCache | None, backoff_base_s: float = 1.0,
                 backoff_cap_s: float = 60.0, rng: random.Random | None = None):
        from google import genai  # imported here: the toyvid backend never needs it
        from google.genai import errors, types

        key = api_key()
        if not key:
            raise _no_key()
        self._key = key
        self.model = fcfg.model
        self.max_retries = fcfg.max_retries
        self.concurrency = fcfg.concurrency
        self.timeout_s = fcfg.timeout_s
        self.backoff = (backoff_base_s, backoff_cap_s)
        self.cache = cache
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        # requests, retries, failures, cache_hits; reasks (unparseable answers asked again) and
        # unparseable (prompts still without a score after the re-asks)
        self.stats: Counter[str] = Counter()
        self.unparseable: dict[tuple[str, str], str] = {}  # (aspect, prompt) -> its last answer, redacted
        options = types.HttpOptions(
            timeout=max(1, int(round(fcfg.timeout_s * 1000))),  # milliseconds, per request
            retry_options=None,  # None = a single attempt in google-genai 3.x; we retry ourselves
            **({"base_url": fcfg.base_url} if fcfg.base_url else {}),
        )
        self._client = genai.Client(api_key=key, http_options=options)
        self._config = types.GenerateContentConfig(temperature=0.0)  # a score, not prose: as repeatable as we can
        self._api_error = errors.APIError

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            self.stats[what] += n

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "<key>") if self._key else text

    def _sleep_before_retry(self, attempt: int) -> None:
        with self._lock:
            delay = backoff_delay(attempt, *self.backoff, self._rng)
        time.sleep(delay)

    def ask(self, text: str, label: str) -> str:
        """The model's answer text to one request (empty if it returned no text), retrying transient
        failures; raises LLMRequestError after the last attempt. `label` names the prompt in errors."""
        attempts = self.max_retries + 1
        for attempt in range(attempts):
            self._count("requests")
            try:
                response = self._client.models.generate_content(model=self.model, contents=text, config=self._config)
                return response.text or ""
            except self._api_error as e:
                code = e.code if isinstance(e.code, int) else 0
                retry = code in _RETRY_CODES or code >= 500
                status = f" {e.status}" if isinstance(e.status, str) and e.status else ""
                failure = f"HTTP {code}{status}"
                if code in (401, 403):
                    failure += f" (check the key in {KEY_VARS[0]} or {KEY_VARS[1]})"
            except _TRANSIENT as e:
                retry = True
                kind = "timeout" if "Timeout" in type(e).__name__ else "connection error"
                failure = f"{kind} (filter.timeout_s={self.timeout_s:g})" if kind == "timeout" else kind
            except ValueError:  # a body that is not the JSON of a GenerateContentResponse
                retry, failure = True, "malformed response body"
            if not retry or attempt == attempts - 1:
                self._count("failures")
                tries = f"after {attempt + 1} attempts" if attempt else "on the first attempt"
                raise LLMRequestError(self._redact(f"{self.model} request for {label} failed {tries}: {failure}"))
            self._count("retries")
            self._sleep_before_retry(attempt)
        raise AssertionError("unreachable")

    def score(self, prompts: list[str], aspect: str, ids: list[int] | None = None) -> list[int | None]:
        _check_aspect(aspect)
        ids = list(range(len(prompts))) if ids is None else ids
        instruction, key = INSTRUCTIONS[aspect], template_sha256(aspect)
        known: dict[str, int | None] = {}
        if self.cache is not None:
            for prompt, (_, score) in self.cache.get_many(self.model, key, prompts).items():
                known[prompt] = score
        self._count("cache_hits", sum(p in known for p in prompts))
        todo: dict[str, int] = {}  # each distinct prompt is asked once
        for p, i in zip(prompts, ids):
            if p not in known:
                todo.setdefault(p, i)
        if todo:
            known.update(self._ask_all(todo, aspect, instruction, key))
        return [known[p] for p in prompts]

    def _ask_all(self, todo: dict[str, int], aspect: str, instruction: str, key: str) -> dict[str, int | None]:
        """Ask for every prompt with at most `concurrency` in flight, caching each answer as it arrives
        (from this thread only). An unparseable answer is asked again, at most UNPARSEABLE_REASKS times,
        and is not cached. After a failure nothing new is sent, but answers already in flight are
        still cached, so a re-run pays only for what is missing."""
        out: dict[str, int | None] = {}
        failure: BaseException | None = None
        asked: Counter[str] = Counter()
        futures: dict = {}
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="gemini") as pool:
            def submit(prompt: str):
                asked[prompt] += 1
                f = pool.submit(self.ask, request_text(instruction, prompt), f"prompt {todo[prompt]} ({aspect})")
                futures[f] = prompt
                return f

            pending = {submit(p) for p in todo}
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for f in done:
                    if f.cancelled():
                        continue
                    if f.exception() is not None:
                        if failure is None:
                            failure = f.exception()
                            for g in pending:
                                g.cancel()
                        continue
                    prompt, answer = futures[f], f.result()
                    score = parse_result(answer)
                    if score is None:
                        if failure is None and asked[prompt] <= UNPARSEABLE_REASKS:
                            self._count("reasks")
                            pending.add(submit(prompt))
                            continue
                        self._count("unparseable")
                        self.unparseable[(aspect, prompt)] = self._redact(answer)[:ANSWER_CHARS]
                    else:
                        self.unparseable.pop((aspect, prompt), None)
                        if self.cache is not None:
                            self.cache.put(self.model, key, prompt, answer, score)
                    out[prompt] = score
        if failure is not None:
            raise failure
        return out


def describe(backend: Backend) -> str:
    """One line for logs: the backend and what it did (never the key)."""
    stats = getattr(backend, "stats", None)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(stats.items())) if stats else "no requests"
    return f"scored by {backend.model}: {counts}"
