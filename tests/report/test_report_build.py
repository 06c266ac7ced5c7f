"""Reports of stored runs of every built-in scenario: breakdown, table, charts, Markdown, JSON, files."""

from __future__ import annotations

import json
import re

import pytest
from report.render import plain, table_cells
from report.scenario_runs import SCENARIOS

from llmtop.app.report.data import load_report, pick_dimension
from llmtop.app.report.document import report_renderables
from llmtop.app.report.tables import summary_table
from llmtop.app.report.text_formats import report_json, report_markdown
from llmtop.core import fmt
from llmtop.storage import queries
from llmtop.storage.db import open_readonly

EXPECTED = {
    "basic": ("prompt", ["short", "medium", "long"], "Latency by prompt: prefill + decode"),
    "prompt-length": ("prompt", ["tiny", "short", "medium", "long", "very-long"],
                      "Decode tok/s by prompt"),
    "temperature": ("temperature", ["0", "0.7", "1.5"], "Latency by temperature"),
    "concurrency": ("concurrency", ["1", "2", "4", "8"], "Requests/s by concurrency"),
    "soak": ("time", [], "CPU % over the run"),
    "rate-sweep": ("rate", ["0.5/s", "1/s", "2/s", "4/s"], "Goodput by offered rate"),
}  # fmt: skip
STANDARD_TITLES = ("E2E latency (ms)", "TTFT over the run (ms)", "Decode tok/s over the run")


@pytest.fixture(scope="module")
def reports(scenario_db):
    path, ids = scenario_db
    db = open_readonly(path)
    data = {name: load_report(db, run_id) for name, run_id in ids.items()}
    return db, data


@pytest.mark.parametrize("name", SCENARIOS)
def test_each_scenario_gets_the_breakdown_it_was_made_for(reports, name):
    _, data = reports
    dim, labels, _ = EXPECTED[name]
    b = data[name].breakdown
    assert b is not None and b.dimension == dim
    assert [g.label for g in b.groups] == labels


def test_unknown_scenarios_are_judged_by_what_varies():
    d = {"prompt_label": ["a", "b"], "concurrency": [1], "temperature": [0.7]}
    assert pick_dimension("mine", {}, d, has_samples=False) == "prompt"
    d["concurrency"] = [1, 4]
    assert pick_dimension("mine", {}, d, has_samples=False) == "concurrency"
    assert pick_dimension("mine", {"a": 1.0, "b": 2.0}, d, has_samples=False) == "rate"
    one = {"prompt_label": ["a"], "concurrency": [1], "temperature": [0.0]}
    assert pick_dimension("mine", {}, one, has_samples=True) == "time"
    assert pick_dimension("mine", {}, one, has_samples=False) is None
    # A built-in name wins when its dimension applies, and is ignored when it does not.
    assert (
        pick_dimension("temperature", {}, {**d, "temperature": [0.0, 1.5]}, False) == "temperature"
    )
    assert pick_dimension("soak", {}, d, has_samples=False) == "concurrency"


@pytest.mark.parametrize("name", SCENARIOS)
def test_report_renders_with_the_charts_that_fit(reports, name):
    _, data = reports
    text = plain(*report_renderables(data[name], 140), width=140)
    run = data[name].summary.run
    assert f"run {run.id}" in text and run.model in text
    assert EXPECTED[name][2] in text
    for title in STANDARD_TITLES:
        assert title in text, title
    assert "█" in text or "•" in text  # bars or points were drawn
    narrow = plain(*report_renderables(data[name], 80), width=80)
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert EXPECTED[name][2] in narrow


def test_findings_are_worked_out_from_the_numbers(reports):
    _, data = reports
    text = plain(*report_renderables(data["basic"], 140))
    # short: TTFT mean 101.2 of E2E mean 484.5 ms (21 %); long: 421.2 of 823.5 ms (51 %)
    assert "Prefill is 20.9% of latency for 'short' and 51.1% for 'long'." in text
    rate = plain(*report_renderables(data["rate-sweep"], 140))
    # TTFT SLO 300 ms: 2 req/s still at 280 (+-6) ms, 4 req/s at 600 ms
    assert "up to 2 req/s offered" in rate


STAT_ROWS = {
    ("TTFT ms", "mean"): lambda s: s.ttft_ms.mean,
    ("TTFT ms", "p50"): lambda s: s.ttft_ms.p50,
    ("TTFT ms", "p95"): lambda s: s.ttft_ms.p95,
    ("TPOT ms", "mean"): lambda s: s.tpot_ms.mean,
    ("ITL ms", "p50"): lambda s: s.itl_ms.p50,
    ("E2E latency ms", "mean"): lambda s: s.e2e_ms.mean,
    ("E2E latency ms", "p95"): lambda s: s.e2e_ms.p95,
    ("E2E latency ms", "p99"): lambda s: s.e2e_ms.p99,
    ("Throughput", "decode tok/s (mean)"): lambda s: s.decode_tps.mean,
    ("Throughput", "requests/s"): lambda s: s.req_per_s,
    ("Throughput", "output tok/s"): lambda s: s.out_tok_per_s,
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_table_numbers_are_the_storage_queries(reports, name):
    db, data = reports
    fresh = queries.run_summary(db, data[name].summary.run.id)
    expected_cols = list(fresh.steps) + ([fresh.overall] if len(fresh.steps) > 1 else [])
    cells = table_cells(plain(summary_table(data[name].summary), width=250), len(expected_cols))
    assert cells[("Requests", "ok")] == [str(s.ok) for s in expected_cols]
    for key, get in STAT_ROWS.items():
        assert cells[key] == [fmt.num(get(s)) for s in expected_cols], key
    goodput = [fmt.share(s.goodput) for s in expected_cols]
    assert cells[("Throughput", "goodput")] == goodput


def test_table_numbers_by_hand(reports):
    _, data = reports
    cells = table_cells(plain(summary_table(data["basic"].summary), width=250), 4)
    # short: TTFT 100 + (0, 6, -6, 0, 6) ms -> mean 101.2, p50 100
    assert cells[("TTFT ms", "mean")][0] == "101.2"
    assert cells[("TTFT ms", "p50")][0] == "100.0"
    assert cells[("Requests", "ok")] == ["5", "5", "5", "15"]  # the warm-up is not counted
    conc = table_cells(plain(summary_table(data["concurrency"].summary), width=250), 5)
    assert conc[("Requests", "errors")] == ["0", "0", "0", "1", "1"]


@pytest.mark.parametrize("name", SCENARIOS)
def test_markdown_table_has_every_step(reports, name):
    db, data = reports
    md = report_markdown(data[name])
    lines = [line for line in md.splitlines() if line.startswith("|")]
    widths = {len(re.split(r"(?<!\\)\|", line)) for line in lines}
    assert len(widths) == 1  # a well-formed table: every row has the header's columns
    assert re.fullmatch(r"\|:---(\|---:)+\|", lines[1])
    steps = queries.run_summary(db, data[name].summary.run.id).steps
    rows = {line.split(" | ")[0].removeprefix("| "): line for line in lines[2:]}
    for s in steps:
        row = rows[s.step]
        assert f" {fmt.num(s.ttft_ms.mean)} " in row and f" {fmt.num(s.e2e_ms.p95)} " in row
    if len(steps) > 1:
        assert "all" in rows


def test_json_carries_the_numbers(reports):
    db, data = reports
    out = json.loads(json.dumps(report_json(data["concurrency"]), default=str))
    fresh = queries.run_summary(db, data["concurrency"].summary.run.id)
    assert [s["step"] for s in out["steps"]] == ["c1", "c2", "c4", "c8"]
    assert out["overall"]["ttft_ms"]["p95"] == pytest.approx(fresh.overall.ttft_ms.p95)
    assert [g["key"] for g in out["breakdown"]["groups"]] == [1, 2, 4, 8]
    assert sum(out["e2e_histogram_ms"]["counts"]) == fresh.overall.ok
    rate = report_json(data["rate-sweep"])
    assert rate["derived"]["sustainable_rate"] == 2.0
