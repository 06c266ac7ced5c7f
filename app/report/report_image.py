"""The whole report as one figure, for ``--svg`` and ``--png``: who and what, a table, the charts.

Top to bottom: the run's title and facts with the key numbers, a compact table (steps down, the
numbers people quote across, over-SLO values in red), then each section of
``scenario_charts.chart_sections`` with its finding and its charts two to a row. Each block is
a matplotlib subfigure with its own constrained layout, as tall as its content needs.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable

from matplotlib.figure import Figure, SubFigure
from matplotlib.transforms import Bbox

from llmtop.app.report import svg_charts
from llmtop.app.report.chart_specs import Chart, ChartSection
from llmtop.app.report.data import ReportData
from llmtop.app.report.scenario_charts import chart_sections, nothing_to_chart
from llmtop.app.report.tables import (
    Row,
    column_title,
    columns,
    key_numbers,
    over_slo,
    slo_text,
    table_rows,
)
from llmtop.core import fmt
from llmtop.storage.queries import RunSummary

WIDTH_IN = 2 * svg_charts.CHART_WIDTH_IN
TITLE_PT = 15.0
TEXT_PT = 9.5
LINE_IN = 0.22
"""One line of 9.5 pt text with its leading."""
TABLE_ROW_IN = 0.25
SECTION_IN = 0.42

IMAGE_COLUMNS: dict[tuple[str, str], str] = {
    ("Requests", "ok"): "ok",
    ("Requests", "errors"): "errors",
    ("TTFT ms", "mean"): "TTFT mean\nms",
    ("TTFT ms", "p95"): "TTFT p95\nms",
    ("TPOT ms", "mean"): "TPOT mean\nms",
    ("E2E latency ms", "mean"): "E2E mean\nms",
    ("E2E latency ms", "p95"): "E2E p95\nms",
    ("Throughput", "offered req/s"): "offered\nreq/s",
    ("Throughput", "decode tok/s (mean)"): "decode\ntok/s",
    ("Throughput", "requests/s"): "req/s",
    ("Throughput", "output tok/s"): "output\ntok/s",
    ("Throughput", "goodput"): "goodput",
}
"""Rows of the summary table (``tables.ROWS``) that the image shows as columns, with headers."""

Block = tuple[float, Callable[[SubFigure], None]]
"""A band of the figure: its height in inches and what paints it."""


SEP = "  ·  "


def facts(summary: RunSummary) -> list[str]:
    """Scenario, model, server, when, how long, how it ended, the SLOs: the header's facts."""
    r, o = summary.run, summary.overall
    parts = [
        f"scenario {r.scenario or fmt.DASH}",
        f"model {r.model or fmt.DASH}",
        f"on {r.backend or fmt.DASH}" + (f" at {r.base_url}" if r.base_url else ""),
        f"started {r.started_at[:19].replace('T', ' ')} UTC",
        f"took {fmt.seconds(o.duration_s)}",
        r.status,
        f"{o.n} requests",
    ]
    if o.errors:
        kinds = ", ".join(f"{k} {v}" for k, v in o.error_kinds.items())
        parts.append(f"{o.errors} failed ({kinds})")
    if o.warmup:
        parts.append(f"warm-up {o.warmup}")
    if summary.slo.is_set:
        parts.append(f"SLO {slo_text(summary.slo)}")
    return parts


def fill(parts: list[str], chars: int, sep: str = SEP) -> list[str]:
    """``parts`` joined by ``sep`` into lines of at most ``chars``, never splitting a part
    (unless it is longer than a line on its own)."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + len(sep) + len(part) <= chars:
            lines[-1] += sep + part
        else:
            lines += textwrap.wrap(part, chars) or [""]
    return lines


def _header(data: ReportData) -> Block:
    s = data.summary
    chars = int(WIDTH_IN * 72 / (0.55 * TEXT_PT))
    title = f"llmtop report  ·  run {s.run.id}" + (f"  ·  {s.run.name}" if s.run.name else "")
    plain = fill(facts(s), chars)
    if s.run.error:
        plain += textwrap.wrap(f"error: {s.run.error}", chars)
    headline = key_numbers(s.overall)
    bold = fill(headline.split(" · "), chars) if headline else []
    lines = [(line, False) for line in plain] + [(line, True) for line in bold]
    height = 0.55 + LINE_IN * len(lines) + 0.1

    def paint(sub: SubFigure) -> None:
        top = 1 - 0.12 / height
        sub.text(0.01, top, svg_charts.shown(title), fontsize=TITLE_PT, weight="bold", va="top")
        for i, (line, strong) in enumerate(lines):
            y = top - (0.42 + LINE_IN * i) / height
            sub.text(
                0.01,
                y,
                svg_charts.shown(line),
                fontsize=TEXT_PT,
                va="top",
                color=svg_charts.INK if strong else svg_charts.MUTED,
                weight="bold" if strong else "normal",
            )

    return height, paint


def image_columns(summary: RunSummary) -> list[Row]:
    """The summary rows the image shows, in ``IMAGE_COLUMNS`` order, measured ones only."""
    by_key = {(r.section, r.label): r for r in table_rows(summary)}
    return [by_key[k] for k in IMAGE_COLUMNS if k in by_key]


def _table(summary: RunSummary) -> Block:
    rows = image_columns(summary)
    steps = columns(summary)
    height = TABLE_ROW_IN * (len(steps) + 2) + 0.2

    def paint(sub: SubFigure) -> None:
        ax = sub.subplots()
        ax.set_axis_off()
        text = [[r.show(r.get(c)) for r in rows] for c in steps]
        table = ax.table(
            cellText=text,
            rowLabels=[column_title(c) for c in steps],
            colLabels=[IMAGE_COLUMNS[(r.section, r.label)] for r in rows],
            cellLoc="right",
            rowLoc="left",
            colLoc="right",
            edges="horizontal",
            bbox=Bbox.from_bounds(0.09, 0.0, 0.91, 1.0),  # row labels left of 0.09
        )
        table.auto_set_font_size(False)
        table.set_fontsize(TEXT_PT - 0.5)
        for (i, j), cell in table.get_celld().items():
            cell.set_edgecolor("#d0d0d0")
            if i == 0:
                cell.set_text_props(weight="bold", color=svg_charts.INK)
                cell.set_height(cell.get_height() * 2)
            elif j >= 0 and over_slo(summary.slo, rows[j].slo, rows[j].get(steps[i - 1])):
                cell.set_text_props(color=svg_charts.COLORS["red"], weight="bold")
            if i > 0 and steps[i - 1] is summary.overall and len(steps) > 1:
                cell.set_text_props(weight="bold")

    return height, paint


def _message(text: str, red: bool = False) -> Block:
    def paint(sub: SubFigure) -> None:
        sub.text(
            0.01,
            0.5,
            svg_charts.shown(text),
            fontsize=TEXT_PT + 1,
            va="center",
            color=svg_charts.COLORS["red"] if red else svg_charts.INK,
        )

    return 0.5, paint


def _section(section: ChartSection) -> list[Block]:
    height = SECTION_IN + (LINE_IN if section.note else 0.0)

    def heading(sub: SubFigure) -> None:
        sub.text(
            0.01,
            1 - 0.1 / height,
            svg_charts.shown(section.heading),
            fontsize=12.5,
            weight="bold",
            va="top",
        )
        if section.note:
            sub.text(
                0.01, 1 - 0.42 / height, svg_charts.shown(section.note), fontsize=TEXT_PT, va="top"
            )

    blocks: list[Block] = [(height, heading)]
    for row in section.rows:

        def charts(sub: SubFigure, row: list[Chart] = row) -> None:
            axes = sub.subplots(1, len(row), squeeze=False)[0]
            for chart, ax in zip(row, axes, strict=True):
                svg_charts.draw(chart, ax)

        blocks.append((svg_charts.row_height_in(row), charts))
    return blocks


def report_figure(data: ReportData) -> Figure:
    """The report on one figure ``WIDTH_IN`` wide and as tall as its blocks."""
    s = data.summary
    blocks = [_header(data)]
    empty = nothing_to_chart(data)
    if s.overall.n:
        blocks.append(_table(s))
    if empty:
        blocks.append(_message(empty, red=s.overall.n > 0))
    for section in chart_sections(data):
        blocks += _section(section)
    fig = Figure(figsize=(WIDTH_IN, sum(h for h, _ in blocks)), layout="constrained")
    subs = fig.subfigures(len(blocks), 1, squeeze=False, height_ratios=[h for h, _ in blocks])
    for sub, (_, paint) in zip(subs[:, 0], blocks, strict=True):
        paint(sub)
    return fig


def report_svg(data: ReportData, title: str) -> str:
    """The report as an SVG document; ``title`` is its ``<title>``."""
    with svg_charts.style():
        return svg_charts.figure_svg(report_figure(data), title)


def report_png(data: ReportData, title: str = "") -> bytes:
    """The report as a PNG image, ``PNG_DPI`` pixels an inch."""
    with svg_charts.style():
        return svg_charts.figure_png(report_figure(data))
