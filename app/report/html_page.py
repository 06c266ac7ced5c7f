"""The report as one self-contained HTML page: header, summary table, the charts as inline SVG.

Nothing is fetched when the page opens: no script, no stylesheet or font from outside (the
fonts are the reader's own, named by a generic stack), each chart an ``<svg>`` in the page. A
Content-Security-Policy of ``default-src 'none'`` makes the browser hold the page to that.

The layout is CSS grid: a section's two charts side by side on a wide screen, one above the
other below ``NARROW_PX``; a row's lone chart spans the width. The table scrolls sideways in
its own box rather than pushing the page wider.
"""

from __future__ import annotations

import html
import re

from llmtop import __version__
from llmtop.app.report import svg_charts
from llmtop.app.report.chart_specs import Chart, ChartSection
from llmtop.app.report.data import ReportData
from llmtop.app.report.report_image import facts
from llmtop.app.report.scenario_charts import chart_sections, nothing_to_chart
from llmtop.app.report.tables import (
    column_title,
    columns,
    key_numbers,
    over_slo,
    table_rows,
)
from llmtop.storage.queries import RunSummary

NARROW_PX = 900
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
"""No script at all, styles only from the page itself, images only inline."""

STYLESHEET = """
:root { color-scheme: light; --ink: #222; --muted: #5a5a5a; --line: #dcdcdc; --red: #c62f28; }
* { box-sizing: border-box; }
body { margin: 0; background: #f4f5f7; color: var(--ink);
       font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
             "Liberation Sans", "DejaVu Sans", sans-serif; }
main { max-width: 1320px; margin: 0 auto; padding: 24px; }
h1 { font-size: 1.6rem; margin: 0 0 6px; }
h1 .name { color: var(--muted); font-weight: normal; font-style: italic; }
h2 { font-size: 1.2rem; margin: 28px 0 8px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px; }
.card.fit { width: fit-content; max-width: 100%; }
.facts { margin: 0; color: var(--muted); }
.facts span { white-space: nowrap; }  /* a fact wraps whole, never "1 / failed" */
.facts span + span::before { content: "· "; color: #aaa; }
.headline { font-weight: 600; margin: 8px 0 0; }
.error { color: var(--red); }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; font-size: 14px; }
th, td { padding: 3px 12px; white-space: nowrap; }
thead th { text-align: right; border-bottom: 2px solid var(--line); }
td.num { text-align: right; }
th.section { text-align: left; padding-left: 0; }
td.label { color: var(--muted); }
tr.first td, tr.first th { border-top: 1px solid var(--line); }
.all { font-weight: 600; }
.over { color: var(--red); font-weight: 600; }
.finding { font-weight: 600; margin: 0 0 12px; }
.row { display: grid; gap: 16px; margin-bottom: 16px; grid-template-columns: 1fr; }
.row.two { grid-template-columns: 1fr 1fr; }
figure.chart svg.narrow { display: none; }
@media (max-width: NARROW_PXpx) {
  .row.two { grid-template-columns: 1fr; }
  figure.chart svg.wide { display: none; }
  figure.chart svg.narrow { display: block; }
}
figure.chart { margin: 0; padding: 8px; background: #fff; border: 1px solid var(--line);
               border-radius: 8px; min-width: 0; }
figure.chart svg { display: block; width: 100%; height: auto; }
footer { color: var(--muted); font-size: 13px; margin-top: 24px; }
""".replace("NARROW_PX", str(NARROW_PX))

_XML_PROLOGUE = re.compile(r"\A.*?(?=<svg\b)", re.S)
_NAMESPACES = re.compile(r'\s+xmlns(:xlink)?="[^"]*"')
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)
_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(href="#|url\(#)([^")]+)')


def inline_svg(svg: str, prefix: str) -> str:
    """An SVG document made into an element of an HTML page.

    The XML prologue, namespace declarations and metadata go (the HTML parser knows ``<svg>``
    and ``xlink:href``; the figure's ``aria-label`` names the chart); every id, and each
    reference to one, gets ``prefix`` so two charts on one page cannot point at each other's
    clip paths.
    """
    svg = _XML_PROLOGUE.sub("", svg, count=1)
    svg = _METADATA.sub("", _NAMESPACES.sub("", svg), count=1)
    svg = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', svg)
    return _REF.sub(lambda m: f"{m.group(1)}{prefix}{m.group(2)}", svg)


def chart_svg(chart: Chart, *, width_in: float, height_in: float) -> str:
    """One chart as a standalone SVG document (call inside ``svg_charts.style()``)."""
    fig = svg_charts.chart_figure(chart, width_in=width_in, height_in=height_in)
    return svg_charts.figure_svg(fig, chart.title)


def _header(summary: RunSummary) -> str:
    r, o = summary.run, summary.overall
    e = html.escape
    name = f' <span class="name">{e(r.name)}</span>' if r.name else ""
    spans = [
        f'<span class="error">{e(part)}</span>'
        if part.startswith(f"{o.errors} failed")
        else f"<span>{e(part)}</span>"
        for part in facts(summary)
    ]
    out = [f"<h1>llmtop report · run {r.id}{name}</h1>", f'<p class="facts">{" ".join(spans)}</p>']
    if r.error:
        out.append(f'<p class="error">error: {e(r.error)}</p>')
    headline = key_numbers(o)
    if headline:
        out.append(f'<p class="headline">{e(headline)}</p>')
    return '<header class="card">\n' + "\n".join(out) + "\n</header>"


def summary_html(summary: RunSummary) -> str:
    """The summary table as the terminal shows it: metrics down, steps across, over-SLO red."""
    cols = columns(summary)
    e = html.escape
    whole = [c is summary.overall and len(cols) > 1 for c in cols]
    head = "".join(
        f"<th{' class=all' if w else ''}>{e(column_title(c))}</th>"
        for c, w in zip(cols, whole, strict=True)
    )
    lines = [f"<thead><tr><th></th><th></th>{head}</tr></thead>", "<tbody>"]
    section = None
    for row in table_rows(summary):
        first = row.section != section
        cells = []
        for c, w in zip(cols, whole, strict=True):
            value = row.get(c)
            cls = ["num"] + (["all"] if w else [])
            if over_slo(summary.slo, row.slo, value):
                cls.append("over")
            cells.append(f'<td class="{" ".join(cls)}">{e(row.show(value))}</td>')
        label = e(row.section) if first else ""
        lines.append(
            f"<tr{' class=first' if first and section is not None else ''}>"
            f'<th class="section" scope="row">{label}</th>'
            f'<td class="label">{e(row.label)}</td>{"".join(cells)}</tr>'
        )
        section = row.section
    lines.append("</tbody>")
    return '<div class="table-wrap"><table>\n' + "\n".join(lines) + "\n</table></div>"


def _figure(chart: Chart, height_in: float, n: int, *, lone: bool) -> str:
    """A chart's ``<figure>``. A row's lone chart is drawn twice, wide for a wide window and
    narrow for a narrow one (CSS shows one), so its text keeps the size of its neighbours'."""
    widths = {"wide": 2 * svg_charts.CHART_WIDTH_IN, "narrow": svg_charts.CHART_WIDTH_IN}
    label = html.escape(chart.title, quote=True)
    svgs = []
    for kind, width in widths.items() if lone else [("pair", svg_charts.CHART_WIDTH_IN)]:
        svg = inline_svg(chart_svg(chart, width_in=width, height_in=height_in), f"c{n}{kind[0]}-")
        svgs.append(
            svg.replace("<svg ", f'<svg class="{kind}" role="img" aria-label="{label}" ', 1)
        )
    return f'<figure class="chart" data-title="{label}">{"".join(svgs)}</figure>'


def _section(section: ChartSection, first_id: int) -> tuple[str, int]:
    """A section's heading, finding and chart rows; returns the next free chart number."""
    out = [f"<section><h2>{html.escape(section.heading)}</h2>"]
    if section.note:
        out.append(f'<p class="finding">{html.escape(section.note)}</p>')
    n = first_id
    for row in section.rows:
        height = svg_charts.row_height_in(row)
        out.append(f'<div class="row {"two" if len(row) == 2 else "one"}">')
        for chart in row:
            out.append(_figure(chart, height, n, lone=len(row) == 1))
            n += 1
        out.append("</div>")
    out.append("</section>")
    return "\n".join(out), n


def report_html(data: ReportData, title: str) -> str:
    """The whole page; ``title`` is the browser tab's."""
    s = data.summary
    body = [_header(s)]
    empty = nothing_to_chart(data)
    if s.overall.n:
        body.append(
            f'<section><h2>summary</h2><div class="card fit">{summary_html(s)}</div></section>'
        )
    if empty:
        cls = ' class="error"' if s.overall.n else ""
        body.append(f"<p{cls}>{html.escape(empty)}</p>")
    n = 0
    with svg_charts.style():
        for section in chart_sections(data):
            part, n = _section(section, n)
            body.append(part)
    body.append(f"<footer>llmtop {html.escape(__version__)}</footer>")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="llmtop {html.escape(__version__)}">\n'
        f"<title>{html.escape(title)}</title>\n"
        f"<style>{STYLESHEET}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(body)
        + "\n</main>\n</body>\n</html>\n"
    )
