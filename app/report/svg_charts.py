"""Vector charts for report files: the charts ``scenario_charts`` chose, drawn with matplotlib.

Lines, bars and histograms are SVG paths with real axes; a PNG is the same figure through Agg.
Only ``matplotlib.figure.Figure`` is used, never pyplot: no display, no global figure state,
and savefig picks the SVG or Agg canvas by format.

Text stays text (``svg.fonttype = 'none'``) with a generic font stack, not glyph outlines
(``'path'``): numbers and titles can be selected, searched (Ctrl-F in a browser) and read by
tests, and a file is a third of the size. matplotlib lays text out with the DejaVu Sans it
bundles, which is first in the stack; where a viewer lacks it, Helvetica, Arial or Liberation
Sans stand in, all narrower, so a label can only come out shorter than the space it was given,
never overlap its neighbour. No font is embedded or fetched.

This module imports matplotlib at the top: import it only where a file is written (the CLI's
start-up does not pay for it).
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, assert_never, cast

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import Formatter, MaxNLocator

from llmtop.app.report.chart_specs import (
    BarChart,
    Chart,
    HistogramChart,
    LineChart,
    Marker,
    ScatterChart,
)
from llmtop.core import fmt

COLORS: dict[str, str] = {
    "cyan": "#1a9bb0",
    "magenta": "#b0418a",
    "orange": "#e07800",
    "green": "#2f9a45",
    "blue": "#3a6cc0",
    "red": "#d0332c",
    "yellow": "#c29b00",
}
"""The charts' colour names on a white ground: darker than a terminal's, so thin lines read."""
INK = "#222222"
MUTED = "#555555"

FONT_STACK = [
    "DejaVu Sans",
    "Helvetica Neue",
    "Helvetica",
    "Arial",
    "Liberation Sans",
    "sans-serif",
]
STYLE: dict[str, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "llmtop",  # ids from a fixed salt: the same run gives the same file
    "font.family": "sans-serif",
    "font.sans-serif": FONT_STACK,
    "font.size": 9.0,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.titlelocation": "left",
    "axes.titlepad": 8.0,
    "axes.labelsize": 9.0,
    "axes.labelcolor": MUTED,
    "axes.edgecolor": "#9a9a9a",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#e4e4e4",
    "grid.linewidth": 0.8,
    "xtick.color": MUTED,
    "ytick.color": MUTED,
    "text.color": INK,
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "savefig.facecolor": "white",
}

CHART_WIDTH_IN = 6.4
"""One chart of a pair; a row's lone chart is twice as wide, so text has one size throughout."""
CHART_HEIGHT_IN = 3.3
DOT_LIMIT = 400
"""Past this many points, dots shrink so a dense run stays a cloud, not a blot."""
HEADROOM = 1.15
LEGEND_RIGHT: dict[str, Any] = {"loc": "center left", "bbox_to_anchor": (1.01, 0.5)}
"""Legends sit right of the plot, outside it: they never cover a bar, a point or a label."""


@contextmanager
def style() -> Iterator[None]:
    """matplotlib's settings for llmtop's charts, for drawing and for saving."""
    with matplotlib.rc_context(cast("dict[Any, Any]", STYLE)):  # its stub lists every key
        yield


def color(name: str) -> str:
    return COLORS.get(name, name)


class TickFormatter(Formatter):
    """Tick labels by llmtop's rule (``fmt.ticks``): short, and never two alike on one axis."""

    def __init__(self) -> None:
        self.labels: dict[float, str] = {}

    def set_locs(self, locs: Sequence[float]) -> None:
        values = list(locs)
        self.labels = dict(zip(values, fmt.ticks(values), strict=True))

    def __call__(self, x: float, pos: int | None = None) -> str:
        return self.labels.get(x) or fmt.tick(x)


def _tick_format(ax: Axes, axis: str = "y") -> None:
    (ax.yaxis if axis == "y" else ax.xaxis).set_major_formatter(TickFormatter())


def shown(text: str) -> str:
    """Text as a chart can draw it: a run name, model or step is the user's (or a server's)
    and may hold tabs or line breaks, which the fonts have no glyph for."""
    return text if text.isprintable() else "".join(c if c.isprintable() else " " for c in text)


def _title(ax: Axes, title: str) -> None:
    """The chart's title, wrapped to the axes' figure width (a long one would be cut off)."""
    title = shown(title)
    fig = ax.figure  # a chart's own figure, or its part of the whole report's
    fig_width_pt = fig.bbox.width * 72 / fig.dpi
    chars = max(int(fig_width_pt / (0.62 * float(STYLE["axes.titlesize"]))), 20)
    ax.set_title(textwrap.fill(title, chars))


def _reference_lines(ax: Axes, markers: Sequence[Marker], vertical: bool) -> None:
    for m in markers:
        line = ax.axvline if vertical else ax.axhline
        line(
            m.value,
            color=color(m.color),
            linestyle="--",
            linewidth=1.3,
            label=shown(f"{m.label} {fmt.num(m.value)}"),
        )


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**LEGEND_RIGHT)


def note(ax: Axes, title: str, reason: str) -> None:
    """A chart that has nothing to draw says why, in the chart's place."""
    _title(ax, title)
    ax.set_axis_off()
    ax.text(0.5, 0.5, shown(reason), ha="center", va="center", color=MUTED, transform=ax.transAxes)


def histogram(ax: Axes, c: HistogramChart) -> None:
    """Adjoining bars (one path each), reference lines named in the legend with their values."""
    h = c.hist
    if h.n == 0:
        return note(ax, c.title, "no successful requests to chart")
    _title(ax, c.title)
    widths = [b - a for a, b in zip(h.edges, h.edges[1:], strict=False)]
    ax.bar(
        h.edges[:-1],
        h.counts,
        width=widths,
        align="edge",
        color=color(c.color),
        edgecolor="white",
        linewidth=0.6,
    )
    inside = [m for m in c.markers if h.edges[0] <= m.value <= h.edges[-1]]
    _reference_lines(ax, inside, vertical=True)
    pad = (h.edges[-1] - h.edges[0]) * 0.02  # a marker on the last edge stays in view
    ax.set_xlim(h.edges[0] - pad, h.edges[-1] + pad)
    ax.set_ylim(0, max(h.counts) * HEADROOM)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(c.xlabel)
    ax.set_ylabel("requests")
    ax.grid(axis="x", visible=False)
    _tick_format(ax, "x")
    _legend(ax)


def scatter(ax: Axes, c: ScatterChart) -> None:
    """Dots per request, or a line through samples (``connect``), against seconds."""
    if not c.points:
        return note(ax, c.title, "no values to chart")
    _title(ax, c.title)
    xs = [x for x, _ in c.points]
    ys = [y for _, y in c.points]
    col = color(c.color)
    if c.connect:
        ax.plot(xs, ys, color=col, linewidth=1.6)
    dot = 14 if len(xs) <= DOT_LIMIT else 4
    ax.scatter(xs, ys, s=dot if not c.connect else dot / 2, color=col, linewidths=0)
    _reference_lines(ax, c.markers, vertical=False)
    lo = min([*ys, *(m.value for m in c.markers)])
    hi = max([*ys, *(m.value for m in c.markers)])
    pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
    ax.set_ylim(max(0.0, lo - pad), hi + pad)
    ax.set_xlabel(c.xlabel)
    _tick_format(ax, "y")
    _tick_format(ax, "x")
    _legend(ax)


def line(ax: Axes, c: LineChart) -> None:
    """Series over categories at even steps, a dot on each measured value."""
    xs = list(range(len(c.labels)))
    drawn = [
        (s, [(x, v) for x, v in zip(xs, s.values, strict=False) if v is not None]) for s in c.series
    ]
    if not c.labels or not any(pts for _, pts in drawn):
        return note(ax, c.title, "no values to chart")
    _title(ax, c.title)
    top = 0.0
    for s, pts in drawn:
        if not pts:
            continue
        # clip_on off: a point on the axis (goodput 0) shows whole, not halved
        ax.plot(
            [x for x, _ in pts],
            [y for _, y in pts],
            color=color(s.color),
            marker="o",
            markersize=4.5,
            linewidth=1.8,
            label=shown(s.name),
            clip_on=False,
        )
        top = max(top, *(y for _, y in pts))
    _reference_lines(ax, c.markers, vertical=False)
    top = max([top, *(m.value for m in c.markers)])
    ax.set_xticks(xs, list(c.labels))
    ax.set_xlim(-0.3, len(xs) - 0.7)
    ax.set_ylim(0, c.y_max if c.y_max is not None else (top or 1.0) * HEADROOM)
    ax.grid(axis="x", visible=False)
    if c.xlabel:
        ax.set_xlabel(c.xlabel)
    _tick_format(ax, "y")
    _legend(ax)


def bars(ax: Axes, c: BarChart) -> None:
    """Horizontal bars, first category on top, each bar's value written at its end."""
    if not c.labels or not any(v is not None for s in c.series for v in s.values):
        return note(ax, c.title, "no values to chart")
    _title(ax, c.title)
    values = [[v if v is not None else 0.0 for v in s.values] for s in c.series]
    ys = list(range(len(c.labels)))
    ends: list[tuple[float, float]] = []  # (y, x) of each value label
    if c.stacked or len(c.series) == 1:
        left = [0.0] * len(ys)
        for s, vals in zip(c.series, values, strict=True):
            ax.barh(ys, vals, left=left, height=0.6, color=color(s.color), label=shown(s.name))
            left = [a + b for a, b in zip(left, vals, strict=True)]
        ends = list(zip(ys, left, strict=True))
    else:
        size = 0.8 / len(c.series)
        for i, (s, vals) in enumerate(zip(c.series, values, strict=True)):
            at = [y - 0.4 + size * (i + 0.5) for y in ys]
            ax.barh(at, vals, height=size, color=color(s.color), label=shown(s.name))
            ends += list(zip(at, vals, strict=True))
    for y, x in ends:
        # an offset, not a leading space: SVG viewers collapse leading whitespace
        ax.annotate(
            f"{fmt.num(x)}{c.unit}",
            (x, y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            ha="left",
            fontsize=8.5,
        )
    top = max(x for _, x in ends) or 1.0
    ax.set_xlim(0, top * 1.22)  # room right of the longest bar for its value
    ax.set_yticks(ys, [shown(label) for label in c.labels])
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    ax.tick_params(axis="y", length=0)
    _tick_format(ax, "x")
    if c.stacked or len(c.series) > 1:
        _legend(ax)


def draw(chart: Chart, ax: Axes) -> None:
    """One chart of ``chart_specs`` into matplotlib axes."""
    match chart:
        case HistogramChart():
            histogram(ax, chart)
        case ScatterChart():
            scatter(ax, chart)
        case LineChart():
            line(ax, chart)
        case BarChart():
            bars(ax, chart)
        case _:
            assert_never(chart)


def chart_height_in(chart: Chart) -> float:
    """A chart's natural height: bar charts grow with their bars, the rest are one size."""
    if isinstance(chart, BarChart):
        grouped = 1 if chart.stacked else len(chart.series)
        return min(max(CHART_HEIGHT_IN, 1.0 + 0.32 * len(chart.labels) * grouped), 8.0)
    return CHART_HEIGHT_IN


def row_height_in(row: Sequence[Chart]) -> float:
    """Charts side by side share a height, so their axes line up."""
    return max(chart_height_in(c) for c in row)


def chart_figure(chart: Chart, *, width_in: float, height_in: float) -> Figure:
    """One chart on its own figure (the HTML page places each in its own box)."""
    fig = Figure(figsize=(width_in, height_in), layout="constrained")
    draw(chart, fig.subplots())
    return fig


def metadata(title: str) -> dict[str, Any]:
    """The SVG's ``<title>`` (its accessible name); no date, so a file is reproducible."""
    return {"Title": shown(title), "Creator": "llmtop", "Date": None, "Type": None, "Format": None}


def figure_svg(fig: Figure, title: str) -> str:
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata=metadata(title))
    return out.getvalue()


PNG_DPI = 150


def figure_png(fig: Figure) -> bytes:
    """The figure as PNG, ``PNG_DPI`` pixels an inch (the PNG carries that dpi too)."""
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=PNG_DPI, metadata={"Software": "llmtop"})
    return out.getvalue()
