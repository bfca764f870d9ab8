"""Packed mode's share-out of tasks over ranks, and one rank working through its share (no cluster)."""
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vip.orchestrate import packed
from vip.orchestrate.stepjobs import ARRAY_STEPS, ArrayStep


@given(tasks=st.lists(st.integers(0, 10_000), unique=True, max_size=60), world=st.integers(1, 16))
def test_the_shares_cover_every_task_once_and_follow_the_rule(tasks, world):
    shares = [packed.share(tasks, r, world) for r in range(world)]
    assert sorted(t for s in shares for t in s) == sorted(tasks)  # every task exactly once
    for r, s in enumerate(shares):
        assert s == [t for k, t in enumerate(tasks) if k % world == r]  # rank r: positions r, r+R, ...
        assert all(packed.rank_of(tasks, t, world) == r for t in s)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 3"):
        packed.share([0, 1], 3, 3)


def _spec(done: set, ran: list):
    return ArrayStep(missing=lambda ctx: [i for i in range(5) if i not in done],
                     run=lambda ctx, i: (ran.append(i), done.add(i)), done=lambda ctx, i: i in done,
                     count=lambda ctx: 5)


def test_a_rank_runs_its_share_and_skips_finished_tasks():
    ctx = SimpleNamespace(stage=1)
    done, ran = {2}, []
    records = packed.run_rank(ctx, "toy", 0, 2, spec=_spec(done, ran), log=lambda *a, **k: None)
    assert ran == [0, 4]  # tasks 0, 2, 4 of range(5); 2 was done
    assert [(r["task"], r["skipped"], r["rank"], r["world"]) for r in records] == \
        [(0, False, 0, 2), (2, True, 0, 2), (4, False, 0, 2)]
    # the same rank requeued: everything of its share is done now
    ran.clear()
    again = packed.run_rank(ctx, "toy", 0, 2, spec=_spec(done, ran), log=lambda *a, **k: None)
    assert ran == [] and all(r["skipped"] for r in again)
    # a resubmitted job covers the missing tasks only, shared out afresh over its ranks
    ran.clear()
    packed.run_rank(ctx, "toy", 1, 2, tasks=[1, 3], spec=_spec(done, ran), log=lambda *a, **k: None)
    assert ran == [3]


def test_every_fanned_out_step_can_be_packed():
    assert set(ARRAY_STEPS) == {"loo", "pairs", "filter"}
    assert all(spec.count is not None for spec in ARRAY_STEPS.values())
