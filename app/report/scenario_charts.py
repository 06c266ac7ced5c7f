"""The charts every report has, and the ones that fit the run's scenario.

Every run: the E2E latency histogram (P50, P95 and the E2E SLO marked), TTFT and decode tok/s
over time. Then by what the steps vary: prefill + decode latency and decode tok/s by prompt or
by temperature; req/s and latency by concurrency; goodput and P95 latency by offered rate; CPU,
memory and req/s over time for a steady load (``soak``).

This is the one place that decides what a report charts: it returns what each chart shows
(``chart_specs``), and the terminal (``charts``, plotext) and the files (``svg_charts``,
matplotlib) draw the same list, each at its own size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from llmtop.app.report.chart_specs import (
    BarChart,
    ChartRows,
    ChartSection,
    HistogramChart,
    LineChart,
    Marker,
    ScatterChart,
    Series,
)
from llmtop.app.report.data import Breakdown, Group, ReportData
from llmtop.core import fmt, metrics

GOODPUT_TARGET = 0.9
"""A rate sweep "holds its SLOs" while at least this share of requests meets them."""
TIME_BUCKETS = 24


def standard_charts(data: ReportData) -> ChartRows:
    """The E2E histogram alone, then TTFT and decode tok/s over the run side by side."""
    o, slo = data.summary.overall, data.summary.slo
    marks = [Marker("P50", o.e2e_ms.p50, "green")] if o.e2e_ms.p50 is not None else []
    if o.e2e_ms.p95 is not None:
        marks.append(Marker("P95", o.e2e_ms.p95, "yellow"))
    if slo.e2e_ms is not None:
        marks.append(Marker("SLO", slo.e2e_ms, "red"))
    ttft_marks = [Marker("SLO", slo.ttft_ms, "red")] if slo.ttft_ms is not None else []
    hist = HistogramChart(
        hist=data.e2e_histogram,
        markers=marks,
        title=f"E2E latency (ms), {o.ok} requests",
    )
    ttft = ScatterChart(
        points=data.ttft_series,
        title="TTFT over the run (ms)",
        color="orange",
        markers=ttft_marks,
    )
    tps = ScatterChart(
        points=data.decode_tps_series,
        title="Decode tok/s over the run",
        color="green",
    )
    return [[hist], [ttft, tps]]


def prompt_labels(groups: Sequence[Group]) -> list[str]:
    """A prompt's label with its mean length in tokens when the server reported it."""
    out = []
    for g in groups:
        toks = g.summary.prompt_tokens_mean
        out.append(f"{g.label} ({toks:.0f} tok)" if toks is not None else g.label)
    return out


def temperature_labels(groups: Sequence[Group]) -> list[str]:
    """Temperature changes how long answers get, so each label says how many tokens came out."""
    labels = []
    for g in groups:
        s = g.summary
        out = s.output_tokens / s.ok if s.ok else None
        labels.append(f"T={g.label}" + (f" ({out:.0f} tok out)" if out is not None else ""))
    return labels


def _decode_ms(g: Group) -> float | None:
    s = g.summary
    if s.e2e_ms.mean is None or s.ttft_ms.mean is None:
        return None
    return s.e2e_ms.mean - s.ttft_ms.mean


def _prefill_decode(labels: list[str], b: Breakdown, what: str) -> ChartRows:
    """Mean latency split into prefill (TTFT) and decode, and decode tok/s, per group."""
    ttft = [g.summary.ttft_ms.mean for g in b.groups]
    decode = [_decode_ms(g) for g in b.groups]
    tps = [g.summary.decode_tps.mean for g in b.groups]
    split = [Series("TTFT (prefill)", ttft, "orange"), Series("decode", decode, "cyan")]
    return [
        [
            BarChart(
                labels=labels,
                series=split,
                stacked=True,
                unit=" ms",
                title=f"Latency by {what}: prefill + decode (mean ms)",
            ),
            BarChart(
                labels=labels,
                series=[Series("decode tok/s", tps, "green")],
                title=f"Decode tok/s by {what} (mean)",
            ),
        ]
    ]


def _by_concurrency(b: Breakdown) -> ChartRows:
    labels = [g.label for g in b.groups]
    s = [g.summary for g in b.groups]
    lat = [
        Series("E2E p50", [x.e2e_ms.p50 for x in s], "cyan"),
        Series("E2E p95", [x.e2e_ms.p95 for x in s], "magenta"),
        Series("TTFT p50", [x.ttft_ms.p50 for x in s], "orange"),
    ]
    return [
        [
            LineChart(
                labels=labels,
                series=[Series("req/s", [x.req_per_s for x in s], "green")],
                title="Requests/s by concurrency",
                xlabel="concurrent workers",
            ),
            LineChart(
                labels=labels,
                series=lat,
                title="Latency by concurrency (ms)",
                xlabel="concurrent workers",
            ),
        ]
    ]


def _by_rate(b: Breakdown, data: ReportData) -> ChartRows:
    labels = [g.label for g in b.groups]
    s = [g.summary for g in b.groups]
    slo = data.summary.slo
    good = [None if x.goodput is None else x.goodput * 100 for x in s]
    lat_marks = [Marker("TTFT SLO", slo.ttft_ms, "red")] if slo.ttft_ms is not None else []
    lat = [
        Series("TTFT p95", [x.ttft_ms.p95 for x in s], "orange"),
        Series("E2E p95", [x.e2e_ms.p95 for x in s], "magenta"),
    ]
    return [
        [
            LineChart(
                labels=labels,
                series=[Series("goodput %", good, "green")],
                title="Goodput by offered rate (% of requests within SLOs)",
                xlabel="offered req/s",
                markers=[Marker("target", GOODPUT_TARGET * 100, "red")],
                y_max=115.0,
            ),
            LineChart(
                labels=labels,
                series=lat,
                title="P95 latency by offered rate (ms)",
                xlabel="offered req/s",
                markers=lat_marks,
            ),
        ]
    ]


def throughput_over_time(
    end_times_s: Sequence[float], buckets: int | None = None
) -> list[tuple[float, float]]:
    """Completed requests per second in equal time buckets: ``(bucket middle s, req/s)``.

    About five requests per bucket by default (at most ``TIME_BUCKETS``), so a bucket's rate is
    not just the luck of which wave of workers ended inside it.
    """
    if len(end_times_s) < 2:
        return []
    if buckets is None:
        buckets = max(2, min(TIME_BUCKETS, len(end_times_s) // 5))
    lo, hi = min(end_times_s), max(end_times_s)
    if hi <= lo:
        return []
    width = (hi - lo) / buckets
    counts = [0] * buckets
    for t in end_times_s:
        counts[min(int((t - lo) / width), buckets - 1)] += 1
    ns = metrics.NS_PER_S
    out = []
    for i, c in enumerate(counts):
        a = lo + i * width
        rate = metrics.rate_per_s(c, round(a * ns), round((a + width) * ns))
        if rate is not None:
            out.append((a + width / 2, rate))
    return out


def _over_time(data: ReportData) -> ChartRows:
    """A steady load: is the machine saturated, does memory creep, does throughput hold?"""
    mem_gib = [(t, v / (1 << 30)) for t, v in data.mem_series]
    tput = throughput_over_time([t for t, _ in data.e2e_series])
    return [
        [
            ScatterChart(
                points=data.cpu_series,
                title="CPU % over the run (machine)",
                color="orange",
                connect=True,
            ),
            ScatterChart(
                points=mem_gib,
                title="Memory used over the run (GiB)",
                color="blue",
                connect=True,
            ),
        ],
        [
            ScatterChart(
                points=tput,
                title="Completed requests/s over the run",
                color="green",
                connect=True,
            ),
        ],
    ]


def fit_charts(data: ReportData) -> ChartRows:
    """The charts that fit what the run's steps vary (none for a plain single-step run)."""
    b = data.breakdown
    if b is None:
        return []
    if b.dimension == "time":
        return _over_time(data)
    if not b.groups:
        return []
    if b.dimension == "prompt":
        return _prefill_decode(prompt_labels(b.groups), b, "prompt")
    if b.dimension == "temperature":
        return _prefill_decode(temperature_labels(b.groups), b, "temperature")
    if b.dimension == "concurrency":
        return _by_concurrency(b)
    return _by_rate(b, data)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or a == 0 or math.isnan(a):
        return None
    return b / a


def finding(data: ReportData) -> str | None:
    """One sentence on what the breakdown shows, worked out from the numbers."""
    b = data.breakdown
    if b is None or not b.groups:
        return None
    first, last = b.groups[0].summary, b.groups[-1].summary
    if b.dimension == "prompt":
        a = metrics.prefill_share(first.ttft_ms.mean, first.e2e_ms.mean)
        z = metrics.prefill_share(last.ttft_ms.mean, last.e2e_ms.mean)
        if a is None or z is None:
            return None
        return (
            f"Prefill is {fmt.share(a)} of latency for '{b.groups[0].label}' and "
            f"{fmt.share(z)} for '{b.groups[-1].label}'."
        )
    if b.dimension == "concurrency":
        tput = _ratio(first.req_per_s, last.req_per_s)
        lat = _ratio(first.e2e_ms.p50, last.e2e_ms.p50)
        if tput is None or lat is None:
            return None
        return (
            f"From {b.groups[0].label} to {b.groups[-1].label} workers: requests/s "
            f"×{tput:.2f}, E2E p50 ×{lat:.2f}."
        )
    if b.dimension == "temperature":
        means = [g.summary.e2e_ms.mean for g in b.groups if g.summary.e2e_ms.mean is not None]
        if len(means) < 2:
            return None
        spread = (max(means) - min(means)) / min(means)
        return f"Mean E2E latency differs by {fmt.share(spread)} across temperatures."
    if b.dimension == "rate":
        points = [(g.offered_rate or 0.0, g.summary.goodput) for g in b.groups]
        best = metrics.sustainable_rate(points, GOODPUT_TARGET)
        target = fmt.share(GOODPUT_TARGET)
        if best is None:
            return f"Goodput was below {target} at every offered rate."
        return f"SLOs held for ≥ {target} of requests up to {best:g} req/s offered."
    return None


NO_REQUESTS = "This run recorded no requests: nothing to tabulate or chart."
NO_SUCCESS = "No request succeeded: nothing to chart."


def nothing_to_chart(data: ReportData) -> str | None:
    """Why a run has no charts at all (no requests, none succeeded), or ``None``."""
    o = data.summary.overall
    if o.n == 0:
        return NO_REQUESTS
    if o.ok == 0:
        return NO_SUCCESS
    return None


def chart_sections(data: ReportData) -> list[ChartSection]:
    """Every chart of a report, in order: what the scenario varies, then latency and speed.

    The terminal and the files both lay out this list, so a chart added here appears in both.
    """
    if nothing_to_chart(data):
        return []
    sections = []
    fit = fit_charts(data)
    if fit:
        dim = data.breakdown.dimension if data.breakdown else ""
        heading = f"by {dim}" if dim != "time" else "over time"
        sections.append(ChartSection(heading, fit, finding(data)))
    sections.append(ChartSection("latency and speed", standard_charts(data)))
    return sections
