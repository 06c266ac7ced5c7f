"""Durability: ``llmtop record`` killed with SIGKILL, a full disk, the dashboard and a recorder on
one file. Real processes, a real fake server, real SQLite files.

What "finished" means for the kill test comes from the fake server's own log: when it wrote a
request's final chunk (``t_end_ns``, CLOCK_MONOTONIC, comparable with this process's
``perf_counter_ns``). The recorder reads that chunk after it was written and its writer stores
it within one flush interval (250 ms); on a busy machine both can come late, so a request must be
on disk when the server finished it more than ``DUE_AFTER_S`` before the kill. The interval
itself, on a quiet machine, is ``bench/durability.py``'s to measure.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from faults_table import check_rows
from support.cli import llmtop_exe
from support.polling import wait_until
from support.servers import Behavior, FakeServer

from llmtop.storage.db import open_database
from llmtop.storage.writer import FLUSH_INTERVAL_S

KILLS = 12
LANES = 4
"""Recorders killed side by side: they mostly wait on the server, so four share two cores."""
EARLY = range(0, KILLS, 4)
"""These kills land during start-up: from the database file's creation (migrations, the run row)
to about the first flush. The others land mid-run (see ``_kill_one``)."""
PACED = Behavior(tokens=8, ttft_ms=5, itl_ms=5)
"""About 45 ms a request, ~90 a second at concurrency 4: a flush by size (5,000 events, some 500
requests) comes every few seconds at most, so what is on disk soon after a finish was flushed by
time, which is what the kill test is about."""
DUE_AFTER_S = FLUSH_INTERVAL_S + 1.0
"""A request the server finished this long before the kill must be on disk: one flush interval,
plus a second for a busy machine to deliver the chunk and wake the writer (two CPU hogs and
other suites delay each by tens of ms)."""

CASES = {
    "sigkill": "record killed with SIGKILL at a random point, 12 times",
    "disk-full": "the database file cannot grow (PRAGMA max_page_count)",
    "dashboard-beside-recorder": "the dashboard records into the file a recorder is writing",
}


def test_the_readme_lists_exactly_these_faults():
    check_rows("test_faults_durability.py", CASES)


def record_cmd(srv: FakeServer, model: str, db: Path, *extra: str) -> list[str]:
    return [llmtop_exe(), "record", "--backend", "ollama", "--url", srv.url, "--model", model,
            "--unique-prompts", "--quiet", "--warmup", "0", "--db", str(db), *extra]  # fmt: skip


def _env() -> dict[str, str]:
    return {**os.environ, "NO_COLOR": "1"}


# --- SIGKILL -------------------------------------------------------------------------------------


@dataclass
class Killed:
    """One recorder killed: when, and what the server had finished by then."""

    index: int
    db: Path
    t_kill_ns: int
    finished_ns: dict[int, int]
    """Request id -> when the server wrote its final chunk."""
    on_disk_before: int
    """Requests this test read on disk before the kill (0 for the early kills)."""


@pytest.fixture(scope="module")
def paced_server() -> Iterator[FakeServer]:
    models = {f"m{i}": PACED for i in range(KILLS)}
    with FakeServer(models, process=True) as srv:
        yield srv


def _ok_requests(db: Path) -> int:
    """Requests stored as finished, read as another process reads the file (0 before it exists)."""
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
        try:
            return conn.execute("select count(*) from requests where status = 'ok'").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet, or created but not migrated
        return 0


def _kill_one(srv: FakeServer, tmp: Path, i: int) -> Killed:
    """Start a recorder, kill it with SIGKILL at a random point of the phase ``i`` is for.

    Early kills: 0-300 ms after the database file appears. Mid-run kills: first the test sees
    finished requests in the file (so the run is going, whatever the machine's load made of
    the start-up), then it lets ``DUE_AFTER_S`` pass (what was on disk is then due, so every
    mid-run kill has due requests by construction) and a random 0.1-0.6 s more, at any phase of
    the flush cycle. The random points are seeded: the same every run of the suite."""
    rng = random.Random(i)
    db = tmp / f"kill{i}.db"
    proc = subprocess.Popen(
        record_cmd(srv, f"m{i}", db, "--requests", "1000000", "--concurrency", "4"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    seen = 0
    try:
        wait_until(db.exists, what=f"{db} to appear")
        if i in EARLY:
            threading.Event().wait(rng.uniform(0.0, 0.3))
        else:
            wait_until(lambda: _ok_requests(db) > 0, what=f"finished requests in {db}")
            seen = _ok_requests(db)
            threading.Event().wait(DUE_AFTER_S + rng.uniform(0.1, 0.6))
        t_kill = time.perf_counter_ns()
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
    assert "Traceback" not in err, err
    finished: dict[int, int] = {}
    for entry in srv.log():
        if entry.model == f"m{i}" and entry.outcome == "done" and entry.t_end_ns is not None:
            m = re.search(r"Request (\d+)\.", json.dumps(entry.body))
            assert m, entry.body
            finished[int(m.group(1))] = entry.t_end_ns
    return Killed(i, db, t_kill, finished, seen)


@pytest.mark.slow
def test_sigkill(paced_server, tmp_path):
    """Killed 12 times at random points, 3 in start-up and 9 mid-run: every file opens and
    passes integrity_check, shows the run as interrupted with its unfinished requests
    cancelled, and holds every request the server finished more than ``DUE_AFTER_S`` before
    the kill, with all its chunks. Each mid-run kill has such requests: the test saw them on
    disk before it killed."""
    with ThreadPoolExecutor(LANES) as pool:
        killed = list(pool.map(lambda i: _kill_one(paced_server, tmp_path, i), range(KILLS)))
    due_after_ns = int(DUE_AFTER_S * 1e9)
    for k in killed:
        db = open_database(k.db)  # the next open: marks the dead run
        try:
            assert db.execute("pragma integrity_check").fetchone()[0] == "ok", k
            assert db.execute("pragma foreign_key_check").fetchall() == [], k
            runs = db.execute("select id, status from runs").fetchall()
            assert runs in ([], [(1, "interrupted")]), (k, runs)
            rows = {
                r[0]: r[1:]
                for r in db.execute("select id, status, chunks, output_tokens from requests")
            }
            tokens = dict(db.execute("select request_id, count(*) from tokens group by request_id"))
        finally:
            db.close()
        due = sorted(
            rid for rid, t_end in k.finished_ns.items() if t_end < k.t_kill_ns - due_after_ns
        )
        if k.index not in EARLY:
            assert len(due) >= k.on_disk_before > 0, (k.index, len(due), k.on_disk_before)
        missing = [rid for rid in due if rid not in rows or rows[rid][0] != "ok"]
        assert not missing, (f"kill {k.index}: requests finished > {DUE_AFTER_S} s before the "
                             f"kill but not on disk: {missing[:10]} ({len(missing)} of {len(due)})")  # fmt: skip
        for rid, (status, chunks, n) in rows.items():
            assert status in ("ok", "cancelled"), (k.index, rid, status)  # none left running
            if status == "ok":
                assert chunks == n == tokens.get(rid) == PACED.tokens, (k.index, rid)


# --- a full disk ---------------------------------------------------------------------------------

CAPPED_RECORD = """
import sys
from llmtop.app.cli import main
from llmtop.storage import writer

opened = writer.open_database

def capped(path):
    db = opened(path)
    pages = db.execute("pragma page_count").fetchone()[0]
    db.execute(f"pragma max_page_count = {pages + int(sys.argv[1])}")
    return db

writer.open_database = capped
main(sys.argv[2:], prog_name="llmtop")
"""
"""``llmtop record`` whose database may grow only a few pages past its size when it opens: the
writer's connection gets ``PRAGMA max_page_count``, so SQLite answers SQLITE_FULL as on a full
disk. Everything else is the real command."""


@pytest.mark.slow
def test_disk_full(tmp_path):
    db = tmp_path / "full.db"
    with FakeServer({"m": Behavior(tokens=64, itl_ms=0.5)}) as srv:
        cmd = record_cmd(srv, "m", db, "--requests", "100000", "--concurrency", "2")
        proc = subprocess.run(
            [sys.executable, "-c", CAPPED_RECORD, "40", *cmd[1:]],
            capture_output=True, text=True, env=_env(), timeout=120,
        )  # fmt: skip
        sent = len(srv.log())
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.splitlines() == [
        f"llmtop: disk full writing {db}: the run stops; what was written is kept"
    ], proc.stderr
    assert 0 < sent < 100000  # it stopped sending
    conn = open_database(db)
    try:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        (status,) = conn.execute("select status from runs").fetchone()
        assert status == "failed"
        rows = conn.execute("select id, status, chunks from requests").fetchall()
        tokens = dict(conn.execute("select request_id, count(*) from tokens group by request_id"))
    finally:
        conn.close()
    ok = [(rid, chunks) for rid, status, chunks in rows if status == "ok"]
    assert ok, "what was written before the disk filled is kept"
    assert all(tokens.get(rid) == chunks == 64 for rid, chunks in ok)
    assert {s for _, s, _ in rows} <= {"ok", "cancelled"}


# --- the dashboard and a recorder on one file ----------------------------------------------------


async def _until(pilot, cond: Callable[[], bool], timeout: float = 60.0) -> None:
    """Let the app run until ``cond()`` holds."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {cond}"
        await pilot.pause(0.05)


@pytest.mark.slow
async def test_dashboard_beside_recorder(tmp_path):
    """A recorder writes the file while the dashboard records its own run into it and lists
    the runs from it; both runs are whole, the recorder's stopped cleanly with Ctrl-C."""
    from llmtop.app.app import DashboardConfig, LlmtopApp
    from llmtop.app.widgets.runs_table import RunsTable
    from llmtop.recorder.flags import RunFlags

    db = tmp_path / "shared.db"
    with FakeServer({"m": Behavior(tokens=16, itl_ms=1)}, process=True) as srv:
        recorder = subprocess.Popen(
            record_cmd(srv, "m", db, "--requests", "1000000", "--concurrency", "2"),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
        )  # fmt: skip
        try:
            wait_until(lambda: _ok_requests(db) >= 10, what="the recorder's first requests")
            launch = RunFlags(**{"backend": "ollama", "url": srv.url, "model": "m",
                                     "requests": 40, "concurrency": 2, "name": "dashboard", "warmup": 0})  # fmt: skip
            app = LlmtopApp(DashboardConfig(db_path=db, config_dir=tmp_path / "cfg", launch=launch,
                                            start_now=True, watch=False, tick_s=0.05))  # fmt: skip
            async with app.run_test(size=(140, 44)) as pilot:
                await _until(pilot, lambda: app.run_status.state == "running")
                await _until(pilot, lambda: app.session.recording is None
                             and app.run_status.state != "running")  # fmt: skip
                assert app.run_status.state == "finished", app.run_status
                dash_run = app.run_status.run_id
                # its runs screen reads the file the recorder is still writing
                await pilot.press("r")
                await _until(pilot, lambda: bool(app.screen.query(RunsTable)))
                table = app.screen.query_one(RunsTable)
                await _until(pilot, lambda: len(table.runs) == 2)
                assert {r.status for r in table.runs} == {"running", "finished"}
            assert recorder.poll() is None, "the recorder must still be going"
            recorder.send_signal(signal.SIGINT)  # Ctrl-C: the run is kept, marked cancelled
            assert recorder.wait(30) == 130
        finally:
            recorder.kill()
            recorder.wait()
        assert recorder.stderr is not None
        err = recorder.stderr.read()
        recorder.stderr.close()
    assert err.splitlines() == [
        "llmtop: interrupted: run 1 marked cancelled; everything received is kept"
    ], err
    conn = open_database(db)
    try:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        runs = {r[0]: r[1:] for r in conn.execute("select id, name, status from runs")}
        assert runs == {1: ("", "cancelled"), dash_run: ("dashboard", "finished")}
        counts = dict(conn.execute("select run_id, count(*) from requests where status = 'ok' "
                                   "group by run_id"))  # fmt: skip
        whole = conn.execute(
            "select count(*) from requests r where status = 'ok' and chunks != 16 or chunks != "
            "(select count(*) from tokens t where t.run_id = r.run_id and t.request_id = r.id)"
        ).fetchone()[0]
    finally:
        conn.close()
    assert counts[dash_run] == 40 and counts[1] > 10
    assert whole == 0, "every stored request has all its chunks"
