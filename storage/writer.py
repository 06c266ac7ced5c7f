"""The only code that writes: events in on the event loop, batches out on one thread.

Producers call ``writer.put_nowait(event)`` (or ``await writer.put(event)``, which also waits
when the disk falls behind). Events go into a buffer that is handed to the writer thread every
half ``flush_interval_s`` (the other half is the write's: an event is on disk within one flush
interval, which a recorder killed with SIGKILL relies on; tests/faults checks it) or every
``flush_rows`` events, whichever comes first, and on close. The thread owns its connection and
writes each batch in one transaction with ``executemany``, giving up the core every
``SLICE_ROWS`` token rows (``os.sched_yield``): a flush takes ~2 us an event, milliseconds for a
busy batch, and a timing thread on the same core that cannot preempt it (the proxy's relay or
record's loop at real-time priority, or on a busy machine) would otherwise wait for the whole
flush before it could stamp the tokens arriving meanwhile.

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
from typing import Any, TypeVar

import psutil
from sqlite_utils import Database

from llmtop import __version__
from llmtop.core.errors import StorageError
from llmtop.core.events import (
    Event,
)
from llmtop.storage.db import open_database, resolve_db_path, write_transaction
from llmtop.storage.rows import RowBuilder, write_batch

T = TypeVar("T")

FLUSH_INTERVAL_S = 0.25
FLUSH_ROWS = 5_000
SLICE_ROWS = 256
"""Token rows written between two yields of the writer thread (~0.3 ms here)."""
MAX_PENDING_ROWS = 200_000

RUN_STATUSES = ("running", "finished", "cancelled", "interrupted", "failed")
RUN_KINDS = ("recorded", "observed")


@dataclass(frozen=True, slots=True)
class RunInfo:
    """What a run is, written once when it starts."""

    name: str = ""
    kind: str = "recorded"
    """``recorded`` (llmtop sent the requests) or ``observed`` (a proxy timed real clients')."""
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
        self._builder = RowBuilder(store_tokens)
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

    @property
    def store_tokens(self) -> bool:
        """Whether one row per chunk is kept."""
        return self._builder.store_tokens

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
            "kind": info.kind,
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
            with write_transaction(self._db):
                pk = self._db.table("runs").insert(row).last_pk
                assert pk is not None
                return int(pk)

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
            with write_transaction(self._db):
                self._db.execute(
                    "update runs set status = ?, ended_at = ?, error = ? where id = ?",
                    [status, ended, error, run_id],
                )
                # A run without one model (a proxy's: its clients chose) is named by the models
                # its requests asked for, most asked first, so `runs` and `--model` show it.
                self._db.execute(
                    "update runs set model = (select group_concat(model, ', ') from ("
                    "select model from requests where run_id = ? and model is not null "
                    "and model != '' group by model order by count(*) desc, model)) "
                    "where id = ? and coalesce(model, '') = ''",
                    [run_id, run_id],
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

    async def set_client_check(self, run_id: int, check: dict[str, Any]) -> None:
        """Store the run's self-check (core/self_check.ClientCheck as a dict) with the run."""

        def update() -> None:
            assert self._db is not None
            with write_transaction(self._db):
                self._db.execute(
                    "update runs set client_json = ? where id = ?", [json.dumps(check), run_id]
                )

        await self._call(update)

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
            b = self._builder.build(events)
            with conn:
                write_batch(conn, b, SLICE_ROWS, os.sched_yield)
        except sqlite3.Error as e:
            self.error = self._storage_error(e)
            return
        except Exception as e:  # e.g. an int over 64 bits; the thread must live on, or every
            # later call would wait for it forever
            self.error = StorageError(
                f"cannot store events in {self.path}: {type(e).__name__}: {e}"
            )
            return
        self._builder.stored(b)
        self.stats.rows += (
            len(b.tokens) + len(b.requests) + len(b.samples) + len(b.gpus) + len(b.servers)
            + len(b.clients)
        )  # fmt: skip
        self.stats.flushes += 1
        self.stats.flush_s += time.perf_counter() - t


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
