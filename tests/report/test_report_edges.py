"""Reports of runs with little or nothing in them, and the chart helpers on known numbers."""

from __future__ import annotations

import pytest
from report.render import plain
from support.runs import FakeRequest, write_run

from llmtop.app.report.charts import Marker, Series, bar_chart, histogram_chart
from llmtop.app.report.data import bin_count, load_report
from llmtop.app.report.document import report_renderables
from llmtop.app.report.html_page import report_html
from llmtop.app.report.report_image import report_png, report_svg
from llmtop.app.report.scenario_charts import throughput_over_time
from llmtop.app.report.text_formats import report_markdown
from llmtop.storage.db import open_readonly
from llmtop.storage.queries import make_histogram


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "edge.db"
    write_run(path, [])  # 1: nothing recorded
    write_run(path, [FakeRequest(0, [], fail="connect"), FakeRequest(5, [], fail="timeout")],
              status="failed")  # 2: every request failed  # fmt: skip
    write_run(path, [FakeRequest(0, [100])])  # 3: one request, one token
    return open_readonly(path)


def test_a_run_without_requests_says_so(db):
    text = plain(*report_renderables(load_report(db, 1), 100), width=100)
    assert "This run recorded no requests" in text
    assert "E2E latency" not in text
    md = report_markdown(load_report(db, 1))
    assert "| step |" not in md and "No requests were recorded in this run." in md


def test_a_run_where_everything_failed_shows_the_errors(db):
    data = load_report(db, 2)
    text = plain(*report_renderables(data, 160), width=160)
    assert "·  failed  ·  requests 2  ·  2 failed (connect 1, timeout 1)" in text
    assert "No request succeeded: nothing to chart." in text


@pytest.mark.parametrize("run", [1, 2, 3])
def test_files_of_small_runs_say_what_is_missing(db, run):
    data = load_report(db, run)
    svg, page = report_svg(data, "r"), report_html(data, "r")
    assert report_png(data, "r").startswith(b"\x89PNG")
    message = {1: "This run recorded no requests", 2: "No request succeeded: nothing to chart."}
    if run in message:
        assert message[run] in svg and message[run] in page
        assert "<figure" not in page
    else:  # one request: every chart drawn, the TPOT row left out as in the terminal
        assert page.count('<figure class="chart"') == 3
        assert "E2E latency (ms), 1 requests" in svg
        assert "TPOT" not in page


def test_one_request_with_one_token(db):
    data = load_report(db, 3)
    text = plain(*report_renderables(data, 100), width=100)
    assert "E2E latency (ms), 1 requests" in text
    assert "TPOT" not in text  # no decode with a single token: the row is left out


def test_histogram_bins_grow_with_the_count():
    assert bin_count(1) == 5 and bin_count(100) == 20 and bin_count(100_000) == 30


def test_throughput_over_time_reads_back_a_steady_rate():
    # one request ending every 0.1 s for 10 s: 10 req/s in every bucket
    points = throughput_over_time([i / 10 for i in range(101)], buckets=5)
    assert len(points) == 5
    for _, rate in points:
        assert rate == pytest.approx(10.0, rel=0.06)
    assert throughput_over_time([1.0]) == []


def test_charts_carry_their_numbers():
    hist = make_histogram("e2e_ms", [100.0, 110.0, 120.0, 300.0], 4)
    text = histogram_chart(hist, title="E2E", width=60, height=12,
                           markers=[Marker("P50", 115.0, "green")])  # fmt: skip
    assert "P50 115" in text and "█" in text
    bars = bar_chart(["short", "long"], [Series("ms", [100.0, 400.0])], title="t", width=60)
    plain_bars = "\n".join(line.rstrip() for line in bars.splitlines())
    assert "100" in plain_bars and "400" in plain_bars
    assert "no values to chart" in bar_chart(["a"], [Series("x", [None])], title="t", width=40)
