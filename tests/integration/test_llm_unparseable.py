"""Unparseable LLM answers (issue 17): re-asked a bounded number of times, never served from the
answer cache, blamed on the backend (not on filter.source) in one line, and no merged output left
behind by a failed filter; the same run directory then succeeds against a working server.

Everything goes through GeminiBackend and google-genai to a local HTTP server (helpers.gemini_server), and
one test through jobs/filter_prompts.py: an integration test, like test_gemini_http.py."""
import sqlite3
import time
from pathlib import Path

import pytest

from vip import config
from vip.prompts.instructions import template_sha256
from vip.prompts.llm import UNPARSEABLE_REASKS, AnswerCache, GeminiBackend
from vip.steps import filter as step
from vip.store import RunDir, atomic_write_json, atomic_write_text

from helpers.gemini_server import KEY, run_filter_job, score_of

MODEL = "gemini-2.0-flash"
GARBAGE = f"Sorry, I cannot score this prompt. (debug: {KEY})"  # no [RESULT]; holds the key, to see it redacted


def overrides(server, tmp_path: Path, *extra: str) -> list[str]:
    return ["filter.backend=gemini", f"filter.base_url={server.url}", f"filter.cache={tmp_path / 'answers.sqlite'}",
            "filter.max_retries=0", "filter.timeout_s=5", "filter.concurrency=2", "runtime.progress=false", *extra]


def backend(server, tmp_path: Path) -> GeminiBackend:
    cfg = config.load(None, overrides(server, tmp_path))
    return GeminiBackend(cfg.filter, AnswerCache(cfg.filter.cache), backoff_base_s=0.01, backoff_cap_s=0.05)


def listing(path: Path) -> set[str]:
    return {str(f.relative_to(path)) for f in path.rglob("*") if f.is_file()} if path.exists() else set()


MERGED = {"filter/scores.h5", "filter/summary.json", "filter/histogram.png",
          *(f"filter/sets/{name}.jsonl" for name in step.SETS)}


# --- the backend ---------------------------------------------------------------------------------------

def test_unparseable_answers_are_asked_again_a_bounded_number_of_times(server, tmp_path, key_env):
    assert UNPARSEABLE_REASKS >= 1
    answers = {"no tag": "The prompt shows a lot of motion.", "seven": "[RESULT] 7", "empty": ""}
    server.behave = lambda p, i, n: (("ok", answers[p]) if p in answers else
                                     ("ok", "[RESULT] 2") if p != "late" or n == UNPARSEABLE_REASKS else
                                     ("ok", "[RESULT] <a score between 0 and 3>"))  # parses on its last re-ask
    b = backend(server, tmp_path)
    assert b.score(["no tag", "seven", "empty", "late", "fine"], "dynamic_motion") == [None, None, None, 2, 2]
    for p in answers:  # asked once, then re-asked exactly UNPARSEABLE_REASKS times
        assert server.seen[(p, "dynamic_motion")] == 1 + UNPARSEABLE_REASKS, p
    assert server.seen[("late", "dynamic_motion")] == 1 + UNPARSEABLE_REASKS
    assert server.seen[("fine", "dynamic_motion")] == 1
    assert b.stats["reasks"] == 4 * UNPARSEABLE_REASKS and b.stats["unparseable"] == 3
    assert b.stats["requests"] == len(server.requests) == 4 * (1 + UNPARSEABLE_REASKS) + 1
    assert b.unparseable[("dynamic_motion", "seven")] == "[RESULT] 7"
    cached = AnswerCache(tmp_path / "answers.sqlite")
    assert set(cached.get_many(MODEL, template_sha256("dynamic_motion"), list(answers) + ["late", "fine"])) == \
        {"late", "fine"} and len(cached) == 2  # unparseable answers are not stored


def test_an_unparseable_answer_cached_by_an_earlier_run_is_asked_again(server, tmp_path, key_env):
    path = tmp_path / "answers.sqlite"
    AnswerCache(path).close()  # the table, as every version creates it
    db = sqlite3.connect(path)  # rows as an earlier version wrote them: it stored every answer
    sha = template_sha256("visual_quality")
    db.executemany("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?)", [
        (MODEL, sha, "a blue sky 3", "I cannot help with that.", None, time.time()),
        (MODEL, sha, "a red ball 1", "[RESULT] 7", None, time.time()),
        (MODEL, sha, "a green tree 2", "[RESULT] 0", 0, time.time()),
    ])
    db.commit()
    db.close()
    b = backend(server, tmp_path)
    assert b.score(["a blue sky 3", "a red ball 1", "a green tree 2"], "visual_quality") == [3, 1, 0]
    assert sorted(r["prompt"] for r in server.requests) == ["a blue sky 3", "a red ball 1"]  # not the parsed one
    assert b.stats["cache_hits"] == 1
    again = backend(server, tmp_path)  # the new answers parse: now they are served from the cache
    assert again.score(["a red ball 1", "a blue sky 3"], "visual_quality") == [1, 3]
    assert again.stats["cache_hits"] == 2 and again.stats["requests"] == 0 and len(server.requests) == 2


# --- the filter ----------------------------------------------------------------------------------------

PROMPTS = [f"a {c} car speeds down a rainy neon street at night {d}"
           for c, d in (("red", 3), ("blue", 3), ("green", 1), ("white", 3), ("black", 3))]


def test_all_unparseable_fails_in_one_line_leaves_no_output_then_a_good_server_succeeds(server, tmp_path):
    src = tmp_path / "prompts.txt"
    src.write_text("\n".join(PROMPTS) + "\n")
    run_dir = tmp_path / "run"
    args = ("--run-dir", str(run_dir), *overrides(server, tmp_path, f"filter.source={src}",
                                                  "filter.prompts_per_task=2"))
    server.behave = lambda p, i, n: ("ok", GARBAGE)
    r = run_filter_job(tmp_path, *args, key=KEY)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert r.stderr.count("error:") == 1
    assert line.startswith(f"error: the visual_quality prompt set is empty: 5 of 5 visual_quality answers from "
                           f"{MODEL} were unparseable (no '[RESULT] 0-3'; 10 of 10 answers in all)"), line
    assert "the 3 tasks holding them are redone" in line
    assert "e.g. 'Sorry, I cannot score this prompt. (debug: <key>)'" in line  # shown, with the key redacted
    assert "unparseable:5" in line and f"filter.model={MODEL}" in line and "re-run" in line
    assert "filter.source" not in line
    assert KEY not in r.stderr + r.stdout
    for (p, i), n in server.seen.items():  # every answer was asked again, a bounded number of times
        assert n == 1 + UNPARSEABLE_REASKS, (p, i)
    assert len(server.seen) == 2 * len(PROMPTS)
    # nothing merged, and no shard whose unparseable answers would make a re-run fail again
    assert listing(run_dir) == {"config.yaml", "config.sha256", "filter/tasks.json"}
    assert len(AnswerCache(tmp_path / "answers.sqlite")) == 0

    server.behave = lambda p, i, n: ("ok", f"Reasoning...\n[RESULT] {score_of(p, i)}")
    before = len(server.requests)
    r = run_filter_job(tmp_path, *args, key=KEY)  # the same directory, nothing deleted by hand
    assert r.returncode == 0, r.stderr
    assert len(server.requests) - before == 2 * len(PROMPTS)  # all asked again: nothing came from the cache
    run = RunDir(run_dir)
    dynamic = [p for p in PROMPTS if p.endswith("3")]
    assert step.prompts_for(run, "dynamic_degree") == dynamic and step.prompts_for(run, "visual_quality") == dynamic
    assert step.prompts_for(run, "text_alignment") == PROMPTS
    assert MERGED <= listing(run_dir)
    assert step.read_summary(run)["unparseable"] == {"dynamic_motion": 0, "visual_quality": 0}


def test_a_partly_unparseable_run_keeps_clean_shards_removes_stale_outputs_and_redoes_the_rest(server, tmp_path,
                                                                                             key_env):
    src = tmp_path / "prompts.txt"
    src.write_text("\n".join(PROMPTS) + "\n")
    cfg = config.load(None, overrides(server, tmp_path, f"filter.source={src}", "filter.prompts_per_task=2"))
    run = RunDir(tmp_path / "run")
    step.preflight(cfg, run)
    assert len(step.plan(run, cfg)["tasks"]) == 3
    # outputs an older version left behind after a failed merge
    atomic_write_text(step.set_path(run, "dynamic_degree"), '{"id": 0, "prompt": "stale"}\n')
    atomic_write_json(step.summary_path(run), {"stale": True})
    atomic_write_text(step.histogram_path(run), "stale")
    before = listing(run.path)

    # task 2 (the last prompt) gets no readable visual-quality answer; the others parse but score 2
    last = PROMPTS[-1]
    server.behave = lambda p, i, n: (("ok", "[RESULT] 3") if i == "dynamic_motion" else
                                     ("ok", "[RESULT]\n\nNo score.") if p == last else ("ok", "[RESULT] 2"))
    b = GeminiBackend(cfg.filter, AnswerCache(cfg.filter.cache), backoff_base_s=0.01)
    for i in step.missing(run, cfg):
        step.run_task(run, cfg, i, b)
    with pytest.raises(step.UnparseableAnswersError) as e:
        step.merge(run, cfg)
    msg = str(e.value)
    assert msg.startswith(f"the visual_quality prompt set is empty: 1 of 5 visual_quality answers from {MODEL} "
                          "were unparseable (no '[RESULT] 0-3'), e.g. '[RESULT]\\n\\nNo score.'"), msg
    assert "visual_quality scores of 5 prompts: 0:0 1:0 2:4 3:0 unparseable:1" in msg and "\n" not in msg
    assert "the task holding them is redone" in msg and "filter.source" not in msg
    assert not step.is_done(run, cfg)
    shard_files = {f"filter/{d}/task_0000{t}{x}" for t in (0, 1) for d, x in (("shards", ".h5"), ("done", ""))}
    assert listing(run.path) == (before - MERGED) | shard_files  # stale outputs gone, clean shards kept
    assert step.missing(run, cfg) == [2]

    server.behave = lambda p, i, n: ("ok", f"[RESULT] {score_of(p, i)}")  # the service works again
    asked = len(server.requests)
    b = GeminiBackend(cfg.filter, AnswerCache(cfg.filter.cache), backoff_base_s=0.01)
    for i in step.missing(run, cfg):
        step.run_task(run, cfg, i, b)
    step.merge(run, cfg)
    assert [r["prompt"] for r in server.requests[asked:]] == [last]  # its dynamic-motion answer was cached
    assert step.is_done(run, cfg) and step.prompts_for(run, "visual_quality") == [last]
