"""Terminal charts as text: pure functions from numbers to a plotext canvas (ANSI string).

``draw`` renders a chart of ``chart_specs`` (what ``scenario_charts`` chose) at a size in
columns and lines; files draw the same charts as vectors (``svg_charts``).

Each chart gets its own ``textual_plotext.Plot`` (plotext's module API is global state, unsafe
across threads and widgets; LIBRARIES.md section 2). The output carries ANSI colours; callers
wrap it in ``rich.text.Text.from_ansi`` so rich drops them where colour does not belong (a pipe,
a file) and keeps them in a terminal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, assert_never

from textual_plotext import Plot

from llmtop.app.report.chart_specs import (
    BarChart,
    Chart,
    HistogramChart,
    LineChart,
    Marker,
    ScatterChart,
    Series,
)
from llmtop.core.fmt import num, tick
from llmtop.core.fmt import ticks as fmt_ticks
from llmtop.storage.queries import Histogram

PALETTE: tuple[str, ...] = ("cyan", "magenta", "orange", "green", "blue", "red", "yellow")
DOT_LIMIT = 400
HEADROOM = 1.25
"""Bar charts leave this much room above the tallest bar so the legend never covers a bar."""


def _plot(width: int, height: int) -> Plot:
    """A canvas one line shorter than ``height``: the title goes above it (see ``_titled``)."""
    p = Plot()
    p.theme("clear")  # no background colours: readable on dark and light terminals alike
    p.plotsize(max(width, 20), max(height - 1, 6))
    return p


def _titled(title: str, width: int, canvas: str) -> str:
    """The title in bold above the canvas, centred, shortened to fit.

    Not plotext's own title: plotext drops a title wider than the plotting area, which long
    category labels (``very-long (1000 tok)``) make narrow.
    """
    if len(title) > width:
        title = title[: max(width - 1, 1)] + "…"
    return f"\x1b[1m{title.center(width).rstrip()}\x1b[0m\n{canvas}"


def _ticks(lo: float, hi: float, count: int = 5) -> tuple[list[float], list[str]]:
    if hi <= lo:
        return [lo], [tick(lo)]
    step = (hi - lo) / (count - 1)
    ticks = [lo + i * step for i in range(count)]
    return ticks, fmt_ticks(ticks)


def note_chart(title: str, reason: str, *, width: int, height: int = 5) -> str:
    """A chart that has nothing to draw says why, in the chart's place."""
    inner = max(width - 4, len(reason))
    lines = [title.center(width), f"  {reason}".ljust(inner)]
    return "\n".join(lines + [""] * max(0, min(height, 3) - 2))


def _count_ticks(top: int) -> list[int]:
    """Whole-number ticks for a count axis (no "2.5 requests")."""
    step = max(1, math.ceil(top / 4))
    return list(range(0, top + step, step))


def histogram_chart(
    hist: Histogram,
    *,
    title: str,
    width: int,
    height: int,
    xlabel: str = "ms",
    markers: Sequence[Marker] = (),
    color: str = "magenta",
) -> str:
    """Counts per bin as adjoining bars, with vertical reference lines (P50, P95, an SLO).

    The markers are named in the title with their values, in their own colours on the canvas.
    """
    if hist.n == 0:
        return note_chart(title, "no successful requests to chart", width=width)
    centers = [(a + b) / 2 for a, b in zip(hist.edges, hist.edges[1:], strict=False)]
    legend = " · ".join(f"{m.label} {num(m.value)}" for m in markers)
    title = f"{title} · {legend}" if legend else title
    p = _plot(width, height)
    p.bar(centers, list(hist.counts), width=1.0, color=color)
    for m in markers:
        if hist.edges[0] <= m.value <= hist.edges[-1]:
            p.vline(m.value, m.color)
    ticks, labels = _ticks(hist.edges[0], hist.edges[-1])
    p.xticks(ticks, labels)
    counts = _count_ticks(max(hist.counts))
    p.yticks([float(c) for c in counts], [str(c) for c in counts])
    p.ylim(0, counts[-1])
    p.xlabel(xlabel)
    return _titled(title, width, p.build())


def scatter_chart(
    points: Sequence[tuple[float, float]],
    *,
    title: str,
    width: int,
    height: int,
    xlabel: str = "seconds since start",
    color: str = "magenta",
    markers: Sequence[Marker] = (),
    connect: bool = False,
) -> str:
    """Values against time, with horizontal reference lines (an SLO).

    Per-request values are dots; a sampled signal (CPU, memory, a rate) is ``connect``-ed
    into a line, since between two samples it did not vanish.
    """
    if not points:
        return note_chart(title, "no values to chart", width=width)
    legend = " · ".join(f"{m.label} {num(m.value)}" for m in markers)
    title = f"{title} · {legend}" if legend else title
    xs = [x for x, _ in points]
    ys = [y for _, y in points]
    # Dots read well up to a few hundred points; past that braille keeps dense runs legible.
    marker = "●" if len(points) <= DOT_LIMIT else "braille"
    p = _plot(width, height)
    if connect:
        p.plot(xs, ys, marker="braille", color=color)
    p.scatter(xs, ys, marker=marker, color=color)
    lo, hi = min(ys), max(ys)
    for m in markers:
        p.hline(m.value, m.color)
        lo, hi = min(lo, m.value), max(hi, m.value)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
    p.ylim(max(0.0, lo - pad), hi + pad)
    p.xlabel(xlabel)
    return _titled(title, width, p.build())


def line_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    width: int,
    height: int,
    xlabel: str = "",
    markers: Sequence[Marker] = (),
    y_max: float | None = None,
) -> str:
    """Series over categories spaced evenly (1, 2, 4, 8 workers read as steps, not as a scale)."""
    xs = list(range(1, len(labels) + 1))
    drawn = [
        (s, [(x, v) for x, v in zip(xs, s.values, strict=False) if v is not None]) for s in series
    ]
    if not labels or not any(pts for _, pts in drawn):
        return note_chart(title, "no values to chart", width=width)
    p = _plot(width, height)
    top = 0.0
    for s, pts in drawn:
        if not pts:
            continue
        px, py = [x for x, _ in pts], [y for _, y in pts]
        p.plot(px, py, marker="braille", color=s.color, label=s.name)
        p.scatter(px, py, marker="●", color=s.color)
        top = max(top, *py)
    for m in markers:
        p.hline(m.value, m.color)
        top = max(top, m.value)
    p.xticks([float(x) for x in xs], list(labels))
    p.xlim(0.7, len(labels) + 0.3)
    p.ylim(0, y_max if y_max is not None else (top or 1.0) * HEADROOM)
    if xlabel:
        p.xlabel(xlabel)
    return _titled(title, width, p.build())


def bar_chart(
    labels: Sequence[str],
    series: Sequence[Series],
    *,
    title: str,
    width: int,
    height: int | None = None,
    stacked: bool = False,
    unit: str = "",
) -> str:
    """Horizontal bars per category (long labels stay readable), each bar's value at its end.

    One series: plain bars; several: grouped, or ``stacked`` into one bar whose parts add up
    (prefill + decode = E2E), labelled with the total. ``height`` is an upper bound: the chart
    is as tall as its bars need.
    """
    if not labels or not any(v is not None for s in series for v in s.values):
        return note_chart(title, "no values to chart", width=width)
    values = [[v if v is not None else 0.0 for v in s.values] for s in series]
    n = len(labels)
    natural = max(9, min(2 * n + 6, 24))  # two lines a bar, plus frame, title and legend
    p = _plot(width, min(height, natural) if height else natural)
    names = [s.name for s in series]
    colors = [s.color for s in series]
    # textual-plotext's stub says ``label`` and one color; plotext's stacked and grouped bars
    # take ``labels`` and a color per series (what they do at run time), hence a plain dict.
    several: dict[str, Any] = {"labels": names, "color": colors, "orientation": "horizontal"}
    if stacked:
        p.stacked_bar(list(labels), values, width=0.5, **several)
        ends = [sum(col) for col in zip(*values, strict=True)]
    elif len(series) == 1:
        p.bar(list(labels), values[0], color=colors[0], orientation="horizontal", width=0.5)
        ends = values[0]
    else:
        p.multiple_bar(list(labels), values, width=0.7, **several)
        ends = []
    top = (max(max(v) for v in values) if not stacked else max(ends)) or 1.0
    texts = [f" {num(end)}{unit}" for end in ends]
    # Room right of the longest bar for its value: the plotting area is what the category
    # labels and the frame leave of the width.
    area = max(width - max(len(label) for label in labels) - 3, 10)
    need = max((len(t) for t in texts), default=0) + 1
    p.xlim(0, max(top * HEADROOM, top * area / max(area - need, 1)))
    legend_rows = len(series) if (stacked or len(series) > 1) else 0
    p.ylim(0.5, n + 0.5 + 0.4 * legend_rows)
    for i, (end, text) in enumerate(zip(ends, texts, strict=True)):
        p.text(text, x=end, y=i + 1, alignment="left")
    return _titled(title, width, p.build())


def draw(chart: Chart, width: int, height: int) -> str:
    """One chart as plotext text, ``width`` columns by at most ``height`` lines."""
    match chart:
        case HistogramChart():
            return histogram_chart(
                chart.hist,
                title=chart.title,
                width=width,
                height=height,
                xlabel=chart.xlabel,
                markers=chart.markers,
                color=chart.color,
            )
        case ScatterChart():
            return scatter_chart(
                chart.points,
                title=chart.title,
                width=width,
                height=height,
                xlabel=chart.xlabel,
                color=chart.color,
                markers=chart.markers,
                connect=chart.connect,
            )
        case LineChart():
            return line_chart(
                chart.labels,
                chart.series,
                title=chart.title,
                width=width,
                height=height,
                xlabel=chart.xlabel,
                markers=chart.markers,
                y_max=chart.y_max,
            )
        case BarChart():
            return bar_chart(
                chart.labels,
                chart.series,
                title=chart.title,
                width=width,
                height=height,
                stacked=chart.stacked,
                unit=chart.unit,
            )
        case _:
            assert_never(chart)
