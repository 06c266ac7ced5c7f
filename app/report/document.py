"""A whole report as rich renderables, laid out for a width; and the same written as SVG or HTML.

Files come from rich's own console export (``Console(record=True)``), so the SVG and HTML show
exactly what the terminal shows, colours included. Both are self-contained: rich's SVG names a
web font on a CDN, which is dropped here (the SVG falls back to a local monospace font).
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path
from typing import Literal

from rich.console import Console, RenderableType
from rich.rule import Rule
from rich.table import Table
from rich.terminal_theme import MONOKAI, TerminalTheme
from rich.text import Text

from llmtop.app.report.data import ReportData
from llmtop.app.report.scenario_charts import ChartRows, finding, fit_charts, standard_charts
from llmtop.app.report.tables import header, key_numbers, summary_table
from llmtop.core.errors import UsageError

CHART_HEIGHT = 16
MIN_CHART_WIDTH = 54
"""Two charts sit side by side when each gets at least this many columns."""
GUTTER = 2
FILE_WIDTH = 140
"""Columns of an SVG or HTML report: two charts per row, a table that never wraps."""
FILE_THEME: TerminalTheme = MONOKAI

_REMOTE_FONT = re.compile(r',\s*url\("https?://[^"]*"\)\s*format\("[^"]*"\)')

FileKind = Literal["svg", "html"]

HTML_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta name="generator" content="llmtop">
<title>%(title)s</title>
<style>
{stylesheet}
body {{ color: {foreground}; background-color: {background}; margin: 1.5em; }}
pre {{ font-family: Menlo, 'DejaVu Sans Mono', Consolas, 'Courier New', monospace;
       font-size: 13px; line-height: 1.25; }}
</style>
</head>
<body>
<pre><code style="font-family:inherit">{code}</code></pre>
</body>
</html>
"""
"""A page of our own around rich's export: a title, no external resources."""


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
            pair.add_row(chart_text(row[0](half, height)), chart_text(row[1](half, height)))
            grid.add_row(pair)
        else:
            for chart in row:
                grid.add_row(chart_text(chart(width, height)))
    return grid


def report_renderables(data: ReportData, width: int) -> list[RenderableType]:
    """The report: header, summary table, what the breakdown shows, then the charts."""
    s = data.summary
    items: list[RenderableType] = [header(s, key_numbers(s.overall))]
    if s.overall.n == 0:
        return [*items, Text("This run recorded no requests: nothing to tabulate or chart.")]
    items.append(summary_table(s))
    if s.overall.ok == 0:
        return [*items, Text("No request succeeded: nothing to chart.", style="red")]
    fit = fit_charts(data)
    if fit:
        dim = data.breakdown.dimension if data.breakdown else ""
        items.append(Rule(f"by {dim}" if dim != "time" else "over time", style="dim"))
        note = finding(data)
        if note:
            items.append(Text(note, style="bold"))
        items.append(chart_grid(fit, width))
    items.append(Rule("latency and speed", style="dim"))
    items.append(chart_grid(standard_charts(data), width))
    return items


def print_report(console: Console, data: ReportData) -> None:
    for item in report_renderables(data, console.width):
        console.print(item)


def render_file(
    data: ReportData, kind: FileKind, *, width: int | None = None, title: str = ""
) -> str:
    """The report as a self-contained SVG or HTML document, ``width`` columns wide."""
    width = width or FILE_WIDTH
    console = Console(
        record=True,
        width=width,
        file=io.StringIO(),
        force_terminal=True,
        color_system="truecolor",
        legacy_windows=False,
    )
    for item in report_renderables(data, width):
        console.print(item)
    if kind == "svg":
        svg = console.export_svg(title=title or "llmtop report", theme=FILE_THEME)
        return _REMOTE_FONT.sub("", svg)
    safe = html.escape(title or "llmtop report").replace("{", "{{").replace("}", "}}")
    page = HTML_PAGE % {"title": safe}  # rich fills the page with str.format: braces doubled
    return console.export_html(theme=FILE_THEME, inline_styles=True, code_format=page)


def write_file(path: str | Path, text: str) -> None:
    """Write a report file, or say in one line why it cannot be written.

    Raises:
        UsageError: the path cannot be written (missing folder, no permission).
    """
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
