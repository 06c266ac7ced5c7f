"""Export: every table in both formats, formula neutralizing, awkward text, bounded memory."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import tracemalloc

import pytest
from support.runs import FakeRequest, write_run

from llmtop.storage.db import open_database
from llmtop.storage.export import EXPORT_TABLES, export, neutralize

AWKWARD = 'comma, "quotes", and\na newline'


@pytest.fixture()
def db(tmp_path):
    path = tmp_path / "e.db"
    write_run(path, [FakeRequest(0, [10, 20], prompt_label="first")])
    write_run(
        path,
        [
            FakeRequest(0, [100, 110, 120], prompt_label='=HYPERLINK("http://x")'),
            FakeRequest(50, [150], prompt_label=AWKWARD),
            FakeRequest(60, [160], prompt_label="-2+3"),
        ],
        samples=[(5, 12.5, 1 << 30)],
    )
    d = open_database(path)
    d["gpu_samples"].insert({"run_id": 2, "t_ns": 1, "gpu": 0, "name": "@fake", "util_pct": 50.0})
    d["server_samples"].insert_all([
        {"run_id": 2, "t_ns": 1, "source": "llama.cpp", "key": "llamacpp:tokens_predicted_total",
         "value": 384.0},
        {"run_id": 2, "t_ns": 1, "source": "llama.cpp", "key": "scrape_ms", "value": 1.5},
    ])  # fmt: skip
    d["servers"].insert({"run_id": 2, "t_ns": 1, "kind": "llama.cpp", "version": "b0-unknown",
                         "url": "http://127.0.0.1:8081", "series": "generation_tokens_total"})  # fmt: skip
    return d


def as_csv(db, **kw) -> list[dict[str, str]]:
    out = io.StringIO()
    export(db, out, fmt="csv", **kw)
    return list(csv.DictReader(io.StringIO(out.getvalue())))


def as_json(db, **kw) -> list[dict]:
    out = io.StringIO()
    export(db, out, fmt="json", **kw)
    return json.loads(out.getvalue())


@pytest.mark.parametrize("table", EXPORT_TABLES)
def test_every_table_both_formats_agree_with_the_database(db, table):
    key = "id" if table == "runs" else "run_id"
    expected = db.execute(f"select count(*) from {table} where {key} = 2").fetchone()[0]
    assert expected > 0
    rows_csv = as_csv(db, table=table, run_ids=[2])
    rows_json = as_json(db, table=table, run_ids=[2])
    assert len(rows_csv) == len(rows_json) == expected
    assert list(rows_csv[0]) == list(rows_json[0])  # same columns, same order
    assert {str(r[key]) for r in rows_json} == {"2"}
    everything = as_json(db, table=table, run_ids=None)
    assert len(everything) == db.execute(f"select count(*) from {table}").fetchone()[0]


def test_formulas_are_neutralized_and_awkward_text_round_trips(db):
    labels = [r["prompt_label"] for r in as_csv(db, table="requests", run_ids=[2])]
    assert labels == ['\'=HYPERLINK("http://x")', AWKWARD, "'-2+3"]
    gpu = as_csv(db, table="gpu_samples", run_ids=[2])
    assert gpu[0]["name"] == "'@fake"
    # JSON carries the text as it is: it is not read by spreadsheets.
    assert as_json(db, table="requests", run_ids=[2])[0]["prompt_label"].startswith("=")


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_neutralize_each_prefix(cell):
    assert neutralize(cell) == "'" + cell
    assert neutralize(-1) == -1 and neutralize("a=b") == "a=b" and neutralize(None) is None


def test_numbers_stay_numbers_in_csv(db):
    r = as_csv(db, table="requests", run_ids=[2])[0]
    assert float(r["ttft_ms"]) == pytest.approx(100.0)


def test_empty_selection_is_valid_output(db):
    assert as_json(db, table="tokens", run_ids=[999]) == []
    assert as_csv(db, table="tokens", run_ids=[999]) == []


def test_export_streams_in_bounded_memory(tmp_path):
    path = tmp_path / "big.db"
    db = open_database(path)
    n = 100_000
    with db.conn:
        db.conn.executemany(
            "insert into tokens values (?, ?, ?, ?, ?, ?)",
            ((1, i // 1000, i, i * 1000, 1, 3) for i in range(n)),
        )
    sink = open("/dev/null", "w")
    tracemalloc.start()
    written = export(db, sink, table="tokens", run_ids=None, fmt="csv")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert written == n
    # Holding the rows would take 16 MB (measured: the 100,000 rows as tuples); streaming
    # stays at the cursor's batch.
    assert peak < 4 << 20, f"peak {peak / 1e6:.1f} MB"
    conn = sqlite3.connect(path)
    assert conn.execute("select count(*) from tokens").fetchone()[0] == n


@pytest.mark.parametrize(("table", "clock"), [("requests", "t_start_ns"), ("tokens", "t_ns")])
def test_times_are_placed_on_the_wall_clock(db, table, clock):
    """Each perf_counter time gets ``t_unix_s``: the run's start plus its offset from t0_ns."""
    from datetime import datetime

    (run,) = as_json(db, table="runs", run_ids=[2])
    start = datetime.fromisoformat(run["started_at"]).timestamp()
    rows = as_json(db, table=table, run_ids=[2])
    assert rows and all(r[clock] is not None for r in rows)
    for r in rows:
        expected = start + (r[clock] - run["t0_ns"]) / 1e9
        assert r["t_unix_s"] == pytest.approx(expected, abs=1e-6)
    by_clock = sorted(rows, key=lambda r: r[clock])
    assert [r["t_unix_s"] for r in by_clock] == sorted(r["t_unix_s"] for r in rows)
