"""The batched writer: flush by size, by time and on close; request rows from events; disk full."""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3

import pytest
from support.runs import MS, FakeRequest, request_events

from llmtop.core.errors import StorageError
from llmtop.core.events import ServerTimings, TokenReceived
from llmtop.storage.db import open_database
from llmtop.storage.rows import Batch, write_batch
from llmtop.storage.writer import EventWriter, RunInfo


def count(path, table: str) -> int:
    with sqlite3.connect(path) as conn:
        return conn.execute(f"select count(*) from {table}").fetchone()[0]


async def test_flushes_by_size(tmp_path):
    path = tmp_path / "t.db"
    async with EventWriter(path, flush_rows=10, flush_interval_s=3600) as w:
        run_id, t0 = await w.create_run(RunInfo(name="size"))
        for i in range(25):
            await w.put(TokenReceived(run_id, 1, i, t0 + i))
        await w.wait_written()
        assert count(path, "tokens") == 20  # two full batches; five wait in the buffer
        assert w.stats.flushes == 2
    assert count(path, "tokens") == 25  # close flushes the rest


async def test_a_big_batch_is_written_in_slices_with_the_core_given_up_between(tmp_path):
    """One transaction, every row, and ``pause`` (the writer thread's ``os.sched_yield``)
    between each slice of token rows, so a flush never holds a core for milliseconds."""
    path = tmp_path / "t.db"
    async with EventWriter(path, flush_rows=10**6, flush_interval_s=3600) as w:
        run_id, t0 = await w.create_run(RunInfo())
    b = Batch()
    b.tokens = [TokenReceived(run_id, 1, i, t0 + i) for i in range(1000)]
    pauses: list[int] = []
    with sqlite3.connect(path) as conn:
        write_batch(conn, b, 256, lambda: pauses.append(conn.in_transaction))
    assert pauses == [True, True, True]  # 256 + 256 + 256 + 232, inside the one transaction
    assert count(path, "tokens") == 1000


async def test_put_waits_while_the_disk_is_behind(tmp_path):
    path = tmp_path / "t.db"
    async with EventWriter(path, flush_rows=100, max_pending_rows=300) as w:
        run_id, t0 = await w.create_run(RunInfo())
        for i in range(5000):
            await w.put(TokenReceived(run_id, 1, i, t0 + i))
            # Never more than the limit plus one batch waits in memory.
            assert w.backlog <= 300 + 100
    assert count(path, "tokens") == 5000


async def test_flushes_by_time(tmp_path):
    path = tmp_path / "t.db"
    async with EventWriter(path, flush_rows=10_000, flush_interval_s=0.05) as w:
        run_id, t0 = await w.create_run(RunInfo(name="time"))
        for i in range(3):
            await w.put(TokenReceived(run_id, 1, i, t0 + i))
        # Nobody calls flush: the ticker must hand the batch over on its own.
        for _ in range(200):
            await w.wait_written()
            if count(path, "tokens") == 3:
                break
            await asyncio.sleep(0.01)
        assert count(path, "tokens") == 3
        assert w.stats.flushes >= 1


async def test_flushes_on_close(tmp_path):
    path = tmp_path / "t.db"
    w = EventWriter(path, flush_rows=10_000, flush_interval_s=3600)
    await w.start()
    run_id, t0 = await w.create_run(RunInfo())
    for i in range(7):
        w.put_nowait(TokenReceived(run_id, 1, i, t0 + i))
    assert count(path, "tokens") == 0
    await w.close()
    await w.close()  # twice is harmless
    assert count(path, "tokens") == 7


async def test_request_rows_from_events(tmp_path):
    path = tmp_path / "t.db"
    ok = FakeRequest(0, [200, 220, 240, 260], end_ms=265, step="short",
                     server=ServerTimings(prompt_tokens=12, output_tokens=4, eval_ns=60 * MS))  # fmt: skip
    bad = FakeRequest(300, [500, 520], end_ms=530, fail="protocol", message="malformed line")
    async with EventWriter(path) as w:
        run_id, t0 = await w.create_run(RunInfo(name="r", backend="fake", model="m"))
        for ev in request_events(run_id, 1, t0, ok) + request_events(run_id, 2, t0, bad):
            await w.put(ev)
        await w.finish_run(run_id, "finished")
    conn = sqlite3.connect(path)
    conn.row_factory = sqlite3.Row
    rows = conn.execute("select * from requests order by id").fetchall()
    r1, r2 = rows
    assert (r1["status"], r1["step"], r1["output_tokens"], r1["chunks"]) == ("ok", "short", 4, 4)
    assert r1["ttft_ms"] == pytest.approx(200.0) and r1["e2e_ms"] == pytest.approx(265.0)
    assert r1["tpot_ms"] == pytest.approx(20.0) and r1["decode_tps"] == pytest.approx(50.0)
    assert r1["prompt_tokens"] == 12 and r1["server_tps"] == pytest.approx(4 / 0.06)
    # The failed request keeps what it received: its TTFT, its two chunks, its error.
    assert (r2["status"], r2["error_kind"], r2["error"]) == ("error", "protocol", "malformed line")
    assert r2["ttft_ms"] == pytest.approx(200.0) and r2["chunks"] == 2 and r2["output_tokens"] == 2
    assert conn.execute("select count(*) from tokens where request_id = 2").fetchone()[0] == 2
    run = conn.execute("select * from runs").fetchone()
    assert run["status"] == "finished" and run["ended_at"] and run["t0_ns"] == t0


async def test_requests_in_flight_when_run_stops_are_cancelled(tmp_path):
    path = tmp_path / "t.db"
    async with EventWriter(path) as w:
        run_id, t0 = await w.create_run(RunInfo())
        evs = request_events(run_id, 1, t0, FakeRequest(0, [10, 20]))
        for ev in evs[:-1]:  # started and two chunks, never finished
            await w.put(ev)
        await w.finish_run(run_id, "cancelled")
    conn = sqlite3.connect(path)
    status, kind = conn.execute("select status, error_kind from requests").fetchone()
    assert (status, kind) == ("cancelled", "cancelled")
    assert conn.execute("select count(*) from tokens").fetchone()[0] == 2
    assert conn.execute("select status from runs").fetchone()[0] == "cancelled"


async def test_no_tokens_mode_keeps_requests_only(tmp_path):
    path = tmp_path / "t.db"
    async with EventWriter(path, store_tokens=False) as w:
        run_id, t0 = await w.create_run(RunInfo())
        for ev in request_events(run_id, 1, t0, FakeRequest(0, [10, 20, 30])):
            await w.put(ev)
    assert count(path, "tokens") == 0
    assert count(path, "requests") == 1


async def test_disk_full_is_one_storage_error_and_keeps_earlier_rows(tmp_path):
    path = tmp_path / "t.db"
    async with EventWriter(path, flush_rows=500) as w:
        run_id, t0 = await w.create_run(RunInfo())
        for i in range(500):
            await w.put(TokenReceived(run_id, 1, i, t0 + i))
        await w.flush()
        pages = sqlite3.connect(path).execute("pragma page_count").fetchone()[0]

        def cap() -> None:
            assert w._db is not None
            w._db.execute(f"pragma max_page_count = {pages + 1}")

        await w._call(cap)
        for i in range(500, 20_500):
            await w.put(TokenReceived(run_id, 1, i, t0 + i))
        with pytest.raises(StorageError, match="disk full"):
            await w.flush()
        assert w.error is not None and "disk full" in str(w.error)
        with pytest.raises(StorageError, match="disk full"):
            await w.finish_run(run_id, "failed", "disk full")
    conn = sqlite3.connect(path)
    # The run is closed as failed even though the disk is full: the update fits in its page.
    assert conn.execute("select status, error from runs").fetchone() == ("failed", "disk full")
    assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
    assert conn.execute("select count(*) from tokens").fetchone()[0] >= 500


def _create_runs(db: str, n: int, out: multiprocessing.Queue) -> None:
    async def main() -> list[str]:
        errors = []
        for i in range(n):
            try:
                async with EventWriter(db) as w:
                    run_id, _ = await w.create_run(RunInfo(name=f"r{i}", backend="openai"))
                    await w.finish_run(run_id, "finished")
            except StorageError as e:
                errors.append(str(e))
        return errors

    out.put(asyncio.run(main()))


def test_processes_creating_runs_at_once_wait_their_turn(tmp_path):
    """Recorders starting together on one database: a transaction that read before writing
    (sqlite-utils' insert looks at the table first) was refused "database is locked" at once,
    without waiting, when another process committed in between (5-9 of 40 here). Each write
    transaction now takes the lock as it begins and waits for it."""
    db = str(tmp_path / "shared.db")
    open_database(db).close()
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_create_runs, args=(db, 10, out)) for _ in range(4)]
    for p in procs:
        p.start()
    errors = [e for _ in procs for e in out.get(timeout=120)]
    for p in procs:
        p.join(30)
    assert errors == []
    with sqlite3.connect(db) as conn:
        assert conn.execute("select count(*) from runs where status = 'finished'").fetchone() == (
            40,
        )
