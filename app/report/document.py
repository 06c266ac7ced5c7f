"""A whole report as rich renderables, laid out for a terminal's width.

Report files draw the same sections (``scenario_charts.chart_sections``) as vector charts:
``report_image`` (SVG, PNG) and ``html_page``; ``report_files`` writes them.
"""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

from llmtop.app.report.chart_specs import ChartRows
from llmtop.app.report.charts import draw
from llmtop.app.report.data import ReportData
from llmtop.app.report.scenario_charts import chart_sections, nothing_to_chart
from llmtop.app.report.tables import header, key_numbers, summary_table

CHART_HEIGHT = 16
MIN_CHART_WIDTH = 54
"""Two charts sit side by side when each gets at least this many columns."""
GUTTER = 2


def chart_text(ansi: str) -> Text:
    """A plotext canvas as rich text that never wraps (a wrapped chart is unreadable)."""
    text = Text.from_ansi(ansi, no_wrap=True, overflow="crop")
    text.no_wrap = True
    return text


def chart_grid(rows: ChartRows, width: int, height: int = CHART_HEIGHT) -> Table:
    """Charts in rows, top-aligned: two to a row when the console is wide enough, else one.

    A row's lone chart takes the full width, so nothing sits beside an empty hole.
    """
    two = width >= 2 * MIN_CHART_WIDTH + GUTTER
    half = (width - GUTTER) // 2
    grid = Table.grid(padding=(1, 0))
    grid.add_column(no_wrap=True, vertical="top")
    for row in rows:
        if two and len(row) == 2:
            pair = Table.grid(padding=(0, GUTTER, 0, 0))
            pair.add_column(no_wrap=True, vertical="top")
            pair.add_column(no_wrap=True, vertical="top")
            pair.add_row(
                chart_text(draw(row[0], half, height)), chart_text(draw(row[1], half, height))
            )
            grid.add_row(pair)
        else:
            for chart in row:
                grid.add_row(chart_text(draw(chart, width, height)))
    return grid


def report_renderables(data: ReportData, width: int) -> list[RenderableType]:
    """The report: header, summary table, then each section's heading, finding and charts."""
    s = data.summary
    items: list[RenderableType] = [header(s, key_numbers(s.overall))]
    empty = nothing_to_chart(data)
    if s.overall.n == 0:
        return [*items, Text(empty or "")]
    items.append(summary_table(s))
    if empty:
        return [*items, Text(empty, style="red")]
    for section in chart_sections(data):
        items.append(Rule(section.heading, style="dim"))
        if section.note:
            items.append(Text(section.note, style="bold"))
        items.append(chart_grid(section.rows, width))
    return items


def print_report(console: Console, data: ReportData) -> None:
    for item in report_renderables(data, console.width):
        console.print(item)
