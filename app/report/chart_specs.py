"""What a report's charts show, apart from how they are drawn.

``scenario_charts`` decides which charts a run gets and fills these in; two renderers draw them:
``charts`` as plotext text for the terminal, ``svg_charts`` as matplotlib vector charts for
files. A new kind of chart is a new class here and a new ``case`` in both renderers' ``draw``
(their ``assert_never`` makes a forgotten one a type error).

Colours are named (``"cyan"``, ``"orange"``): each renderer maps a name to what reads well on
its ground (a terminal's palette, a white page).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from llmtop.storage.queries import Histogram


@dataclass(frozen=True, slots=True)
class Series:
    """One named line or set of bars; ``None`` is a value that was not measured."""

    name: str
    values: Sequence[float | None]
    color: str = "cyan"


@dataclass(frozen=True, slots=True)
class Marker:
    """A reference line: a percentile on a histogram, an SLO on a latency chart."""

    label: str
    value: float
    color: str = "red"


@dataclass(frozen=True, slots=True)
class HistogramChart:
    """Counts per bin as adjoining bars, with vertical reference lines (P50, P95, an SLO)."""

    hist: Histogram
    title: str
    xlabel: str = "ms"
    markers: Sequence[Marker] = ()
    color: str = "magenta"


@dataclass(frozen=True, slots=True)
class ScatterChart:
    """Values against time, with horizontal reference lines.

    Per-request values are dots; a sampled signal (CPU, memory, a rate) is ``connect``-ed into
    a line, since between two samples it did not vanish.
    """

    points: Sequence[tuple[float, float]]
    title: str
    xlabel: str = "seconds since start"
    color: str = "magenta"
    markers: Sequence[Marker] = ()
    connect: bool = False


@dataclass(frozen=True, slots=True)
class LineChart:
    """Series over categories spaced evenly (1, 2, 4, 8 workers read as steps, not a scale)."""

    labels: Sequence[str]
    series: Sequence[Series]
    title: str
    xlabel: str = ""
    markers: Sequence[Marker] = ()
    y_max: float | None = None


@dataclass(frozen=True, slots=True)
class BarChart:
    """Horizontal bars per category, each bar's value at its end.

    One series: plain bars; several: grouped, or ``stacked`` into one bar whose parts add up
    (prefill + decode = E2E), labelled with the total.
    """

    labels: Sequence[str]
    series: Sequence[Series]
    title: str
    stacked: bool = False
    unit: str = ""


Chart = HistogramChart | ScatterChart | LineChart | BarChart
ChartRows = list[list[Chart]]
"""Charts in rows: a layout puts a row's two charts side by side where there is room."""


@dataclass(frozen=True, slots=True)
class ChartSection:
    """A heading (``by prompt``, ``latency and speed``), what it shows in a sentence, its charts."""

    heading: str
    rows: ChartRows
    note: str | None = None
