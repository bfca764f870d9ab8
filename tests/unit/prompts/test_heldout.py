"""The held-out set (prompts.heldout): prompts and seeds the outcome is scored on, which leave-one-out and
curation never see."""
import pytest

from vip import config
from vip.config import ConfigError
from vip.orchestrate.preflight import check_disjoint
from vip.prompts.sets import HELDOUT_SEED_BASE, eval_set, heldout_set, load_prompts


def test_the_toyvid_heldout_set_shares_no_prompt_with_the_first_108_evaluation_prompts():
    held, evaluated = load_prompts("toyvid_heldout"), load_prompts("toyvid")
    assert len(held) == len(evaluated) - 108 == 216 and len(set(held)) == 216
    assert not set(held) & set(evaluated[:108])
    assert set(held) | set(evaluated[:108]) == set(evaluated)  # the rest of the grammar, nothing else
    # balanced like the evaluation order: its first 36 use every colour, shape, motion and background
    from vip.toyvid import world
    first = [world.parse(p) for p in held[:36]]
    for factor in ("colour", "shape", "motion", "background"):
        assert len({getattr(p, factor) for p in first}) == len({getattr(p, factor) for p in world.all_prompts()})


def test_heldout_seeds_are_their_own():
    hs, es = heldout_set("toyvid_heldout", 6, 2, run_seed=3), eval_set("toyvid", 36, 2, 3)
    assert hs.seeds[:4] == [3 + HELDOUT_SEED_BASE + i for i in range(4)] and len(hs.prompts) == 12
    assert not set(hs.seeds) & set(es.seeds) and not set(hs.seeds) & set(range(3 + 1_000_000, 3 + 1_100_000))


def test_an_overlap_with_the_evaluation_prompts_is_one_line_naming_the_key():
    check_disjoint(["a", "b"], ["c"])
    with pytest.raises(ConfigError, match=r"'prompts.heldout': 1 of its prompts .* e.g. 'b'"):
        check_disjoint(["a", "b"], ["b", "c", "b"])


def test_the_heldout_keys_change_the_hash_only_when_set():
    base = config.load(None, [])
    assert config.load(None, ["prompts.heldout_count=5"]).hash() == base.hash()
    on = config.load(None, ["prompts.heldout=toyvid_heldout"])
    assert on.hash() != base.hash()
    assert config.load(None, ["prompts.heldout=toyvid_heldout", "prompts.heldout_count=5"]).hash() != on.hash()
    with pytest.raises(ConfigError, match="prompts.heldout_count"):
        config.load(None, ["prompts.heldout_count=-1"])
