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
- the server's own numbers over a window (a step, a scrape interval): counter increases
  (generation, prompt and cached prompt tokens), rates over the window's seconds, prefix-cache
  hit rate = cached / prompt tokens, and histogram means = increase of sum / increase of count
  (no percentiles from coarse buckets).

Every function is pure; a value that cannot be defined (TPOT of a one-token answer) is ``None``.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from llmtop.core.events import RequestFinished, ServerTimings

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


def schedule_lag_ms(t_scheduled_ns: int, t_start_ns: int) -> float:
    """Schedule lag of an open-loop request: how late it was written against when its schedule
    had it due (MLPerf loadgen's measure of the load generator itself)."""
    return (t_start_ns - t_scheduled_ns) / NS_PER_MS


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


# --- the server's own numbers (Prometheus /metrics, through core/server_series.py) ---------------

SERVER_HISTOGRAMS: tuple[str, ...] = (
    "ttft_s", "tpot_s", "itl_s", "e2e_s", "queue_s", "prefill_s", "decode_s",
)  # fmt: skip
"""Canonical histograms whose means a server window gives (in ms)."""


@dataclass(frozen=True, slots=True)
class ServerWindow:
    """What a server says it did between two of its samples: counter increases, histogram
    means, and its gauges while it ran. ``None``: not read, or the counters went back (a
    restart)."""

    generation_tokens: float | None = None
    prompt_tokens: float | None = None
    """Prompt tokens of the requests, cached ones included (as every server is read)."""
    cached_prompt_tokens: float | None = None
    preemptions: float | None = None
    requests_finished: float | None = None
    generation_tps: float | None = None
    """Generated tokens over the window's seconds."""
    prompt_tps: float | None = None
    prefix_cache_hit_rate: float | None = None
    """Share of prompt tokens taken from the prefix cache, 0..1."""
    means_ms: dict[str, float] = field(default_factory=dict)
    """Canonical histogram (``ttft_s``) -> mean over the window's requests, in ms; llama.cpp's
    ``tpot_s`` is its time spent generating over its generated tokens."""
    running_mean: float | None = None
    running_max: float | None = None
    waiting_max: float | None = None
    kv_cache_usage_max: float | None = None
    """0..1."""


def counter_increase(before: float | None, after: float | None) -> float | None:
    """How much a counter grew; ``None`` when unread or when it went back (a restart)."""
    if before is None or after is None or after < before:
        return None
    return after - before


def server_window(
    first: dict[str, float],
    last: dict[str, float],
    seconds: float | None,
    during: Sequence[dict[str, float]] = (),
) -> ServerWindow:
    """The server's numbers between two samples of canonical values (server_series).

    Args:
        first: canonical values at the window's start.
        last: canonical values at its end.
        seconds: the window's length, for the rates (``None``: no rates).
        during: canonical values sampled inside the window, for the gauges.
    """

    def inc(name: str) -> float | None:
        return counter_increase(first.get(name), last.get(name))

    gen, prompt, cached = (
        inc("generation_tokens_total"),
        inc("prompt_tokens_total"),
        inc("cached_prompt_tokens_total"),
    )
    means: dict[str, float] = {}
    for name in SERVER_HISTOGRAMS:
        n = inc(f"{name}:count")
        total = inc(f"{name}:sum")
        if n and total is not None:
            means[name] = total / n * 1000
    gen_s = inc("generation_seconds_total")
    if "tpot_s" not in means and gen_s is not None and gen:
        means["tpot_s"] = gen_s / gen * 1000

    def rate(v: float | None) -> float | None:
        return None if v is None or not seconds or seconds <= 0 else v / seconds

    def gauge(name: str) -> list[float]:
        return [v[name] for v in (first, *during, last) if name in v]

    running, waiting, kv = (
        gauge("requests_running"),
        gauge("requests_waiting"),
        gauge("kv_cache_usage"),
    )
    return ServerWindow(
        generation_tokens=gen,
        prompt_tokens=prompt,
        cached_prompt_tokens=cached,
        preemptions=inc("preemptions_total"),
        requests_finished=inc("requests_finished_total"),
        generation_tps=rate(gen),
        prompt_tps=rate(prompt),
        prefix_cache_hit_rate=cached / prompt if cached is not None and prompt else None,
        means_ms=means,
        running_mean=sum(running) / len(running) if running else None,
        running_max=max(running) if running else None,
        waiting_max=max(waiting) if waiting else None,
        kv_cache_usage_max=max(kv) if kv else None,
    )
