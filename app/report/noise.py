"""Is a difference between two runs real? Seeded bootstrap intervals of the difference of a
statistic, for ``compare``.

Each run's stored per-request values are its sample; values that come in groups (ITL gaps, one
group per request) are resampled with the spread their grouping gives (a design effect), since
the gaps of one request move together. Every interval is seeded: the same runs always get the
same verdicts.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence

BOOTSTRAP_ITERATIONS = 2000
BOOTSTRAP_SEED = 20240601
_EXACT_MEAN_LIMIT = 300
"""Above this many values, a bootstrap mean is drawn from its normal limit (see below)."""


def _percentile_replicate(
    data: Sequence[float], q: int, rng: random.Random, n_eff: float | None = None
) -> float:
    """One bootstrap replicate of the q-th percentile of sorted ``data``, in O(1).

    Resampling n values from the data and taking the percentile (linear between ranks j and j+1)
    only needs those two order statistics of the resample. The k-th smallest of n uniforms is
    Beta(k, n + 1 - k); the next one lies above it like the smallest of the n - k remaining
    uniforms; mapping uniforms through the empirical quantile function (``data[floor(u * n)]``)
    turns them into the resample's order statistics. Same distribution as resampling, at a cost
    that does not grow with n (a soak run has tens of thousands of requests).

    ``n_eff`` (clustered data, see :func:`clustered_n_eff`): resample as if there were only that
    many independent values, still mapping through all ``data``.
    """
    n = len(data)
    m = n if n_eff is None else max(1.0, min(float(n), n_eff))
    h = (m - 1) * q / 100
    j = int(h)
    frac = h - j
    k = j + 1
    u1 = rng.betavariate(k, m + 1 - k)
    low = data[min(int(u1 * n), n - 1)]
    if frac == 0 or k >= m:
        return low
    u2 = u1 + (1 - u1) * rng.betavariate(1, m - k)
    high = data[min(int(u2 * n), n - 1)]
    return low + (high - low) * frac


def _mean_replicate(data: Sequence[float], rng: random.Random, mean: float, se: float) -> float:
    """One bootstrap replicate of the mean: a true resample for small sets, else its normal limit.

    The bootstrap mean of n resampled values has the data's mean and standard error
    pstdev / sqrt(n), and beyond a few hundred values it is close to normal (central limit);
    drawing from that normal keeps a comparison of soak runs instant instead of O(n) per draw.
    """
    if len(data) <= _EXACT_MEAN_LIMIT:
        return statistics.fmean(rng.choices(data, k=len(data)))
    return rng.gauss(mean, se)


def bootstrap_replicates(
    values: Sequence[float],
    statistic: str | int,
    *,
    iterations: int = BOOTSTRAP_ITERATIONS,
    rng: random.Random | None = None,
) -> list[float]:
    """Bootstrap replicates of a statistic (``"mean"`` or a percentile 1..99) of ``values``.

    Raises:
        ValueError: an unknown statistic, or no values.
    """
    data = sorted(float(v) for v in values)
    if not data:
        raise ValueError("bootstrap needs at least one value")
    rng = rng if rng is not None else random.Random(BOOTSTRAP_SEED)
    if statistic == "mean":
        mean = statistics.fmean(data)
        se = statistics.pstdev(data) / math.sqrt(len(data))
        return [_mean_replicate(data, rng, mean, se) for _ in range(iterations)]
    if isinstance(statistic, int) and 1 <= statistic <= 99:
        return [_percentile_replicate(data, statistic, rng) for _ in range(iterations)]
    raise ValueError(f"unknown statistic {statistic!r}: 'mean' or a percentile 1..99")


def clustered_n_eff(groups: Sequence[Sequence[float]], statistic: str | int) -> float:
    """How many independent values clustered data is worth for one statistic (Kish's design effect).

    ITL samples come in requests: the gaps of one request share its batch, its prompt, the
    server's state at that moment, so they move together, and n gaps of r requests carry far
    less information than n independent values. Resampling single gaps would make intervals
    too narrow and call run-to-run drift a real change. The variance of the statistic's
    estimating equation is taken between requests (a ratio estimator over clusters: for a
    percentile, the share of values at or below it; for the mean, the values' deviations) and
    compared with what independent values would give; n_eff = n / that ratio, in [1, n]. With
    one request there is nothing between requests to measure, so the values count as independent.
    """
    sizes = [len(g) for g in groups if g]
    n, r = sum(sizes), len(sizes)
    if r < 2:
        return float(n)
    flat = sorted(v for g in groups for v in g)
    if statistic == "mean":
        mean = statistics.fmean(flat)
        iid = statistics.pvariance(flat, mean) / n
        resid = [sum(g) - mean * len(g) for g in groups if g]
    else:
        x_q = statistics.quantiles(flat, n=100, method="inclusive")[int(statistic) - 1]
        p = sum(1 for v in flat if v <= x_q) / n
        iid = p * (1 - p) / n
        resid = [sum(1 for v in g if v <= x_q) - p * len(g) for g in groups if g]
    between = r / (r - 1) * sum(e * e for e in resid) / (n * n)
    if iid <= 0 or between <= 0:
        return float(n)
    return max(1.0, min(float(n), n * iid / between))


def clustered_replicates(
    groups: Sequence[Sequence[float]],
    statistic: str | int,
    *,
    iterations: int = BOOTSTRAP_ITERATIONS,
    rng: random.Random | None = None,
) -> list[float]:
    """Bootstrap replicates of a statistic of pooled ``groups`` (one list per request), with the
    spread clustering gives (:func:`clustered_n_eff`).

    Raises:
        ValueError: an unknown statistic, or no values.
    """
    data = sorted(float(v) for g in groups for v in g)
    if not data:
        raise ValueError("bootstrap needs at least one value")
    rng = rng if rng is not None else random.Random(BOOTSTRAP_SEED)
    if statistic == "mean":
        n_eff = clustered_n_eff(groups, "mean")
        mean = statistics.fmean(data)
        se = statistics.pstdev(data) / math.sqrt(n_eff)
        return [rng.gauss(mean, se) for _ in range(iterations)]
    if isinstance(statistic, int) and 1 <= statistic <= 99:
        n_eff = clustered_n_eff(groups, statistic)
        return [_percentile_replicate(data, statistic, rng, n_eff) for _ in range(iterations)]
    raise ValueError(f"unknown statistic {statistic!r}: 'mean' or a percentile 1..99")


def bootstrap_ci(
    values: Sequence[float],
    statistic: str | int,
    *,
    confidence: float = 0.95,
    iterations: int = BOOTSTRAP_ITERATIONS,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """Percentile-bootstrap confidence interval of one statistic; ``None`` without values.

    Seeded, so the same values always give the same interval.
    """
    if not values:
        return None
    reps = bootstrap_replicates(values, statistic, iterations=iterations, rng=random.Random(seed))
    return _interval(reps, confidence)


def bootstrap_diff_ci(
    baseline: Sequence[float],
    candidate: Sequence[float],
    statistic: str | int,
    *,
    confidence: float = 0.95,
    iterations: int = BOOTSTRAP_ITERATIONS,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """Confidence interval of ``statistic(candidate) - statistic(baseline)`` (two independent runs).

    Each run is resampled on its own (its requests are its sample), and the interval is taken
    over the differences of paired replicates. When it contains 0, the runs differ by no more
    than their own request-to-request spread explains: the change is within noise.
    ``None`` when either run has no values.
    """
    if not baseline or not candidate:
        return None
    rng = random.Random(seed)
    a = bootstrap_replicates(baseline, statistic, iterations=iterations, rng=rng)
    b = bootstrap_replicates(candidate, statistic, iterations=iterations, rng=rng)
    return _interval([y - x for x, y in zip(a, b, strict=True)], confidence)


def clustered_diff_ci(
    baseline: Sequence[Sequence[float]],
    candidate: Sequence[Sequence[float]],
    statistic: str | int,
    *,
    confidence: float = 0.95,
    iterations: int = BOOTSTRAP_ITERATIONS,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float] | None:
    """:func:`bootstrap_diff_ci` for values that come in groups (ITL: one group per request).
    ``None`` when either run has no values."""
    if not any(baseline) or not any(candidate):
        return None
    rng = random.Random(seed)
    a = clustered_replicates(baseline, statistic, iterations=iterations, rng=rng)
    b = clustered_replicates(candidate, statistic, iterations=iterations, rng=rng)
    return _interval([y - x for x, y in zip(a, b, strict=True)], confidence)


def _interval(replicates: Sequence[float], confidence: float) -> tuple[float, float]:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    tail = (1 - confidence) / 2
    cuts = statistics.quantiles(replicates, n=1000, method="inclusive")
    lo_i = max(0, min(998, round(tail * 1000) - 1))
    hi_i = max(0, min(998, round((1 - tail) * 1000) - 1))
    return cuts[lo_i], cuts[hi_i]


def relative_change(baseline: float | None, candidate: float | None) -> float | None:
    """(candidate - baseline) / baseline, as a fraction; ``None`` when undefined (baseline 0)."""
    if baseline is None or candidate is None or baseline == 0:
        return None
    return (candidate - baseline) / abs(baseline)
