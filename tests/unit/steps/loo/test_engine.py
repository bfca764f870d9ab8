"""How the batched leave-one-out engine cuts its jobs into batches."""
from hypothesis import given, strategies as st

from vip.steps.loo.engine import balanced_batch


def _batches(jobs, size):
    return -(-jobs // size)


@given(st.integers(1, 5000), st.integers(1, 256))
def test_balanced_batch_is_the_smallest_that_needs_no_more_batches(jobs, most):
    b = balanced_batch(jobs, most)
    assert 1 <= b <= most
    assert _batches(jobs, b) == _batches(jobs, most)
    assert b == 1 or _batches(jobs, b - 1) > _batches(jobs, most)
    assert _batches(jobs, b) * b - jobs < _batches(jobs, b)  # padding: under one slot per batch


def test_balanced_batch_examples():
    assert balanced_batch(88, 16) == 15  # 6 x 15, not 5 x 16 + 8
    assert balanced_batch(96, 16) == 16 and balanced_batch(3, 16) == 3 and balanced_batch(0, 16) == 16
