"""The only code that writes: events in on the event loop, batches out on one thread.

Producers call ``writer.put_nowait(event)`` (or ``await writer.put(event)``, which also waits
when the disk falls behind). Events go into a buffer that is handed to the writer thread every
half ``flush_interval_s`` (the other half is the write's: an event is on disk within one flush
interval, which a recorder killed with SIGKILL relies on; tests/faults checks it) or every
``flush_rows`` events, whichever comes first, and on close. The thread owns its connection and
writes each batch in one transaction with ``executemany``.

Why a buffer and not an ``asyncio.Queue`` per event: a queue's put and get cost ~0.4 us per
event on this machine, more than half of what SQLite itself spends per row, and the writer must
keep up with tens of thousands of tokens per second on one core (bench/storage_ingest.py). The
queue's one duty, backpressure, is kept: ``put`` waits while more than ``max_pending_rows`` are
handed over but not yet written, so memory stays bounded and nothing is dropped. Timestamps are
taken before ``put``, so a slow disk never distorts a measurement.

Run rows are created and closed through the same thread (``create_run``/``finish_run``), so the
order of writes is the order of calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, assert_never

import psutil
from sqlite_utils import Database

from llmtop import __version__
from llmtop.collectors.events import (
    Event,
    GpuSampled,
    RequestFailed,
    RequestFinished,
    RequestStarted,
    ResourcesSampled,
    ServerSampled,
    SourceDown,
    TokenReceived,
)
from llmtop.collectors.metrics import e2e_ms, request_metrics, ttft_ms
from llmtop.errors import StorageError
from llmtop.storage.db import open_database, resolve_db_path

T = TypeVar("T")

FLUSH_INTERVAL_S = 0.25
FLUSH_ROWS = 5_000
MAX_PENDING_ROWS = 200_000

RUN_STATUSES = ("running", "finished", "cancelled", "interrupted", "failed")

REQUEST_COLUMNS: tuple[str, ...] = (
    "run_id", "id", "step", "prompt_label", "prompt_chars", "prompt_tokens", "output_tokens",
    "chunks", "concurrency", "temperature", "max_tokens", "warmup", "t_start_ns", "t_first_ns",
    "t_end_ns", "ttft_ms", "e2e_ms", "tpot_ms", "decode_tps", "overall_tps", "server_ttft_ms",
    "server_tps", "load_ms", "done_reason", "status", "error_kind", "http_status", "error",
)  # fmt: skip
_UPSERT_REQUEST = (
    f"INSERT INTO requests ({', '.join(REQUEST_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(REQUEST_COLUMNS))}) "
    "ON CONFLICT(run_id, id) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in REQUEST_COLUMNS[2:])
)
_INSERT_TOKEN = (
    "INSERT OR REPLACE INTO tokens (run_id, request_id, idx, t_ns, n_tokens, text_len)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_SAMPLE = (
    "INSERT INTO samples (run_id, t_ns, cpu_pct, mem_used, mem_total, server_rss, server_cpu_pct,"
    " per_core_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_GPU = (
    "INSERT INTO gpu_samples (run_id, t_ns, gpu, name, util_pct, mem_used, mem_total, power_w,"
    " temp_c) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_SERVER = (
    "INSERT INTO server_samples (run_id, t_ns, source, key, value) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_DOWN = "INSERT INTO source_down (run_id, t_ns, source, reason) VALUES (?, ?, ?, ?)"


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What a run is, written once when it starts."""

    name: str = ""
    scenario: str = ""
    backend: str = ""
    base_url: str = ""
    model: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    host: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class WriterStats:
    """Counters for the status line and the benchmark."""

    events: int = 0
    rows: int = 0
    flushes: int = 0
    flush_s: float = 0.0


class _Batch:
    """Rows of one flush, built on the writer thread from a list of events."""

    __slots__ = ("downs", "gpus", "requests", "samples", "servers", "tokens")

    def __init__(self) -> None:
        self.tokens: list[tuple[int, int, int, int, int, int]] = []
        self.requests: dict[tuple[int, int], dict[str, Any]] = {}
        self.samples: list[tuple[Any, ...]] = []
        self.gpus: list[tuple[Any, ...]] = []
        self.servers: list[tuple[Any, ...]] = []
        self.downs: list[tuple[Any, ...]] = []


def _disk_full(e: sqlite3.Error) -> bool:
    return "full" in str(e).lower()


class EventWriter:
    """Writes events to one SQLite file from one thread; use as an async context manager.

    Args:
        path: the database file (``None``: the default path).
        flush_interval_s: the longest an event takes to reach the disk (handed over every half
            interval, written in the other half).
        flush_rows: the most events in one batch.
        store_tokens: keep one row per chunk (``record --no-tokens`` turns it off).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        flush_rows: int = FLUSH_ROWS,
        store_tokens: bool = True,
        max_pending_rows: int = MAX_PENDING_ROWS,
    ) -> None:
        self.path: Path = resolve_db_path(path)
        self.flush_interval_s = flush_interval_s
        self.flush_rows = flush_rows
        self.store_tokens = store_tokens
        self.max_pending_rows = max_pending_rows
        self.stats = WriterStats()
        self.error: StorageError | None = None
        """Set when a write failed (disk full); later events are dropped, the run should stop."""
        self._buf: list[Event] = []
        self._jobs: queue.SimpleQueue[tuple[str, Any, Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._handed = 0  # events handed to the thread (event-loop side)
        self._written = 0  # events the thread has written (thread side; int stores are atomic)
        self._room: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open_requests: dict[tuple[int, int], dict[str, Any]] = {}
        self._db: Database | None = None
        self._closed = False

    # --- event-loop side ---------------------------------------------------------------------

    async def __aenter__(self) -> EventWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the database on the writer thread (so its errors surface here) and start draining."""
        self._loop = asyncio.get_running_loop()
        self._room = asyncio.Event()
        self._thread = threading.Thread(target=self._thread_main, name="llmtop-writer", daemon=True)
        self._thread.start()
        await self._call(lambda: None)
        self._tasks = [asyncio.create_task(self._tick(), name="writer-tick")]

    def put_nowait(self, event: Event) -> None:
        """Buffer one event; hands a full batch to the thread. Never blocks, never drops."""
        buf = self._buf
        buf.append(event)
        if len(buf) >= self.flush_rows:
            self._handoff()

    async def put(self, event: Event) -> None:
        """Buffer one event, then wait while the disk is more than ``max_pending_rows`` behind."""
        self.put_nowait(event)
        if self._handed - self._written > self.max_pending_rows:
            await self.wait_for_room()

    @property
    def backlog(self) -> int:
        """Events buffered or handed over but not yet on disk."""
        return len(self._buf) + self._handed - self._written

    async def wait_for_room(self) -> None:
        """Wait until the thread has caught up to ``max_pending_rows`` (storage backpressure)."""
        assert self._room is not None
        while self._handed - self._written > self.max_pending_rows and self.error is None:
            self._room.clear()
            await self._room.wait()

    async def create_run(self, info: RunInfo) -> tuple[int, int]:
        """Insert a ``running`` run; returns ``(run_id, t0_ns)``."""
        t0_ns = time.perf_counter_ns()
        proc = psutil.Process()
        row = {
            "name": info.name,
            "started_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "status": "running",
            "scenario": info.scenario,
            "backend": info.backend,
            "base_url": info.base_url,
            "model": info.model,
            "params_json": json.dumps(info.params, default=str),
            "host_json": json.dumps(info.host, default=str),
            "llmtop_version": __version__,
            "pid": proc.pid,
            "pid_started_at": proc.create_time(),
            "t0_ns": t0_ns,
        }

        def insert() -> int:
            assert self._db is not None
            with self._db.atomic():
                return int(self._db["runs"].insert(row).last_pk)

        return await self._call(insert), t0_ns

    async def finish_run(self, run_id: int, status: str, error: str | None = None) -> None:
        """Flush what is queued, then close the run with ``status``."""
        if status not in RUN_STATUSES:
            raise ValueError(f"unknown run status {status!r}")
        with contextlib.suppress(StorageError):
            await self.flush()  # a write error is already in self.error; close the run anyway
        ended = datetime.now(UTC).isoformat(timespec="milliseconds")

        def update() -> None:
            assert self._db is not None
            with self._db.atomic():
                self._db.execute(
                    "update runs set status = ?, ended_at = ?, error = ? where id = ?",
                    [status, ended, error, run_id],
                )
                if status != "finished":
                    self._db.execute(
                        "update requests set status = 'cancelled', error_kind = 'cancelled', "
                        "error = 'the run stopped before this request finished' "
                        "where run_id = ? and status = 'running'",
                        [run_id],
                    )

        await self._call(update, after_error=True)
        if self.error is not None:
            raise self.error

    async def flush(self) -> None:
        """Write everything queued so far and wait until it is on disk."""
        self._handoff()
        await self._call(lambda: None)

    async def wait_written(self) -> None:
        """Wait until the batches already handed to the thread are on disk (the buffer stays)."""
        await self._call(lambda: None)

    async def close(self) -> None:
        """Final flush, then stop the thread. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._thread is None:
            return
        self._handoff()
        with contextlib.suppress(StorageError):
            await self._call(self._close_db, after_error=True)
        self._jobs.put(None)
        await asyncio.to_thread(self._thread.join)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval_s / 2)
            self._handoff()

    def _handoff(self) -> None:
        if self._buf:
            batch, self._buf = self._buf, []
            self.stats.events += len(batch)
            self._handed += len(batch)
            self._jobs.put(("batch", batch, None))

    async def _call(self, fn: Callable[[], T], *, after_error: bool = False) -> T:
        """Run ``fn`` on the writer thread after everything queued before it.

        Once a write has failed, calls raise that error, except those made ``after_error`` (closing
        the run: a one-row update often still fits on a full disk).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.put(("call", fn, (loop, fut, after_error)))
        return await fut

    # --- writer-thread side ------------------------------------------------------------------

    def _thread_main(self) -> None:
        jobs = self._jobs
        while True:
            job = jobs.get()
            if job is None:
                return
            kind, payload, reply = job
            if kind == "batch":
                self._write_batch(payload)
                self._written += len(payload)
                if self._room is not None and self._loop is not None:
                    self._loop.call_soon_threadsafe(self._room.set)
                continue
            loop, fut, after_error = reply
            try:
                if self._db is None and self.error is None:
                    self._db = open_database(self.path)
                if self.error is not None and not (after_error and self._db is not None):
                    raise self.error
                result = payload()
            except StorageError as e:
                loop.call_soon_threadsafe(_set_exception, fut, e)
            except sqlite3.Error as e:
                err = self._storage_error(e)
                loop.call_soon_threadsafe(_set_exception, fut, err)
            except Exception as e:  # a bug: the caller gets it; the thread lives on
                loop.call_soon_threadsafe(_set_exception, fut, e)
            else:
                loop.call_soon_threadsafe(_set_result, fut, result)

    def _storage_error(self, e: sqlite3.Error) -> StorageError:
        if _disk_full(e):
            return StorageError(
                f"disk full writing {self.path}: the run stops; what was written is kept"
            )
        return StorageError(f"cannot write database {self.path}: {e}")

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _write_batch(self, events: list[Event]) -> None:
        if self._db is None or self.error is not None:
            return
        t = time.perf_counter()
        conn = self._db.conn
        try:
            b = self._rows(events)
            with conn:
                if b.tokens:
                    conn.executemany(_INSERT_TOKEN, b.tokens)
                if b.requests:
                    conn.executemany(
                        _UPSERT_REQUEST,
                        [tuple(r.get(c) for c in REQUEST_COLUMNS) for r in b.requests.values()],
                    )
                if b.samples:
                    conn.executemany(_INSERT_SAMPLE, b.samples)
                if b.gpus:
                    conn.executemany(_INSERT_GPU, b.gpus)
                if b.servers:
                    conn.executemany(_INSERT_SERVER, b.servers)
                if b.downs:
                    conn.executemany(_INSERT_DOWN, b.downs)
        except sqlite3.Error as e:
            self.error = self._storage_error(e)
            return
        except Exception as e:  # e.g. an int over 64 bits; the thread must live on, or every
            # later call would wait for it forever
            self.error = StorageError(
                f"cannot store events in {self.path}: {type(e).__name__}: {e}"
            )
            return
        for key, row in b.requests.items():
            if row["status"] != "running":
                self._open_requests.pop(key, None)
        self.stats.rows += (
            len(b.tokens) + len(b.requests) + len(b.samples) + len(b.gpus) + len(b.servers)
        )
        self.stats.flushes += 1
        self.stats.flush_s += time.perf_counter() - t

    def _request_row(self, run_id: int, request_id: int, b: _Batch) -> dict[str, Any]:
        key = (run_id, request_id)
        row = self._open_requests.get(key)
        if row is None:
            row = {"run_id": run_id, "id": request_id, "status": "running", "chunks": 0}
            self._open_requests[key] = row
        b.requests[key] = row
        return row

    def _rows(self, events: list[Event]) -> _Batch:
        b = _Batch()
        token = TokenReceived
        # The hot path: nearly every event is a token; one comprehension each way is fastest.
        if self.store_tokens:
            b.tokens = [
                (e.run_id, e.request_id, e.index, e.t_ns, e.n_tokens, e.text_len)
                for e in events
                if type(e) is token
            ]
        for ev in [e for e in events if type(e) is not token]:
            match ev:
                case RequestStarted():
                    row = self._request_row(ev.run_id, ev.request_id, b)
                    row.update(
                        step=ev.step,
                        prompt_label=ev.prompt_label,
                        prompt_chars=ev.prompt_chars,
                        concurrency=ev.concurrency,
                        temperature=ev.temperature,
                        max_tokens=ev.max_tokens,
                        warmup=int(ev.warmup),
                        t_start_ns=ev.t_ns,
                    )
                case RequestFinished():
                    m = request_metrics(ev)
                    row = self._request_row(ev.run_id, ev.request_id, b)
                    row.update(
                        status="ok",
                        t_start_ns=ev.t_start_ns,
                        t_first_ns=ev.t_first_ns,
                        t_end_ns=ev.t_ns,
                        chunks=ev.chunks,
                        output_tokens=m.output_tokens,
                        prompt_tokens=ev.server.prompt_tokens,
                        ttft_ms=m.ttft_ms,
                        e2e_ms=m.e2e_ms,
                        tpot_ms=m.tpot_ms,
                        decode_tps=m.decode_tps,
                        overall_tps=m.overall_tps,
                        server_ttft_ms=m.server_ttft_ms,
                        server_tps=m.server_tps,
                        load_ms=m.load_ms,
                        done_reason=ev.server.done_reason,
                    )
                case RequestFailed():
                    row = self._request_row(ev.run_id, ev.request_id, b)
                    start = ev.t_start_ns if ev.t_start_ns is not None else row.get("t_start_ns")
                    row.update(
                        status="cancelled" if ev.error_kind == "cancelled" else "error",
                        error_kind=ev.error_kind,
                        error=ev.message,
                        http_status=ev.http_status,
                        t_end_ns=ev.t_ns,
                        t_first_ns=ev.t_first_ns,
                        chunks=ev.chunks,
                        output_tokens=ev.tokens_counted,
                        ttft_ms=None if start is None else ttft_ms(start, ev.t_first_ns),
                        e2e_ms=None if start is None else e2e_ms(start, ev.t_ns),
                    )
                    if start is not None:
                        row["t_start_ns"] = start
                case ResourcesSampled():
                    b.samples.append(
                        (
                            ev.run_id, ev.t_ns, ev.cpu_pct, ev.mem_used_bytes, ev.mem_total_bytes,
                            ev.server_rss_bytes, ev.server_cpu_pct, json.dumps(ev.per_core),
                        )
                    )  # fmt: skip
                case GpuSampled():
                    b.gpus.append(
                        (
                            ev.run_id, ev.t_ns, ev.gpu, ev.name, ev.util_pct, ev.mem_used_bytes,
                            ev.mem_total_bytes, ev.power_w, ev.temp_c,
                        )
                    )  # fmt: skip
                case ServerSampled():
                    b.servers.extend(
                        (ev.run_id, ev.t_ns, ev.source, k, v) for k, v in ev.values.items()
                    )
                case SourceDown():
                    b.downs.append((ev.run_id, ev.t_ns, ev.source, ev.reason))
                case TokenReceived():
                    pass
                case _:
                    assert_never(ev)
        return b


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
