"""The measuring side of the dashboard, off the UI's event loop and out of its process.

While a run goes, a ``RecordingProcess`` runs the code of ``llmtop record``
(scenarios/recording.py's ``RecordingThread``) in a child process, which stores the run and
streams its events back in small batches. A thread in the same process was tried first and
measured: the UI's garbage collector stops every thread of its process for 40-65 ms at a time
(a full collection over Textual's many objects), which landed in TTFT and ITL of the requests
in flight. In a process of its own the recording reads the same as ``llmtop record``.

Between runs a ``Watcher`` samples the machine and the server with no run, so a server that
other clients drive can be watched. Either way the events reach the UI only through
``Aggregator.add`` (a deque append); the UI reads snapshots on its own tick. The two never
sample at once: the watcher stops while a run has its own samplers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from llmtop.collectors.aggregate import Aggregator
from llmtop.collectors.base import Emit
from llmtop.collectors.events import Event
from llmtop.collectors.gpu import GpuSampler
from llmtop.collectors.server_metrics import ServerMetricsSampler
from llmtop.collectors.system import SystemSampler, local_port
from llmtop.scenarios.recording import RecordingThread, RecordPlan, RecordResult

WATCH_HZ = 1.0
"""Samples per second between runs: enough to watch, cheap enough to leave open all day."""
DEFAULT_OLLAMA = "http://127.0.0.1:11434"


def watch_target(backend: str, url: str | None) -> tuple[str, str]:
    """``(url, kind)`` to watch between runs: the given server, else Ollama's address.

    ``kind`` is the server sampler's: ``ollama`` reads ``/api/ps``, ``openai`` ``/metrics``,
    ``engine`` both (an endpoint the server lacks is dropped after its first 404).
    """
    if url is None:
        host = os.environ.get("OLLAMA_HOST", DEFAULT_OLLAMA)
        url = host if "://" in host else f"http://{host}"
    kind = backend if backend in ("ollama", "openai") else "engine"
    return url, kind


class Watcher:
    """System, GPU and server samplers on a thread and loop of their own, with no run id."""

    def __init__(self, url: str, kind: str, emit: Emit, *, hz: float = WATCH_HZ) -> None:
        self.url, self.kind, self.hz = url, kind, hz
        self._emit = emit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="llmtop-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the samplers to stop (thread-safe); they end within one sample."""
        with self._lock:
            self._stopping = True
            if self._loop is not None and self._main_task is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._main_task.cancel)

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._main())

    async def _main(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._loop = asyncio.get_running_loop()
            self._main_task = asyncio.current_task()
        samplers = [
            SystemSampler(None, hz=self.hz, server_port=local_port(self.url)),
            GpuSampler(None, hz=self.hz),
            ServerMetricsSampler(None, self.url, self.kind, hz=self.hz),
        ]
        async with asyncio.TaskGroup() as tg:
            for s in samplers:
                tg.create_task(_quietly(s.run(self._emit)))


async def _quietly(coro: object) -> None:
    """A sampler that breaks (a bug) must not take the others down with it."""
    with contextlib.suppress(Exception):
        await coro  # type: ignore[misc]


FLUSH_S = 0.05
"""How often the recording process sends what arrived: 20 batches a second."""
BATCH = 256
"""Events per message: pickling holds the child's GIL, so each send stays well under 1 ms."""


@dataclass(frozen=True, slots=True)
class Progress:
    """Where the run is, as the recording process last said."""

    run_id: int | None = None
    step_index: int = -1
    """0-based index of the step running; -1 during warm-up or before the first."""
    done: int = 0
    warmup: int = 0
    model: str = ""
    backend: str = ""
    base_url: str = ""


def child_entry(fd: int) -> None:
    """The recording process's main: read the plan from the socket ``fd``, then record it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the dashboard decides when the run stops
    conn = Connection(fd)
    plan, db_path = conn.recv()
    _child_main(plan, db_path, conn)


def _child_main(plan: RecordPlan, db_path: str | None, conn: Connection) -> None:
    """Record ``plan``, stream events and progress over ``conn``, obey "stop"."""
    buf: deque[Event] = deque()
    rec = RecordingThread(plan, db_path, on_event=buf.append)
    rec.start()

    def flush() -> None:
        while buf:
            n = min(len(buf), BATCH)
            conn.send(("events", [buf.popleft() for _ in range(n)]))
        r, t = rec.recording, rec.tally
        conn.send(("progress", Progress(rec.run_id, t.current, t.done, t.warmup, r.model,
                                        r.backend_name, r.base_url)))  # fmt: skip

    try:
        while rec.is_alive():
            if conn.poll(FLUSH_S):
                try:
                    message = conn.recv()
                except EOFError:  # the dashboard is gone: end the run properly
                    message = "stop"
                if message == "stop":
                    rec.stop()
            flush()
        rec.join()
        flush()
        conn.send(("done", (rec.result, None if rec.error is None else repr(rec.error))))
    except (BrokenPipeError, EOFError, OSError):
        rec.stop()
        rec.join(30)


class RecordingProcess:
    """A recording in a child process; the same surface as ``RecordingThread`` where used.

    The child is a plain ``python -c`` process (not multiprocessing's spawn, which re-imports the
    caller's main module and needs a real stderr) talking over a socket pair with
    ``multiprocessing.connection.Connection`` (pickled messages). Its output goes nowhere: the
    terminal belongs to the dashboard. ``on_event`` is called on a reader thread of this
    process with every event of the run.
    """

    def __init__(
        self, plan: RecordPlan, db_path: Path | None, on_event: Callable[[Event], None]
    ) -> None:
        self._plan = plan
        self._db_path = None if db_path is None else str(db_path)
        self._on_event = on_event
        self._conn: Connection | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.progress = Progress(
            backend=plan.backend, base_url=plan.url or "", model=plan.model or ""
        )
        self.result: RecordResult | None = None
        self.error: str | None = None
        """Why the recording ended without a result (a bug, or the process died)."""
        self._reader = threading.Thread(
            target=self._read, name="llmtop-recording-reader", daemon=True
        )

    @property
    def run_id(self) -> int | None:
        return self.progress.run_id

    def start(self) -> None:
        mine, theirs = socket.socketpair()
        code = f"from llmtop.app.live import child_entry; child_entry({theirs.fileno()})"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the terminal is the dashboard's to handle
        )
        theirs.close()
        self._conn = Connection(mine.detach())
        self._conn.send((self._plan, self._db_path))
        self._reader.start()

    def stop(self) -> None:
        """Ask the run to stop: nothing new is sent, what is in flight ends cancelled."""
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send("stop")

    def is_alive(self) -> bool:
        return self._reader.is_alive()

    def join(self, timeout: float | None = None) -> bool:
        if self._reader.ident is not None:
            self._reader.join(timeout)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
        return not self._reader.is_alive()

    def _read(self) -> None:
        on_event = self._on_event
        conn, proc = self._conn, self._proc
        assert conn is not None and proc is not None
        try:
            while True:
                kind, payload = conn.recv()
                if kind == "events":
                    for ev in payload:
                        on_event(ev)
                elif kind == "progress":
                    self.progress = payload
                elif kind == "done":
                    self.result, self.error = payload
                    return
        except (EOFError, OSError):
            self._proc.join(5)
            if self.result is None:
                self.error = (
                    f"the recording process ended unexpectedly (exit code {self._proc.exitcode})"
                )
        finally:
            self._conn.close()


class LiveSession:
    """The aggregator, the current run (if any) and the watcher between runs."""

    def __init__(self, db_path: Path | None, *, watch: bool = True) -> None:
        self.db_path = db_path
        self.aggregator = Aggregator()
        self.recording: RecordingProcess | None = None
        self.watcher: Watcher | None = None
        self.watch_enabled = watch

    @property
    def running(self) -> bool:
        return self.recording is not None and self.recording.is_alive()

    def watch(self, backend: str, url: str | None) -> None:
        """(Re)start watching the server at ``url`` (unless a run is going or watching is off)."""
        self.stop_watching()
        if not self.watch_enabled or self.running:
            return
        target, kind = watch_target(backend, url)
        self.watcher = Watcher(target, kind, self.aggregator.add)
        self.watcher.start()

    def stop_watching(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None

    def start_run(self, plan: RecordPlan) -> RecordingProcess:
        """Start recording ``plan``; its events feed the aggregator from the reader thread."""
        if self.running:
            raise RuntimeError("a run is already going")
        self.stop_watching()
        self.aggregator.clear_run()
        self.aggregator.set_slo(plan.scenario.slo)
        self.recording = RecordingProcess(plan, self.db_path, self.aggregator.add)
        self.recording.start()
        return self.recording

    def stop_run(self) -> None:
        if self.recording is not None:
            self.recording.stop()

    def close(self, timeout: float = 10.0) -> None:
        """Stop everything; a run in progress is closed as cancelled, what it received kept."""
        self.stop_watching()
        if self.recording is not None:
            self.recording.stop()
            self.recording.join(timeout)
