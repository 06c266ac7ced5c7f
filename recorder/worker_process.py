"""One worker process of ``--workers N``: its own event loop, its own HTTP connections, its share
of every step (recorder/runner.py ``Share``); its events go back to the recording in batches.

The recording (recorder/workers.py) owns the database, the samplers and the tally; a worker only
measures. It obeys messages on its socket: ``warmup``, ``step``, ``stop`` (cancel what is in flight:
those requests end ``cancelled``, as in one process) and ``close``; when the socket closes (the
recording was killed), it cancels everything and exits, so no worker outlives its run.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from llmtop.core.errors import LlmtopError
from llmtop.core.events import Event
from llmtop.recorder.fd_room import make_room_for_sockets
from llmtop.recorder.loop_probe import LoopProbe, new_event_loop
from llmtop.recorder.plan import RecordPlan
from llmtop.recorder.runner import Runner, Share, StepOutcome
from llmtop.recorder.short_slice import request_short_slice

FLUSH_S = 0.02
"""Events go to the recording every 20 ms (the live view draws at 4-10 Hz)."""
BATCH = 512
"""...or as soon as this many wait: one message stays small to pickle (~0.3 ms)."""


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What a worker needs to start: the plan and what the recording resolved of it."""

    plan: RecordPlan
    backend: str
    """The backend the recording ended up with (``auto`` resolved): ``ollama``, ``openai``,
    ``engine`` (an engine the recording started, reached at ``url``)."""
    url: str
    model: str
    run_id: int
    share: Share


def worker_entry(fd: int) -> None:
    """The worker's main: read its setup from the socket ``fd``, then serve the recording."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the recording decides when the run stops
    conn = Connection(fd)
    setup: WorkerSetup = conn.recv()
    make_room_for_sockets(0)  # its streams' share is not known yet: the table's usual minimum
    gc.freeze()  # its imports live as long as it does: out of the collector's way (recording.py)
    request_short_slice()  # its loop stamps tokens (short_slice.py)
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(Worker(conn, setup).serve())


class Worker:
    """The worker's state on its event loop."""

    def __init__(self, conn: Connection, setup: WorkerSetup) -> None:
        self.conn = conn
        self.setup = setup
        self.outbox: list[Event] = []
        self.task: asyncio.Task[Any] | None = None
        self.closed = asyncio.Event()
        self.probe = LoopProbe(self.put, setup.run_id, worker=setup.share.index)

    def put(self, ev: Event) -> None:
        box = self.outbox
        box.append(ev)
        if len(box) >= BATCH:
            self.flush()

    def flush(self) -> None:
        if self.outbox:
            batch, self.outbox = self.outbox, []
            self.send(("events", batch))

    def send(self, message: object) -> None:
        with contextlib.suppress(OSError):  # the recording is gone: the EOF ends us
            self.conn.send(message)

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self.flush()

    async def serve(self) -> None:
        from llmtop.collectors.backends import make_backend

        s = self.setup
        plan = s.plan
        try:
            backend = make_backend(
                s.backend, s.url, api_key_env=plan.api_key_env, timeouts=plan.timeouts
            )
            await backend.__aenter__()
        except LlmtopError as e:
            self.send(("error", str(e)))
            return
        loop = asyncio.get_running_loop()
        runner = Runner(backend, run_id=s.run_id, model=s.model, emit=self.put, share=s.share)
        loop.add_reader(self.conn.fileno(), self._on_message, runner)
        flusher = asyncio.create_task(self._flusher())
        self.probe.start()
        self.send(("ready", None))
        try:
            await self.closed.wait()
        finally:
            loop.remove_reader(self.conn.fileno())
            if self.task is not None:
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self.task
            self.probe.stop()
            flusher.cancel()
            self.flush()
            self.send(("probe", (list(self.probe.lags_us), self.probe.summary().as_dict())))
            await backend.__aexit__(None, None, None)

    def _on_message(self, runner: Runner) -> None:
        try:
            message = self.conn.recv()
        except (EOFError, OSError):  # the recording died: stop at once
            self.closed.set()
            return
        kind, args = message
        if kind == "close":
            self.closed.set()
        elif kind == "stop":
            if self.task is not None:
                self.task.cancel()
        elif kind in ("warmup", "step"):
            runner.next_id = args["next_id"]
            if kind == "warmup":
                coro: Any = runner.warmup(args["scenario"])
            else:
                step = self.setup.plan.scenario.steps[args["index"]]
                coro = runner.run_step(
                    step, args["index"], started_ns=args["started_ns"], arrival_seed=args["seed"]
                )
            self.task = asyncio.create_task(coro)
            self.task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.task = None
        self.flush()  # every event of the step goes before its "done"
        if task.cancelled():
            self.send(("done", None))
        elif (e := task.exception()) is not None:
            self.send(("failed", repr(e)))
        else:
            result = task.result()
            last = result.last_index if isinstance(result, StepOutcome) else -1
            self.send(("done", last))
