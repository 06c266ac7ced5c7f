"""The statistics behind reports and comparisons: bootstrap intervals (app/report/noise.py),
prefill share and the sustainable rate (core/metrics.py)."""

from __future__ import annotations

import random
import statistics

import pytest

from llmtop.app.report import noise
from llmtop.core import metrics


def skewed(n: int, seed: int, scale: float = 1.0) -> list[float]:
    """Latency-like values: a lognormal body with a long right tail."""
    rng = random.Random(seed)
    return [scale * rng.lognormvariate(5.0, 0.4) for _ in range(n)]


@pytest.mark.parametrize("q", [50, 95])
def test_fast_percentile_replicates_match_plain_resampling(q):
    # The O(1) order-statistic draw must have the distribution of "resample n, take the
    # percentile": compare centre, spread and tails against the plain procedure.
    data = skewed(41, seed=1)
    fast = noise.bootstrap_replicates(data, q, iterations=6000, rng=random.Random(2))
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
    reps = noise.bootstrap_replicates(small, "mean", iterations=3000, rng=random.Random(5))
    se = statistics.pstdev(small) / len(small) ** 0.5
    assert statistics.fmean(reps) == pytest.approx(statistics.fmean(small), rel=0.005)
    assert statistics.pstdev(reps) == pytest.approx(se, rel=0.1)
    large = skewed(20_000, seed=6)
    lo, hi = noise.bootstrap_ci(large, "mean")
    se = statistics.pstdev(large) / len(large) ** 0.5
    assert (hi - lo) == pytest.approx(2 * 1.96 * se, rel=0.1)


def test_interval_is_seeded_and_covers_the_statistic():
    data = skewed(60, seed=7)
    first = noise.bootstrap_ci(data, 95)
    assert first == noise.bootstrap_ci(data, 95)
    assert first[0] <= metrics.percentile(data, 95) <= first[1]
    assert noise.bootstrap_ci([], 50) is None


def test_difference_within_noise_contains_zero_and_a_real_shift_does_not():
    a, b = skewed(80, seed=8), skewed(80, seed=9)  # same distribution, different draws
    for stat in (50, 95, "mean"):
        lo, hi = noise.bootstrap_diff_ci(a, b, stat)
        assert lo < 0 < hi, stat
    slow = skewed(80, seed=9, scale=2.0)  # every value doubled
    lo, hi = noise.bootstrap_diff_ci(a, slow, 50)
    true_shift = metrics.percentile(slow, 50) - metrics.percentile(a, 50)
    assert 0 < lo < true_shift < hi
    assert noise.bootstrap_diff_ci(a, [], 50) is None


def test_bad_statistic_and_confidence_are_refused():
    with pytest.raises(ValueError):
        noise.bootstrap_replicates([1.0], "median")
    with pytest.raises(ValueError):
        noise.bootstrap_replicates([], 50)
    with pytest.raises(ValueError):
        noise.bootstrap_ci([1.0, 2.0], 50, confidence=1.5)


def test_prefill_share_and_relative_change():
    assert metrics.prefill_share(200.0, 800.0) == pytest.approx(0.25)
    assert metrics.prefill_share(None, 800.0) is None
    assert metrics.prefill_share(200.0, 0.0) is None
    assert noise.relative_change(100.0, 150.0) == pytest.approx(0.5)
    assert noise.relative_change(100.0, 50.0) == pytest.approx(-0.5)
    assert noise.relative_change(0.0, 5.0) is None


def test_sustainable_rate_stops_at_the_first_rate_that_breaks_the_slos():
    points = [(4.0, 0.5), (0.5, 1.0), (1.0, 0.95), (2.0, 0.85), (8.0, 0.92)]
    # 2 req/s misses 90 %: the lucky 8 req/s step after it does not count.
    assert metrics.sustainable_rate(points, 0.9) == 1.0
    assert metrics.sustainable_rate([(1.0, 0.5)], 0.9) is None
    assert metrics.sustainable_rate([(1.0, None), (2.0, 1.0)], 0.9) == 2.0


# --- values that come in groups (ITL: the gaps of one request) -----------------------------


def _requests(rng: random.Random, n_req: int, gaps: int, level=lambda r: 20.0, jitter=0.5):
    """``n_req`` requests of ``gaps`` ITL values each around the request's own level."""
    out = []
    for _ in range(n_req):
        mu = level(rng)
        out.append([mu + rng.gauss(0, jitter) for _ in range(gaps)])
    return out


def test_groups_that_move_together_are_worth_about_one_value_each():
    rng = random.Random(1)
    # every request at its own level, its gaps equal: 40 requests carry 40 values' worth
    groups = [[rng.uniform(10, 30)] * 50 for _ in range(40)]
    assert noise.clustered_n_eff(groups, "mean") == pytest.approx(39, abs=0.01)  # R - 1
    for q in (50, 95):
        assert 20 <= noise.clustered_n_eff(groups, q) <= 80  # of 2,000 values


def test_independent_groups_are_worth_all_their_values():
    rng = random.Random(2)
    groups = [[rng.gauss(20, 3) for _ in range(50)] for _ in range(40)]
    for stat in ("mean", 50, 95):
        assert 1300 <= noise.clustered_n_eff(groups, stat) <= 2000, stat


def test_one_group_counts_as_independent_values():
    assert noise.clustered_n_eff([[1.0, 2.0, 3.0]], 50) == 3.0


def test_run_to_run_drift_of_request_levels_is_noise_and_a_real_slowdown_is_not():
    """Two runs of one server whose requests each run at their own pace (batch mates, prompt
    lengths): pooling the gaps as independent values calls the difference real; resampling with
    the grouping does not, and still sees a 1.5x slowdown."""
    rng = random.Random(10)
    levels = [rng.uniform(10, 30) for _ in range(30)]  # sd ~5.8 ms between requests
    a = [[mu + rng.gauss(0, 0.5) for _ in range(60)] for mu in levels]
    # the second run's requests 1 ms slower on average: well inside what 30 requests with a
    # spread of ~6 ms can tell apart (standard error of the difference ~1.5 ms)
    b = [[mu + 1.0 + rng.gauss(0, 0.5) for _ in range(60)] for mu in reversed(levels)]
    flat_a, flat_b = [v for g in a for v in g], [v for g in b for v in g]
    for stat in ("mean", 50):
        naive = noise.bootstrap_diff_ci(flat_a, flat_b, stat)
        grouped = noise.clustered_diff_ci(a, b, stat)
        assert naive is not None and grouped is not None
        assert not naive[0] <= 0 <= naive[1], (stat, naive)  # the naive interval is fooled
        assert grouped[0] <= 0 <= grouped[1], (stat, grouped)
    slow = [[v * 1.5 for v in g] for g in b]
    for stat in ("mean", 50, 95):
        lo, _ = noise.clustered_diff_ci(a, slow, stat)
        assert lo > 0, stat


def test_grouped_percentile_replicates_match_resampling_whole_requests():
    """The design-effect shortcut against the plain cluster bootstrap (resample requests, pool
    their gaps, take the percentile): same spread within sampling error."""
    rng = random.Random(3)
    groups = _requests(rng, 25, 30, lambda r: r.uniform(10, 30), jitter=2.0)
    fast = noise.clustered_replicates(groups, 50, iterations=2000, rng=random.Random(4))
    plain_rng = random.Random(5)
    plain = []
    for _ in range(2000):
        pooled = [v for g in plain_rng.choices(groups, k=len(groups)) for v in g]
        plain.append(metrics.percentile(pooled, 50))
    assert statistics.pstdev(fast) == pytest.approx(statistics.pstdev(plain), rel=0.25)
    assert statistics.fmean(fast) == pytest.approx(statistics.fmean(plain), rel=0.02)
