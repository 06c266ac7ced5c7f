"""The statistics behind reports and comparisons: bootstrap intervals, prefill share, SLO rate."""

from __future__ import annotations

import random
import statistics

import pytest

from llmtop.collectors import metrics


def skewed(n: int, seed: int, scale: float = 1.0) -> list[float]:
    """Latency-like values: a lognormal body with a long right tail."""
    rng = random.Random(seed)
    return [scale * rng.lognormvariate(5.0, 0.4) for _ in range(n)]


@pytest.mark.parametrize("q", [50, 95])
def test_fast_percentile_replicates_match_plain_resampling(q):
    # The O(1) order-statistic draw must have the distribution of "resample n, take the
    # percentile": compare centre, spread and tails against the plain procedure.
    data = skewed(41, seed=1)
    fast = metrics.bootstrap_replicates(data, q, iterations=6000, rng=random.Random(2))
    rng = random.Random(3)
    plain = [metrics.percentile(rng.choices(data, k=len(data)), q) for _ in range(6000)]
    assert statistics.fmean(fast) == pytest.approx(statistics.fmean(plain), rel=0.01)
    assert statistics.pstdev(fast) == pytest.approx(statistics.pstdev(plain), rel=0.08)
    for cut_fast, cut_plain in zip(
        statistics.quantiles(fast, n=20), statistics.quantiles(plain, n=20), strict=True
    ):
        assert cut_fast == pytest.approx(cut_plain, rel=0.03)


def test_mean_replicates_small_sets_resample_and_large_sets_follow_the_normal_limit():
    small = skewed(100, seed=4)
    reps = metrics.bootstrap_replicates(small, "mean", iterations=3000, rng=random.Random(5))
    se = statistics.pstdev(small) / len(small) ** 0.5
    assert statistics.fmean(reps) == pytest.approx(statistics.fmean(small), rel=0.005)
    assert statistics.pstdev(reps) == pytest.approx(se, rel=0.1)
    large = skewed(20_000, seed=6)
    lo, hi = metrics.bootstrap_ci(large, "mean")
    se = statistics.pstdev(large) / len(large) ** 0.5
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_interval_is_seeded_and_covers_the_statistic():
    data = skewed(60, seed=7)
    first = metrics.bootstrap_ci(data, 95)
    assert first == metrics.bootstrap_ci(data, 95)
    assert first[0] <= metrics.percentile(data, 95) <= first[1]
    assert metrics.bootstrap_ci([], 50) is None


def test_difference_within_noise_contains_zero_and_a_real_shift_does_not():
    a, b = skewed(80, seed=8), skewed(80, seed=9)  # same distribution, different draws
    for stat in (50, 95, "mean"):
        lo, hi = metrics.bootstrap_diff_ci(a, b, stat)
        assert lo < 0 < hi, stat
    slow = skewed(80, seed=9, scale=2.0)  # every value doubled
    lo, hi = metrics.bootstrap_diff_ci(a, slow, 50)
    true_shift = metrics.percentile(slow, 50) - metrics.percentile(a, 50)
    assert 0 < lo < true_shift < hi
    assert metrics.bootstrap_diff_ci(a, [], 50) is None


def test_bad_statistic_and_confidence_are_refused():
    with pytest.raises(ValueError):
        metrics.bootstrap_replicates([1.0], "median")
    with pytest.raises(ValueError):
        metrics.bootstrap_replicates([], 50)
    with pytest.raises(ValueError):
        metrics.bootstrap_ci([1.0, 2.0], 50, confidence=1.5)


def test_prefill_share_and_relative_change():
    assert metrics.prefill_share(200.0, 800.0) == pytest.approx(0.25)
    assert metrics.prefill_share(None, 800.0) is None
    assert metrics.prefill_share(200.0, 0.0) is None
    assert metrics.relative_change(100.0, 150.0) == pytest.approx(0.5)
    assert metrics.relative_change(100.0, 50.0) == pytest.approx(-0.5)
    assert metrics.relative_change(0.0, 5.0) is None


def test_sustainable_rate_stops_at_the_first_rate_that_breaks_the_slos():
    points = [(4.0, 0.5), (0.5, 1.0), (1.0, 0.95), (2.0, 0.85), (8.0, 0.92)]
    # 2 req/s misses 90 %: the lucky 8 req/s step after it does not count.
    assert metrics.sustainable_rate(points, 0.9) == 1.0
    assert metrics.sustainable_rate([(1.0, 0.5)], 0.9) is None
    assert metrics.sustainable_rate([(1.0, None), (2.0, 1.0)], 0.9) == 2.0
