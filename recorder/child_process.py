"""A recording in a child process, for the dashboard: the code of ``llmtop record`` out of the
UI's process, its events streamed back in small batches.

A thread in the dashboard's process was tried first and measured: the UI's garbage collector
stops every thread of its process for 40-65 ms at a time (a full collection over Textual's many
objects), which landed in TTFT and ITL of the requests in flight. In a process of its own the
recording reads the same as ``llmtop record``.
"""

from __future__ import annotations

import contextlib
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

from llmtop.core.events import Event
from llmtop.recorder.recording import RecordingThread, RecordPlan, RecordResult

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
    status: str = ""
    """What the run waits for before its first request (starting the engine...), or ""."""


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
        progress = Progress(
            run_id=rec.run_id, step_index=t.current, done=t.done, warmup=t.warmup,
            model=r.model, backend=r.backend_name, base_url=r.base_url, status=r.status,
        )  # fmt: skip
        conn.send(("progress", progress))

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


def _exit_status(proc: subprocess.Popen[bytes], wait_s: float = 5.0) -> str:
    """How the child ended, in words that name the exit code (or the signal that killed it)."""
    try:
        code = proc.wait(wait_s)
    except subprocess.TimeoutExpired:
        return "its connection closed but it is still running"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}, exit code {code}"
    return f"exit code {code}"


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

    @property
    def pid(self) -> int | None:
        """The recording process's pid once started."""
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        mine, theirs = socket.socketpair()
        code = (
            f"from llmtop.recorder.child_process import child_entry; child_entry({theirs.fileno()})"
        )
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
            if self.result is None:
                self.error = f"the recording process ended unexpectedly ({_exit_status(proc)})"
        finally:
            conn.close()
