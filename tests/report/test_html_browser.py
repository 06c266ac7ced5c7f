"""The HTML report in a real browser: headless Chromium draws every chart, nothing overlaps,
nothing is blank, the console stays quiet. Skipped where Chromium is not installed
(``.ci/run`` installs Debian's ``chromium``)."""

from __future__ import annotations

import pytest
from PIL import Image
from report.browser import CHROMIUM, open_page, overlaps

from llmtop.app.report import svg_charts
from llmtop.app.report.chart_specs import BarChart, Chart, HistogramChart, LineChart, ScatterChart
from llmtop.app.report.data import load_report
from llmtop.app.report.html_page import NARROW_PX, report_html
from llmtop.app.report.scenario_charts import chart_sections
from llmtop.storage.db import open_readonly

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)
WINDOW_HEIGHT = 4000
"""Tall enough that a whole report is in the screenshot (asserted below)."""


def series_colors(chart: Chart) -> set[str]:
    match chart:
        case HistogramChart() | ScatterChart():
            return {chart.color}
        case LineChart() | BarChart():
            return {s.color for s in chart.series}


def painted(im: Image.Image, box: list[float], hex_color: str, tolerance: int = 40) -> int:
    """Pixels inside ``box`` within ``tolerance`` of ``hex_color`` on every channel."""
    x, y, w, h = (round(v) for v in box)
    target = tuple(int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    crop = im.crop((x, y, x + w, y + h)).convert("RGB")
    return sum(
        n
        for n, px in crop.getcolors(maxcolors=w * h + 1)
        if all(abs(a - b) <= tolerance for a, b in zip(px, target, strict=True))
    )


@pytest.fixture(scope="module")
def pages(scenario_db, tmp_path_factory):
    path, ids = scenario_db
    out = tmp_path_factory.mktemp("html")
    db = open_readonly(path)
    made = {}
    for name in ("basic", "concurrency", "soak"):
        data = load_report(db, ids[name])
        page = out / f"{name}.html"
        page.write_text(report_html(data, f"llmtop report: {name}"), encoding="utf-8")
        made[name] = (page, data)
    db.close()
    return out, made


@pytest.mark.parametrize(("name", "width"), [("basic", 1280), ("concurrency", 1280),
                                             ("soak", 1280), ("concurrency", 700)])  # fmt: skip
def test_chromium_draws_every_chart_with_nothing_overlapping(pages, name, width):
    tmp, made = pages
    page, data = made[name]
    view = open_page(page, tmp, width, WINDOW_HEIGHT)

    assert view.console == [], view.console
    assert view.errors == [], view.errors
    assert view.page[0] <= view.viewport[0], "the page is wider than the window"
    assert view.page[1] <= WINDOW_HEIGHT, "raise WINDOW_HEIGHT: the report is taller"

    charts = [c for s in chart_sections(data) for row in s.rows for c in row]
    figures = [p for p in view.parts if p["tag"] == "figure"]
    assert [f["title"] for f in figures] == [c.title for c in charts]
    # nothing on top of anything else: header, headings, table, findings, charts, footer
    for i, a in enumerate(view.parts):
        for b in view.parts[i + 1 :]:
            assert not overlaps(a["box"], b["box"]), (a["text"][:40], b["text"][:40])
    # two charts to a row on a wide window, one under the other on a narrow one
    pairs = [row for s in chart_sections(data) for row in s.rows if len(row) == 2]
    tops = {round(f["box"][1]) for f in figures}
    if width > NARROW_PX:
        assert len(tops) == len(figures) - len(pairs)
    else:
        assert len(tops) == len(figures)

    im = Image.open(view.screenshot)
    assert im.size == (width, WINDOW_HEIGHT)
    for fig, chart in zip(figures, charts, strict=True):
        _, _, w, h = fig["svg"]
        assert w > 0.8 * fig["box"][2] and h > 120, (chart.title, fig["svg"])  # not collapsed
        assert fig["paths"] > 10, chart.title  # axes, ticks and marks drawn as paths
        for name_ in series_colors(chart):
            # the chart's own data marks, in its colours, on screen
            assert painted(im, fig["svg"], svg_charts.color(name_)) > 40, (chart.title, name_)
    table = next(p for p in view.parts if "fit" in p["cls"])
    assert table["box"][3] > 200 and "Requests" in table["text"]
