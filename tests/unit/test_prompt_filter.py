"""Prompt filtering rules (supplement F, C.3): answer parsing, the wording rule, sets, the DD metric,
the toyvid backend and the filter step on it."""
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vip import config
from vip.config import ConfigError
from vip.prompts import filters
from vip.prompts.instructions import DYNAMIC_MOTION, INSTRUCTIONS, VISUAL_QUALITY, instruction_sha256, \
    parse_result, request_text, template_sha256
from vip.prompts.llm import ToyvidBackend, backoff_delay, cache_path, check_backend
from vip.prompts.sets import load_prompts
from vip.steps import filter as step
from vip.store import IncompleteError, RunDir, read_h5
from vip.toyvid import world


# --- instructions and answers ---------------------------------------------------------------------

def test_listings_are_the_papers():
    for text in (DYNAMIC_MOTION, VISUAL_QUALITY):
        assert text.startswith("###Task Overview:\nYou are a model responsible for scoring prompts")
        assert text.endswith("### Output format:\nAlways return your result in this format:\n"
                             "[RESULT] <a score between 0 and 3>\n")
        assert "\n\n\n" not in text
    assert "- 3: A cyclist racing through a city, dodging traffic." in DYNAMIC_MOTION
    assert "a person\nblinking, tree leaves rustling" in DYNAMIC_MOTION  # the PDF's blank line dropped
    assert "- Score 2: A snow-covered mountain with a few clouds in the sky." in VISUAL_QUALITY


def test_request_text_and_hashes():
    text = request_text(DYNAMIC_MOTION, "a dog\nrunning")
    assert text.startswith(DYNAMIC_MOTION) and text.endswith("### Prompt:\na dog\nrunning")
    assert instruction_sha256("x") == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    assert template_sha256("dynamic_motion") != template_sha256("visual_quality")
    assert template_sha256("dynamic_motion") != instruction_sha256(DYNAMIC_MOTION)  # covers the framing too


@pytest.mark.parametrize("answer, score", [
    ("[RESULT] 3", 3), ("[RESULT] 0", 0), ("[RESULT]2", 2), ("[RESULT]: 1", 1), ("[result] 1", 1),
    ("**[RESULT] 2**", 2), ("[RESULT] **3**", 3), ("[RESULT] 3.", 3), ("[RESULT] 3\n", 3),
    ("The prompt shows running.\n[RESULT] 3", 3),
    ("[RESULT] <a score between 0 and 3>\n[RESULT] 1", 1),  # restated format first: the last tag counts
    ("[RESULT] 1 ... on reflection [RESULT] 2", 2),
    ("[RESULT] 2 then [RESULT] <a score between 0 and 3>", None),  # last tag unreadable: no score
    ("[RESULT] 4", None), ("[RESULT] 10", None), ("[RESULT] -1", None), ("[RESULT] 2.5", None),
    ("[RESULT] 3/3", None), ("[RESULT] three", None), ("[RESULT]", None),
    ("3", None), ("Score: 3", None), ("", None), (None, None),
])
def test_parse_result(answer, score):
    assert parse_result(answer) == score


@given(st.text().filter(lambda t: "[result]" not in t.lower()), st.integers(0, 3))
def test_parse_result_reads_a_final_tag_after_any_text(prefix, k):
    assert parse_result(f"{prefix}[RESULT] {k}") == k


@given(st.text())
def test_parse_result_never_raises_and_stays_in_range(text):
    assert parse_result(text) in (None, 0, 1, 2, 3)


# --- the text-alignment wording rule ------------------------------------------------------------------

@pytest.mark.parametrize("prompt, n", [
    ("a dog runs", 2), ("The dog runs across an open field", 5), ("A THE an dog", 1),
    ("a snow-covered mountain , at dawn", 4), ("photorealistic 8k shot - steam", 4),
    ("\"The\" cat (a) sits", 2), ("thea anthem", 2),  # only whole-word articles are dropped
])
def test_words_drop_articles_and_punctuation(prompt, n):
    assert len(filters.words(prompt)) == n


@pytest.mark.parametrize("prompt, single", [
    ("A dog runs.", True), ("A dog runs!", True), ("A dog runs...", True), ("A dog runs", True),
    ("A dog runs. A cat sleeps", False), ("A dog runs! Then stops.", False), ("Why? Because.", False),
    ("A dog runs; a cat sleeps, quietly", True), ("Mr. Smith walks his dog.", True),
    ("Dr. Who flies, e.g. over St. Paul's.", True), ("J. R. R. Tolkien writes.", True),
    ("A 2.5 m tall robot walks in the U.S.A. at night", True), ("A dog\nruns across\nthe field", True),
    ("\"Run.\" he said", False), ("A dog runs.\nA cat sleeps.", False),
])
def test_single_sentence(prompt, single):
    assert filters.is_single_sentence(prompt) is single


def _sentence(n: int) -> str:
    return "the " + " ".join(f"w{i}" for i in range(n)) + "."


@pytest.mark.parametrize("n, ok", [(4, False), (5, True), (25, True), (26, False)])
def test_text_alignment_word_bounds_are_inclusive(n, ok):
    assert filters.text_alignment_ok(_sentence(n)) is ok
    assert filters.text_alignment_ok("A an the " + _sentence(n)) is ok  # articles never count


def test_text_alignment_rejects_two_sentences_of_the_right_length():
    assert not filters.text_alignment_ok("A dog runs in the park. A cat sleeps on the mat.")


_word = st.text(alphabet="bcdefghijklmnopqrstuvwxyz", min_size=2, max_size=8).filter(lambda w: w not in filters.ARTICLES)


@settings(max_examples=60)
@given(st.lists(_word, min_size=1, max_size=30), st.lists(st.sampled_from(["a", "an", "the", "A", "The"]),
                                                          max_size=5))
def test_articles_never_change_the_rule(content, articles):
    plain = " ".join(content)
    padded = " ".join(articles + content)
    assert len(filters.words(padded)) == len(content)
    assert filters.text_alignment_ok(padded) == filters.text_alignment_ok(plain) == (5 <= len(content) <= 25)


# --- sets and the dynamic-degree metric ---------------------------------------------------------------

def test_sets_follow_the_rules():
    prompts = ["a red car drives fast down the road"] * 6 + ["two. sentences here are not one"]
    dm = [3, 2, 1, 0, -1, 3, 3]
    vq = [3, 1, 3, 3, 3, 0, 2]
    m = filters.select(prompts, dm, vq)
    assert m["dynamic_degree"].tolist() == [True, False, False, False, False, True, True]
    assert m["temporal_consistency"].tolist() == m["dynamic_degree"].tolist()
    assert m["visual_quality"].tolist() == [True, False, True, True, True, False, False]
    assert m["text_alignment"].tolist() == [True, True, True, False, False, False, False]  # 0/-1 anywhere: out
    assert m["static"].tolist() == [False, True, True, False, False, False, False]
    assert m["dynamic"].tolist() == m["dynamic_degree"].tolist()
    assert not (m["static"] & m["dynamic"]).any()
    with pytest.raises(ValueError):
        filters.select(prompts, dm[:-1], vq)


@settings(max_examples=60)
@given(st.lists(st.tuples(st.integers(-1, 3), st.integers(-1, 3)), min_size=1, max_size=40))
def test_set_properties(scores):
    dm, vq = [s[0] for s in scores], [s[1] for s in scores]
    m = filters.select(["a dog runs in the park"] * len(scores), dm, vq)
    assert (m["dynamic"] | m["static"]).sum() == sum(1 <= d <= 3 for d in dm)  # 0 and unparseable in neither
    assert not (m["text_alignment"] & ((np.array(dm) < 1) | (np.array(vq) < 1))).any()
    assert (m["visual_quality"] == (np.array(vq) == 3)).all()


def test_histogram_counts_unparseable():
    assert filters.histogram([3, 3, 1, -1, 0]) == {"0": 1, "1": 1, "2": 0, "3": 2, "unparseable": 1}


def test_dynamic_degree_metric_by_hand():
    # prompts: D D D S S ; videos: dyn, static, dyn, static, dyn -> matches: 1 0 1 1 0 = 3/5
    assert filters.dynamic_degree_metric([True, False, True, False, True], [True, True, True, False, False]) == 0.6
    assert filters.dynamic_degree_metric([True], [True]) == 1.0
    assert filters.dynamic_degree_metric([False, False], [True, True]) == 0.0
    with pytest.raises(ValueError):
        filters.dynamic_degree_metric([], [])
    with pytest.raises(ValueError):
        filters.dynamic_degree_metric([True], [True, False])


@given(st.lists(st.tuples(st.booleans(), st.booleans()), min_size=1, max_size=50))
def test_dynamic_degree_metric_properties(pairs):
    v, p = [a for a, _ in pairs], [b for _, b in pairs]
    dd = filters.dynamic_degree_metric(v, p)
    assert 0.0 <= dd <= 1.0
    assert dd == pytest.approx(1.0 - filters.dynamic_degree_metric([not x for x in v], p))
    assert filters.dynamic_degree_metric(p, p) == 1.0


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


# --- the step on the toyvid backend ------------------------------------------------------------------

@pytest.fixture
def toy_run(tmp_path):
    cfg = config.load(None, ["filter.prompts_per_task=5", "runtime.progress=false"])
    run = RunDir(tmp_path / "run")
    step.preflight(cfg, run)
    return cfg, run


def test_step_plans_scores_merges_and_reads_sets(toy_run):
    cfg, run = toy_run
    planned = step.plan(run, cfg)
    assert len(planned["prompts"]) == 324 and len(planned["tasks"]) == 65
    assert planned["tasks"][-1] == [320, 324]
    with pytest.raises(IncompleteError, match="has not finished"):
        step.prompts_for(run, "dynamic_degree")
    for i in step.missing(run, cfg):
        step.run_task(run, cfg, i)
    assert step.missing(run, cfg) == [] and not step.is_done(run, cfg)
    step.merge(run, cfg)
    assert step.is_done(run, cfg)
    dd = step.prompts_for(run, "dynamic_degree")
    assert len(dd) == 216 and all(world.parse(p).motion not in ("still", "bounce") for p in dd)
    assert step.prompts_for(run, "temporal_consistency") == dd
    static, dynamic = step.static_dynamic(run)
    assert dynamic == dd and len(static) == 108
    assert len(step.prompts_for(run, "visual_quality")) == 126
    assert len(step.prompts_for(run, "text_alignment")) == 324
    assert load_prompts(str(step.set_path(run, "visual_quality"))) == step.prompts_for(run, "visual_quality")
    arrays, attrs = read_h5(step.scores_path(run))
    assert attrs["config_sha256"] == cfg.hash() and arrays["prompts"].tolist() == planned["prompts"]
    summary = step.read_summary(run)
    assert summary["unparseable"] == {"dynamic_motion": 0, "visual_quality": 0}
    assert step.histogram_path(run).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ConfigError, match="no prompt set for aspect"):
        step.prompts_for(run, "factual_consistency")


def test_merge_names_a_missing_task(toy_run):
    cfg, run = toy_run
    n = len(step.plan(run, cfg)["tasks"])
    for i in range(n):
        if i != 7:
            step.run_task(run, cfg, i)
    with pytest.raises(IncompleteError, match="task_00007.h5"):
        step.merge(run, cfg)
    assert step.missing(run, cfg) == [7]


def test_an_empty_set_names_its_filter_and_histogram(tmp_path):
    src = tmp_path / "still.txt"
    src.write_text("\n".join([p.text for p in world.all_prompts() if p.motion == "still"][:6]) + "\n")
    cfg = config.load(None, [f"filter.source={src}"])
    run = RunDir(tmp_path / "run")
    step.preflight(cfg, run)
    step.run_task(run, cfg, 0)
    with pytest.raises(step.EmptySetError) as e:
        step.merge(run, cfg)
    msg = str(e.value)
    assert msg.startswith("the temporal_consistency prompt set is empty: it uses the dynamic-degree set")
    assert "dynamic_motion scores of 6 prompts: 0:0 1:6 2:0 3:0 unparseable:0" in msg and "\n" not in msg
    assert msg.endswith("use a larger or more varied filter.source")  # every answer parsed: the source is to blame
    assert not isinstance(e.value, step.UnparseableAnswersError)
    # nothing merged is left behind; the shard stays done (its answers parsed, re-asking would not help)
    assert not step.is_done(run, cfg) and not step.histogram_path(run).exists()
    assert not step.summary_path(run).exists() and not step.set_path(run, "static").parent.exists()
    assert step.missing(run, cfg) == []


def test_a_changed_config_is_refused(toy_run):
    cfg, run = toy_run
    step.plan(run, cfg)
    other = config.load(None, ["filter.prompts_per_task=7"])
    with pytest.raises(ConfigError, match="another config"):
        step.run_task(run, other, 0)
    with pytest.raises(ConfigError, match="another config"):
        step.preflight(other, run)


def test_sets_are_jsonl_with_ids(toy_run):
    cfg, run = toy_run
    for i in step.missing(run, cfg):
        step.run_task(run, cfg, i)
    step.merge(run, cfg)
    rows = [json.loads(line) for line in step.set_path(run, "static").read_text().splitlines()]
    prompts = step.plan(run, cfg)["prompts"]
    assert len(rows) == 108 and all(prompts[r["id"]] == r["prompt"] for r in rows)
    arrays, _ = read_h5(step.scores_path(run))
    assert set(arrays) == {"prompts", *INSTRUCTIONS}


def test_prompt_file_extensions(tmp_path):
    (tmp_path / "plain").write_text("a fox runs über the snow\n", encoding="utf-8")
    assert load_prompts(str(tmp_path / "plain")) == ["a fox runs über the snow"]
    (tmp_path / "p.yaml").write_text("- a dog\n")
    with pytest.raises(ConfigError, match=r"unknown extension '\.yaml'.*expected \.txt") as e:
        load_prompts(str(tmp_path / "p.yaml"), key="filter.source")
    assert str(e.value).startswith("filter.source:") and "\n" not in str(e.value)
    (tmp_path / "n.jsonl").write_text('{"prompt": 3}\n')
    with pytest.raises(ConfigError, match="line 1 has no 'prompt' field holding text"):
        load_prompts(str(tmp_path / "n.jsonl"))
