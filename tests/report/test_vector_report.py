"""Report files with vector charts: SVG paths and axes, PNG, a self-contained HTML page, and the
same charts as the terminal, chosen in one place."""

from __future__ import annotations

import re
import struct
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from io import BytesIO

import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from PIL import Image
from report.render import plain
from report.scenario_runs import SCENARIOS

from llmtop.app.report import svg_charts
from llmtop.app.report.chart_specs import HistogramChart, ScatterChart
from llmtop.app.report.data import load_report
from llmtop.app.report.document import report_renderables
from llmtop.app.report.html_page import report_html
from llmtop.app.report.report_image import IMAGE_COLUMNS, report_figure, report_png, report_svg
from llmtop.app.report.scenario_charts import chart_sections
from llmtop.app.report.tables import ROWS
from llmtop.storage.db import open_readonly

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def reports(scenario_db):
    path, ids = scenario_db
    db = open_readonly(path)
    data = {name: load_report(db, run_id) for name, run_id in ids.items()}
    db.close()
    return data


@pytest.fixture(scope="module")
def svgs(reports):
    return {name: report_svg(d, f"llmtop report: {name}") for name, d in reports.items()}


@pytest.fixture(scope="module")
def pages(reports):
    return {name: report_html(d, "llmtop report") for name, d in reports.items()}


def titles(data) -> list[str]:
    return [c.title for s in chart_sections(data) for row in s.rows for c in row]


def svg_texts(root: ET.Element) -> list[str]:
    return ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]


def styled(root: ET.Element, prop: str, hex_color: str) -> list[ET.Element]:
    """``<path>`` elements whose style sets ``prop`` (fill, stroke) to ``hex_color``."""
    want = f"{prop}: {hex_color}"
    return [p for p in root.iter(f"{SVG}path") if want in (p.get("style") or "")]


@pytest.mark.parametrize("name", SCENARIOS)
def test_terminal_and_files_draw_the_same_charts(reports, svgs, pages, name):
    data = reports[name]
    expected = titles(data)
    assert len(expected) >= 3
    terminal = plain(*report_renderables(data, 140), width=140)
    svg_text = "\n".join(svg_texts(ET.fromstring(svgs[name])))
    page = pages[name]
    in_page = [m.replace("&amp;", "&") for m in re.findall(r'<figure class="chart" data-title="([^"]*)"', page)]  # fmt: skip
    assert in_page == expected
    for title in expected:
        assert title in terminal, title
        assert title in svg_text, title


@pytest.mark.parametrize("name", SCENARIOS)
def test_svg_draws_paths_on_real_axes(reports, svgs, name):
    data = reports[name]
    root = ET.fromstring(svgs[name])  # well-formed XML
    assert root.tag == f"{SVG}svg"
    assert not list(root.iter(f"{SVG}image"))  # nothing raster inside
    texts = svg_texts(root)
    # the histogram: one filled path per bin, in its colour
    hist = next(c for s in chart_sections(data) for r in s.rows for c in r
                if isinstance(c, HistogramChart))  # fmt: skip
    assert len(styled(root, "fill", svg_charts.color(hist.color))) == len(hist.hist.counts)
    # axes: labels and ticks as text
    for label in ("ms", "requests", "seconds since start"):
        assert label in texts, label
    assert sum(bool(re.fullmatch(r"[\d,.]+", t)) for t in texts) >= 20  # numbers on the axes
    # a per-request series drawn as one dot each, a sampled one as a line through every sample
    ttft = next(c for s in chart_sections(data) for r in s.rows for c in r
                if isinstance(c, ScatterChart) and c.title.startswith("TTFT"))  # fmt: skip
    dots = root.findall(f".//{SVG}g[@id]")
    assert len(ttft.points) > 3 and dots
    if name == "soak":
        cpu = svg_charts.color("orange")
        lines = [p for p in styled(root, "stroke", cpu) if p.get("d", "").count("L") > 5]
        assert max(p.get("d", "").count("L") for p in lines) == len(data.cpu_series) - 1


def _boxes(fig: Figure) -> list[tuple[str, object]]:
    """Every piece of text the figure draws, with its box in display pixels."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    tick_texts = set()
    shown: list[Text] = []
    for ax in fig.get_axes():
        for axis in (ax.xaxis, ax.yaxis):
            for t in [*axis.majorTicks, *axis.minorTicks]:
                tick_texts.update((t.label1, t.label2))
            if not ax.axison:
                continue
            # the labels matplotlib draws: ticks inside the axis's view (it keeps spare ones)
            lo, hi = sorted(axis.get_view_interval())
            eps = (hi - lo) * 1e-9
            for tick, loc in zip(axis.majorTicks, axis.get_majorticklocs(), strict=False):
                if lo - eps <= loc <= hi + eps and tick.label1.get_visible():
                    shown.append(tick.label1)
    for t in fig.findobj(Text):
        if t not in tick_texts and t.get_visible() and t.get_text().strip():
            shown.append(t)
    return [(t.get_text(), t.get_window_extent(renderer)) for t in shown]


def assert_text_apart(fig: Figure, what: str) -> None:
    boxes = _boxes(fig)
    frame = fig.bbox
    for i, (text, box) in enumerate(boxes):
        assert box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1, (what, text, "cut off")
        assert box.y0 >= frame.y0 - 1 and box.y1 <= frame.y1 + 1, (what, text, "cut off")
        for other, obox in boxes[i + 1 :]:
            shared_x = min(box.x1, obox.x1) - max(box.x0, obox.x0)
            shared_y = min(box.y1, obox.y1) - max(box.y0, obox.y0)
            assert shared_x <= 1 or shared_y <= 1, (what, text, other)
    for ax in fig.get_axes():
        legend = ax.get_legend()
        if legend is not None:
            lb = legend.get_window_extent()
            assert lb.x0 >= ax.bbox.x1, (what, "the legend covers the plot")


@pytest.mark.parametrize("name", SCENARIOS)
def test_no_text_overlaps_or_is_cut_off(reports, name):
    data = reports[name]
    with svg_charts.style():
        assert_text_apart(report_figure(data), f"{name} report")
        for s in chart_sections(data):
            for row in s.rows:
                for chart in row:
                    for width in {svg_charts.CHART_WIDTH_IN, svg_charts.CHART_WIDTH_IN * len(row)}:
                        fig = svg_charts.chart_figure(
                            chart, width_in=width, height_in=svg_charts.row_height_in(row)
                        )
                        assert_text_apart(fig, chart.title)


def test_png_is_the_report_at_150_dpi(reports):
    data = reports["concurrency"]
    png = report_png(data, "llmtop report")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])  # IHDR
    with svg_charts.style():
        w_in, h_in = report_figure(data).get_size_inches()
    assert (width, height) == (round(w_in * svg_charts.PNG_DPI), round(h_in * svg_charts.PNG_DPI))
    assert width == 1920
    im = Image.open(BytesIO(png)).convert("RGB")
    colors = {c for _, c in im.getcolors(maxcolors=width * height)}
    assert len(colors) > 100  # drawn, not blank
    for name in ("cyan", "magenta", "orange", "green"):  # every chart colour of this scenario
        target = svg_charts.color(name)
        rgb = tuple(int(target[i : i + 2], 16) for i in (1, 3, 5))
        assert rgb in colors, name


class _Refs(HTMLParser):
    """Tags and attribute values of a page, to look for anything it would fetch."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.values: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for key, value in attrs:
            self.values.append(value or "")
            if key == "id" and value:
                self.ids.append(value)


@pytest.mark.parametrize("name", SCENARIOS)
def test_html_page_is_self_contained(reports, pages, name):
    data = reports[name]
    page = pages[name]
    refs = _Refs()
    refs.feed(page)
    assert page.startswith("<!DOCTYPE html>")
    assert "default-src 'none'" in page  # the browser enforces it: no fetch, no script
    assert not {"script", "link", "img", "iframe", "object", "embed"} & set(refs.tags)
    assert refs.tags.count("svg") >= len(titles(data))
    for value in refs.values:
        assert "http://" not in value and "https://" not in value, value
    lowered = page.lower()
    assert "@font-face" not in lowered and "@import" not in lowered
    assert not re.search(r"url\((?!#)", page)  # only references to the page's own clip paths
    # the one http:// in the text is the server the run measured
    rest = page.replace(data.summary.run.base_url, "")
    assert "http://" not in rest and "https://" not in rest
    assert len(refs.ids) == len(set(refs.ids))  # charts cannot point at each other's clip paths
    assert "<table>" in page and "TTFT ms" in page


def test_image_columns_are_rows_of_the_summary():
    keys = {(r.section, r.label) for r in ROWS} | {("Throughput", "offered req/s")}
    assert set(IMAGE_COLUMNS) <= keys
