"""Checks that an equivalence test's data can differ: equal constant arrays prove nothing (an untrained
toyvid model scores every clip 1.0 with or without any unit)."""
import numpy as np


def assert_variants_differ(scores, min_spread: float = 0.1, what: str = "scores") -> None:
    """Every variant (axis 0) differs from the first (the full model) somewhere by more than `min_spread`,
    and the values are not one constant."""
    a = np.asarray(scores, dtype=np.float64)
    assert np.isfinite(a).any() and np.nanmax(a) - np.nanmin(a) > min_spread, f"{what} are constant: {a.ravel()[:8]}"
    for i in range(1, len(a)):
        gap = np.nanmax(np.abs(a[i] - a[0]))
        assert gap > min_spread, f"{what}: variant {i} scores like the full model (max gap {gap:.3g})"


def assert_varies(values, min_spread: float = 0.1, what: str = "values") -> None:
    a = np.asarray(values, dtype=np.float64)
    assert np.nanmax(a) - np.nanmin(a) > min_spread, f"{what} are (nearly) constant: {a.ravel()[:8]}"
