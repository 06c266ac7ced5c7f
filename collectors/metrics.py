"""The one place llmtop's numbers are defined (DESIGN.md, "Metric definitions").

For one request: t0 = request written, t1 = first content chunk, tN = last content chunk,
tend = final chunk, n = output tokens (the server's count when it gives one, else counted).

- TTFT = t1 - t0;  E2E = tend - t0
- ITL = gaps between consecutive content chunks; a chunk of k tokens counts as k tokens spread
  evenly over its gap (k samples of gap/k). When the server's count differs from the chunks'
  own counts, the server's tokens are spread evenly over the chunks. The first chunk's tokens
  have no gap before them (TTFT covers them), so a request gives n - k(first) ITL samples.
- TPOT = (tN - t1) / (n - 1) for n >= 2;  decode TPS = (n - 1) / (tN - t1);  overall TPS = n / (tend - t0)
- server TPS = eval_count / eval_duration;  server TTFT share = prompt_eval_duration / total_duration
- run level: req/s and output tok/s over the measured window (first start to last end),
  mean and P50/P90/P95/P99 (linear interpolation between closest ranks, as numpy's default and
  Excel's PERCENTILE.INC), error rate, goodput = share of requests that succeeded and met every SLO.

Every function is pure; a value that cannot be defined (TPOT of a one-token answer) is ``None``.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from llmtop.collectors.events import RequestFinished, ServerTimings

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)


# --- one request -------------------------------------------------------------------------------


def ttft_ms(t_start_ns: int, t_first_ns: int | None) -> float | None:
    """Time to first token: from the request written to the first chunk with content."""
    if t_first_ns is None:
        return None
    return (t_first_ns - t_start_ns) / NS_PER_MS


def e2e_ms(t_start_ns: int, t_end_ns: int) -> float:
    """End-to-end latency: from the request written to the final chunk."""
    return (t_end_ns - t_start_ns) / NS_PER_MS


def tpot_ms(t_first_ns: int | None, t_last_ns: int | None, n: int) -> float | None:
    """Time per output token after the first: (tN - t1) / (n - 1), for n >= 2."""
    if t_first_ns is None or t_last_ns is None or n < 2:
        return None
    return (t_last_ns - t_first_ns) / NS_PER_MS / (n - 1)


def decode_tps(t_first_ns: int | None, t_last_ns: int | None, n: int) -> float | None:
    """Client-side decode rate: (n - 1) / (tN - t1); ``None`` when all tokens came in one chunk."""
    if t_first_ns is None or t_last_ns is None or n < 2 or t_last_ns <= t_first_ns:
        return None
    return (n - 1) / ((t_last_ns - t_first_ns) / NS_PER_S)


def overall_tps(t_start_ns: int, t_end_ns: int, n: int) -> float | None:
    """Output tokens over the whole request: n / (tend - t0)."""
    if t_end_ns <= t_start_ns or n <= 0:
        return None
    return n / ((t_end_ns - t_start_ns) / NS_PER_S)


def server_tps(eval_count: int | None, eval_ns: int | None) -> float | None:
    """The server's own decode rate (Ollama): eval_count / (eval_duration / 1e9)."""
    if not eval_count or not eval_ns:
        return None
    return eval_count / (eval_ns / NS_PER_S)


def server_ttft_share(prompt_eval_ns: int | None, total_ns: int | None) -> float | None:
    """Share of the server's total time spent on the prompt (prefill)."""
    if prompt_eval_ns is None or not total_ns:
        return None
    return prompt_eval_ns / total_ns


def itl_ms(
    t_ns: Sequence[int], n_tokens: Sequence[int] | None = None, total_tokens: int | None = None
) -> list[float]:
    """Inter-token latencies of one request from its content chunks' arrival times.

    Args:
        t_ns: arrival time of each content chunk, in order.
        n_tokens: tokens carried by each chunk (default 1 each).
        total_tokens: the server's count; when it differs from ``sum(n_tokens)``, that many
            tokens are spread evenly over the chunks instead.

    Returns:
        One value per token after the first chunk, in ms.
    """
    m = len(t_ns)
    if m < 2:
        return []
    counts = list(n_tokens) if n_tokens is not None else [1] * m
    if total_tokens is not None and total_tokens > 0 and total_tokens != sum(counts):
        counts = _spread(total_tokens, m)
    out: list[float] = []
    for i in range(1, m):
        k = counts[i]
        if k <= 0:
            continue
        gap = (t_ns[i] - t_ns[i - 1]) / NS_PER_MS / k
        out.extend([gap] * k)
    return out


def _spread(total: int, chunks: int) -> list[int]:
    """``total`` tokens over ``chunks`` chunks as evenly as integers allow (cumulative rounding)."""
    per = total / chunks
    counts, prev = [], 0
    for i in range(1, chunks + 1):
        cum = round(per * i)
        counts.append(cum - prev)
        prev = cum
    return counts


@dataclass(frozen=True, slots=True)
class RequestMetrics:
    """Every per-request number, measured on the wire and reported by the server side by side."""

    output_tokens: int
    ttft_ms: float | None
    e2e_ms: float
    tpot_ms: float | None
    decode_tps: float | None
    overall_tps: float | None
    server_tps: float | None
    server_ttft_ms: float | None
    server_ttft_share: float | None
    load_ms: float | None


def request_metrics(ev: RequestFinished) -> RequestMetrics:
    """All metrics of one finished request."""
    n = ev.output_tokens
    s: ServerTimings = ev.server
    return RequestMetrics(
        output_tokens=n,
        ttft_ms=ttft_ms(ev.t_start_ns, ev.t_first_ns),
        e2e_ms=e2e_ms(ev.t_start_ns, ev.t_ns),
        tpot_ms=tpot_ms(ev.t_first_ns, ev.t_last_ns, n),
        decode_tps=decode_tps(ev.t_first_ns, ev.t_last_ns, n),
        overall_tps=overall_tps(ev.t_start_ns, ev.t_ns, n),
        server_tps=server_tps(s.output_tokens, s.eval_ns),
        server_ttft_ms=None if s.prompt_eval_ns is None else s.prompt_eval_ns / NS_PER_MS,
        server_ttft_share=server_ttft_share(s.prompt_eval_ns, s.total_ns),
        load_ms=None if s.load_ns is None else s.load_ns / NS_PER_MS,
    )


# --- many requests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Stats:
    """Distribution of one metric over a set of requests (or ITL samples)."""

    n: int
    mean: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    min: float | None
    max: float | None

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "n": self.n,
            "mean": self.mean,
            "p50": self.p50,
            "p90": self.p90,
            "p95": self.p95,
            "p99": self.p99,
            "min": self.min,
            "max": self.max,
        }


EMPTY_STATS = Stats(0, None, None, None, None, None, None, None)


def percentile(values: Sequence[float], q: int) -> float | None:
    """The q-th percentile (integer 1..99), linear between closest ranks; ``None`` for no values."""
    if not 1 <= q <= 99:
        raise ValueError(f"percentile must be 1..99, got {q}")
    if not values:
        return None
    if len(values) == 1:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def summarize(values: Iterable[float | None]) -> Stats:
    """Mean, P50/P90/P95/P99, min and max of the values that are not ``None``."""
    data = [float(v) for v in values if v is not None]
    if not data:
        return EMPTY_STATS
    if len(data) == 1:
        v = data[0]
        return Stats(1, v, v, v, v, v, v, v)
    cuts = statistics.quantiles(data, n=100, method="inclusive")
    return Stats(
        n=len(data),
        mean=statistics.fmean(data),
        p50=cuts[49],
        p90=cuts[89],
        p95=cuts[94],
        p99=cuts[98],
        min=min(data),
        max=max(data),
    )


def rate_per_s(count: float, t_from_ns: int | None, t_to_ns: int | None) -> float | None:
    """``count`` per second over a window; ``None`` for an empty or zero-length window."""
    if t_from_ns is None or t_to_ns is None or t_to_ns <= t_from_ns:
        return None
    return count / ((t_to_ns - t_from_ns) / NS_PER_S)


@dataclass(frozen=True, slots=True)
class Slo:
    """Service-level objectives a request must meet to count as good; ``None`` means no limit."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    @property
    def is_set(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.e2e_ms))


def meets_slo(
    slo: Slo, ok: bool, ttft: float | None, tpot: float | None, e2e: float | None
) -> bool:
    """Whether one request counts toward goodput.

    A failed request never does. A request without a TTFT (empty answer) fails a TTFT objective;
    one without a TPOT (a one-token answer has no decode to judge) passes a TPOT objective.
    """
    if not ok:
        return False
    if slo.ttft_ms is not None and (ttft is None or ttft > slo.ttft_ms):
        return False
    if slo.tpot_ms is not None and tpot is not None and tpot > slo.tpot_ms:
        return False
    return not (slo.e2e_ms is not None and (e2e is None or e2e > slo.e2e_ms))


def goodput(
    slo: Slo, requests: Iterable[tuple[bool, float | None, float | None, float | None]]
) -> float | None:
    """Share (0..1) of requests ``(ok, ttft_ms, tpot_ms, e2e_ms)`` that succeeded and met the SLOs.

    ``None`` when there are no requests. Without objectives, goodput is the success rate.
    """
    total = good = 0
    for ok, ttft, tpot, e2e in requests:
        total += 1
        good += meets_slo(slo, ok, ttft, tpot, e2e)
    return good / total if total else None


# --- derived and comparative (reports, compare) ----------------------------------------------


def prefill_share(ttft_ms_mean: float | None, e2e_ms_mean: float | None) -> float | None:
    """Share (0..1) of the mean end-to-end latency spent before the first token (prefill).

    The learner's question "how much of my latency is prefill?" answered from run statistics:
    mean TTFT over mean E2E of the same requests.
    """
    if ttft_ms_mean is None or not e2e_ms_mean or e2e_ms_mean <= 0:
        return None
    return ttft_ms_mean / e2e_ms_mean


def sustainable_rate(
    points: Iterable[tuple[float, float | None]], target: float = 0.9
) -> float | None:
    """The highest offered rate (req/s) at which goodput still met ``target``, walking up.

    ``points`` are ``(offered rate, goodput 0..1)`` of a rate sweep. The walk stops at the first
    rate that misses the target, so a lucky higher step after the SLOs broke does not count.
    ``None`` when even the lowest rate missed it or no rate had a goodput.
    """
    best = None
    for rate, good in sorted((r, g) for r, g in points if g is not None):
        if good < target:
            break
        best = rate
    return best


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


# --- server-side histograms (Prometheus /metrics) ----------------------------------------------


def histogram_quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The q-quantile (0..1) of a Prometheus histogram, as Prometheus' ``histogram_quantile``.

    ``buckets`` are ``(upper bound le, cumulative count)`` in increasing ``le``, the last one
    ``+Inf``. The rank ``q * total`` is found in its bucket and interpolated linearly between
    the bucket's bounds (the first bucket starts at 0); a rank in the ``+Inf`` bucket gives the
    highest finite bound. ``None`` for an empty histogram.
    """
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be 0..1, got {q}")
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank and count > prev_count:
            if le == float("inf"):
                return prev_le
            lower = prev_le if prev_le < le else 0.0
            return lower + (le - lower) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return prev_le if prev_le != float("inf") else None
