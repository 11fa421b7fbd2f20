"""95% Wilson score intervals of reported rates."""

import pytest

from erasekit.eval.metrics import rate_intervals, wilson_interval


@pytest.mark.parametrize("k, n, low, high", [
    (0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634), (10, 10, 0.7225, 1.0),  # textbook values
])
def test_wilson_interval_matches_published_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_rates_on_32_prompts_overlap_and_tiers_get_their_own():
    assert wilson_interval(1, 32)[1] > 2 / 32 and wilson_interval(2, 32)[0] < 1 / 32  # 0.03 vs 0.06: overlapping
    out = rate_intervals([True, False, False, True, True, True], ["a", "a", "a", "b", "b", "b"])
    assert out["a"] == list(wilson_interval(1, 3)) and out["b"] == list(wilson_interval(3, 3))
    assert out["all"] == list(wilson_interval(4, 6))
    assert wilson_interval(0, 0) == (0.0, 1.0)
