"""``llmtop record`` end to end: the real console script, the real backends, the fake server over
real sockets, the real database. Known timings read back; faults land on the right requests;
rates hold."""

from __future__ import annotations

import statistics

import pytest
from support import wire_truth
from support.cli import run_llmtop
from support.servers import Behavior, FakeServer

from llmtop.recorder.runner import arrival_offsets, step_rng
from llmtop.storage import queries
from llmtop.storage.db import open_readonly

TIMED = Behavior(ttft_ms=200, itl_ms=20, tokens=64)


def url_for(srv: FakeServer, backend: str) -> str:
    return srv.url if backend == "ollama" else srv.openai_url


def last_run(path):
    db = open_readonly(path)
    run_id = queries.last_run_id(db)
    rows = list(db.query("select * from requests where run_id = ? order by id", [run_id]))
    return db, run_id, rows


@pytest.fixture(scope="module")
def timed_server():
    models = {"timed": TIMED, "chunky": Behavior(ttft_ms=200, itl_ms=20, tokens=64,
                                                 tokens_per_chunk=4)}  # fmt: skip
    with FakeServer(models, process=True) as srv:
        yield srv


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "model", "concurrency", "requests", "chunks"),
    [
        ("ollama", "timed", 1, 2, 64),
        ("openai", "chunky", 1, 2, 16),
        ("ollama", "chunky", 64, 64, 16),
        ("openai", "timed", 64, 64, 64),
    ],
)
def test_known_timings_read_back_from_the_database(
    timed_server, tmp_path, backend, model, concurrency, requests, chunks
):
    """TTFT 200 ms, ITL 20 ms, 64 tokens (one or four a chunk), sequential and 64 at once.

    Judged against the server's own log of when it got each request and sent each chunk
    (support/wire_truth.py: exact counts and causality, closeness that a busy machine cannot
    break); how close on a quiet machine is bench/accuracy.py's to print.
    """
    db_path = tmp_path / "acc.db"
    timed_server.log(clear=True)
    proc = run_llmtop(
        "record", "--backend", backend, "--url", url_for(timed_server, backend), "--model", model,
        "--requests", str(requests), "--concurrency", str(concurrency), "--db", str(db_path),
        "--quiet", "--unique-prompts", "--warmup", "0",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    db, run_id, rows = last_run(db_path)
    assert len(rows) == requests and {r["status"] for r in rows} == {"ok"}
    assert {r["output_tokens"] for r in rows} == {64}  # exact, from the server's count
    assert {r["chunks"] for r in rows} == {chunks}
    stored = next(db.query("select count(*) c, sum(n_tokens) n from tokens where run_id = ?",
                           [run_id]))  # fmt: skip
    assert stored["c"] == chunks * requests  # every chunk's arrival is on disk
    if chunks == 64:
        assert stored["n"] == 64 * requests  # one token a chunk: exact on the wire too
    logs = {wire_truth.request_number(log.body): log for log in timed_server.log()}
    print(wire_truth.check(wire_truth.from_database(db, run_id), logs))
    # a chunk of k tokens counts as k tokens spread over its gap: k equal ITL values per gap
    k = 64 // chunks
    for gaps in queries.itl_by_request(db, run_id).values():
        assert len(gaps) == 64 - k
        assert all(len(set(gaps[i : i + k])) == 1 for i in range(0, len(gaps), k)), gaps


FAULT_SCRIPT = [
    ("ok", None, None, Behavior(tokens=6, itl_ms=1)),
    ("error", "http_status", "HTTP 500", Behavior(fault="status", status=500)),
    ("error", "protocol", "cut", Behavior(fault="cut", fault_after=3, tokens=6, itl_ms=1)),
    ("error", "protocol", "malformed", Behavior(fault="malformed", fault_after=2, tokens=6)),
    ("error", "http_status", "404", Behavior(fault="status", status=404)),
    ("error", "timeout", "0.5 s", Behavior(fault="hang_mid_stream", fault_after=2, tokens=6,
                                           hold_s=10)),
    ("error", "protocol", "closed the connection", Behavior(fault="close_before_headers")),
    ("ok", None, None, Behavior(tokens=6, itl_ms=1)),
]  # fmt: skip


@pytest.mark.parametrize("backend", ["ollama", "openai"])
def test_each_fault_fails_its_request_with_one_clear_line_and_the_run_goes_on(tmp_path, backend):
    with FakeServer({"m": Behavior(tokens=6)}) as srv:
        srv.script(*(b for *_, b in FAULT_SCRIPT))
        proc = run_llmtop(
            "record", "--backend", backend, "--url", url_for(srv, backend), "--model", "m",
            "--requests", str(len(FAULT_SCRIPT)), "--timeout", "0.5", "--warmup", "0",
            "--db", str(tmp_path / "f.db"),
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr  # some succeeded: the run finished
    _, _, rows = last_run(tmp_path / "f.db")
    assert len(rows) == len(FAULT_SCRIPT)
    for row, (status, kind, fragment, _) in zip(rows, FAULT_SCRIPT, strict=True):
        assert (row["status"], row["error_kind"]) == (status, kind), row
        if fragment:
            assert fragment in row["error"] and "\n" not in row["error"], row["error"]
    assert rows[2]["chunks"] == 3 and rows[5]["chunks"] == 2  # what arrived is kept
    assert "errors: 2 http_status, e.g. HTTP" in proc.stdout
    assert "errors: 1 timeout" in proc.stdout


def test_every_request_failing_exits_1_with_the_reason(tmp_path):
    with FakeServer({"m": Behavior(fault="status", status=503)}) as srv:
        proc = run_llmtop("record", "--backend", "ollama", "--url", srv.url, "--model", "m",
                          "--requests", "3", "--db", str(tmp_path / "f.db"))  # fmt: skip
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("llmtop: every request failed (3 http_status)") and "503" in last
    assert "run 1 marked failed" in last and "Traceback" not in proc.stderr
    db = open_readonly(tmp_path / "f.db")
    assert queries.get_run(db, 1).status == "failed"


def starts_s(rows) -> list[float]:
    t0 = rows[0]["t_start_ns"]
    return [(r["t_start_ns"] - t0) / 1e9 for r in rows]


def off_plan_ms(starts: list[float], planned: list[float]) -> float:
    """The typical request's distance from its planned offset (the first request is the origin).

    A median: on a busy machine single requests leave tens of ms late, and what this guards
    against moves most of them by hundreds (a rate not applied, a wrong unit, another seed).
    How close on a quiet machine is bench/accuracy.py's to print."""
    return statistics.median(abs(s - p) for s, p in zip(starts, planned, strict=True)) * 1000


def test_a_constant_rate_step_keeps_its_rate_on_the_wire(tmp_path):
    with FakeServer({"m": Behavior(ttft_ms=10, itl_ms=5, tokens=4)}, process=True) as srv:
        proc = run_llmtop("record", "--backend", "ollama", "--url", srv.url, "--model", "m",
                          "--rate", "20", "--arrival", "constant", "--requests", "30",
                          "--warmup", "0", "--db", str(tmp_path / "r.db"), "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _, _, rows = last_run(tmp_path / "r.db")
    starts = starts_s(rows)
    assert starts == sorted(starts) and len(starts) == 30
    assert off_plan_ms(starts, [i / 20 for i in range(30)]) < wire_truth.LATE_MS, starts


def test_poisson_arrivals_with_a_seed_are_the_same_every_run(tmp_path):
    """The seed reaches the schedule: both runs follow the planned offsets of seed 7 (the runner's
    own test, on a virtual clock, checks them to the nanosecond)."""
    planned_iter = arrival_offsets("poisson", 40.0, step_rng(7, 0))
    planned = [next(planned_iter) for _ in range(24)]
    runs = []
    with FakeServer({"m": Behavior(ttft_ms=5, itl_ms=2, tokens=3)}, process=True) as srv:
        for _ in range(2):
            proc = run_llmtop("record", "--backend", "openai", "--url", srv.openai_url,
                              "--model", "m", "--rate", "40", "--seed", "7", "--requests", "24",
                              "--warmup", "0", "--db", str(tmp_path / "p.db"), "--quiet")  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            runs.append(starts_s(last_run(tmp_path / "p.db")[2]))
    for starts in runs:
        assert off_plan_ms(starts, planned) < wire_truth.LATE_MS, (starts, planned)
