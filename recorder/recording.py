"""One whole run: backend, database run row, samplers, the scenario's steps, the final status.

Two ways in, same code: ``await Recording(plan, db).run()`` on the caller's event loop
(``llmtop record``), and :class:`RecordingThread` for the dashboard, which runs it on an event
loop of its own in a thread, so drawing never delays measuring. Either way every event goes
to the database writer, the live tally, and the optional ``on_event`` callback (called on the
recording's thread, for every event: keep it cheap and thread-safe).

The run ends ``finished``; ``cancelled`` when stopped (Ctrl-C, ``stop()``), with everything
received kept and requests in flight marked cancelled; or ``failed``: the backend cannot be
reached or lacks the model, every request failed, or the disk filled. Expected failures do not
raise: they are in :class:`RecordResult` for the caller to report.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llmtop.collectors.base import Backend
from llmtop.collectors.gpu import GpuSampler, Nvml, inventory
from llmtop.collectors.server_metrics import ServerMetricsSampler
from llmtop.collectors.system import SystemSampler, host_info, local_port
from llmtop.core.errors import SourceError, StorageError, UsageError
from llmtop.core.events import Event
from llmtop.core.metrics import counter_increase
from llmtop.core.requests import StatusSink, no_status
from llmtop.recorder.fd_room import make_room_for_sockets
from llmtop.recorder.loop_probe import LoopProbe, new_event_loop
from llmtop.recorder.plan import (
    BackendFactory,
    FailureKind,
    RecordPlan,
    RecordResult,
    default_backend_factory,
)
from llmtop.recorder.runner import Runner
from llmtop.recorder.short_slice import request_short_slice
from llmtop.recorder.tally import LiveTally
from llmtop.recorder.workers import WorkerPool
from llmtop.storage.db import resolve_db_path
from llmtop.storage.writer import EventWriter, RunInfo

OnEvent = Callable[[Event], None]
SETUP_TIMEOUT_S = 10.0
SETTLE_S = 2.0
"""Longest wait, after a step, for the server's counters to count the tokens the step received
(llama.cpp adds to its counters when a request completes, a moment after its last byte)."""
SETTLE_EVERY_S = 0.05

__all__ = [
    "FailureKind", "OnEvent", "RecordPlan", "RecordResult", "Recording", "RecordingThread",
    "default_backend_factory", "record",
]  # fmt: skip


class _Stopped(Exception):
    """Raised inside the run when it must end early for a reason other than the user."""


class Recording:
    """One run of a plan on the current event loop; see the module docstring."""

    def __init__(
        self,
        plan: RecordPlan,
        db_path: str | Path | None = None,
        *,
        on_event: OnEvent | None = None,
        backend_factory: BackendFactory = default_backend_factory,
        nvml: Nvml | None = None,
        on_status: StatusSink = no_status,
    ) -> None:
        self.plan = plan
        self.status = ""
        """What the run waits for before its first request (starting the engine...); "" once
        requests go out. Read from any thread."""
        self._on_status = on_status
        self.db_path = resolve_db_path(db_path)
        self.tally = LiveTally.for_steps(plan.scenario.steps, plan.scenario.slo)
        self.run_id: int | None = None
        self.run_created = threading.Event()
        """Set once the run row exists (``run_id`` is known), or the run failed before it."""
        self.on_event_errors = 0
        """Exceptions raised by ``on_event`` (swallowed: a display must not stop a measurement)."""
        self._on_event = on_event
        self._backend_factory = backend_factory
        self._nvml = nvml
        self._writer: EventWriter | None = None
        self._body: asyncio.Task[None] | None = None
        self._stop_requested = False
        self._failure: tuple[FailureKind, str] | None = None
        self._steps_run: list[str] = []
        self._stopped_early: str | None = None
        self.backend_name = plan.backend
        self.base_url = plan.url or ""
        self.model = plan.model or ""
        self.probe: LoopProbe | None = None
        """llmtop's own loop lag and CPU while requests go out (recorder/loop_probe.py)."""
        self._pool: WorkerPool | None = None
        """The worker processes that send the requests with ``--workers`` > 1."""

    # --- control ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the run: no new requests, those in flight cancelled, the run marked cancelled.

        Call it on the recording's event loop (``RecordingThread.stop`` does that for you).
        """
        self._stop_requested = True
        if self._body is not None and not self._body.done():
            self._body.cancel()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def _status(self, text: str, *, notice: bool = False) -> None:
        self.status = text
        self._on_status(text, notice=notice)

    # --- events ----------------------------------------------------------------------------

    def _emit(self, ev: Event) -> None:
        self._writer.put_nowait(ev)  # type: ignore[union-attr]
        self.tally.add(ev)
        cb = self._on_event
        if cb is not None:
            try:
                cb(ev)
            except Exception:
                self.on_event_errors += 1

    async def _before_request(self) -> None:
        w = self._writer
        assert w is not None
        if w.error is not None:
            self._failure = ("storage", str(w.error))
            raise _Stopped
        if w.backlog > w.max_pending_rows:
            await w.wait_for_room()

    # --- the run ---------------------------------------------------------------------------

    def _result(self, status: str, **kw: Any) -> RecordResult:
        t = self.tally
        failure = self._failure
        return RecordResult(
            run_id=self.run_id,
            status=status,
            db_path=self.db_path,
            error=kw.get("error", failure[1] if failure else None),
            failure=kw.get("failure", failure[0] if failure else None),
            backend=self.backend_name,
            base_url=self.base_url,
            model=self.model,
            steps_run=tuple(self._steps_run),
            stopped_early=self._stopped_early,
            sent=t.sent,
            ok=t.ok,
            errors=t.errors,
            cancelled=t.cancelled,
        )

    def _info(self) -> RunInfo:
        params = self.plan.scenario.params()
        params["flags"] = {
            **self.plan.flags,
            "sample_hz": self.plan.hz,
            "store_tokens": self.plan.store_tokens,
            "timeouts": dataclasses.asdict(self.plan.timeouts),
        }
        host = host_info()
        if self.plan.sample_gpu:
            gpus, driver, why = inventory(self._nvml)
            host["gpus"] = [
                {"index": g.index, "name": g.name, "mem_total_bytes": g.mem_total_bytes}
                for g in gpus
            ]
            host["gpu_driver"] = driver
            host["gpu_absent_reason"] = why
        return RunInfo(
            name=self.plan.name,
            scenario=self.plan.scenario.name,
            backend=self.backend_name,
            base_url=self.base_url,
            model=self.model,
            params=params,
            host=host,
        )

    async def run(self) -> RecordResult:
        """Record the whole run; returns how it ended (never raises for expected failures)."""
        make_room_for_sockets(self.plan.scenario.workers)  # before the writer's thread starts
        writer = EventWriter(self.db_path, store_tokens=self.plan.store_tokens)
        self._writer = writer
        try:
            try:
                await writer.start()
            except StorageError as e:
                self.run_created.set()
                return self._result("failed", error=str(e), failure="storage")
            return await self._with_writer(writer)
        finally:
            self.run_created.set()
            with contextlib.suppress(StorageError):
                await writer.close()

    async def _fail_before_start(self, writer: EventWriter, e: Exception) -> RecordResult:
        """A failure before any request: keep a failed run, so the attempt is on record."""
        self.run_id, _ = await writer.create_run(self._info())
        self.run_created.set()
        await writer.finish_run(self.run_id, "failed", str(e))
        return self._result("failed", error=str(e), failure="source")

    async def _with_writer(self, writer: EventWriter) -> RecordResult:
        try:
            backend = self._backend_factory(self.plan, self._status)
        except UsageError as e:  # a bad URL, an API key variable that is not set
            return self._result("failed", error=str(e), failure="usage")
        try:
            await backend.__aenter__()
        except SourceError as e:
            return await self._fail_before_start(writer, e)
        try:
            self.backend_name = backend.name
            self.base_url = backend.base_url
            try:
                self.model = self.plan.model or await self._only_model(backend)
            except UsageError as e:
                return self._result("failed", error=str(e), failure="usage")
            except SourceError as e:
                return await self._fail_before_start(writer, e)
            self.run_id, _ = await writer.create_run(self._info())
            self.run_created.set()
            try:
                status = await self._run_body(backend)
                await self._store_client_check(writer)
            except Exception as e:  # a bug: close the run as failed so it does not stay running
                with contextlib.suppress(StorageError):
                    await writer.finish_run(self.run_id, "failed", f"internal error: {e!r}")
                raise
            try:
                await writer.finish_run(self.run_id, status, self._failure[1] if self._failure else None)  # fmt: skip
            except StorageError as e:
                self._failure = ("storage", str(e))
                status = "failed"
            return self._result(status)
        finally:
            await backend.__aexit__(None, None, None)

    async def _store_client_check(self, writer: EventWriter) -> None:
        """Keep the self-check with the run (its schedule lag is read from the requests)."""
        if self.probe is not None and self.run_id is not None and writer.error is None:
            check = self.probe.summary()
            if self._pool is not None:
                check = self._pool.client_check(check)
            with contextlib.suppress(StorageError):
                await writer.set_client_check(self.run_id, check.as_dict())

    async def _only_model(self, backend: Backend) -> str:
        models = await backend.list_models()
        if len(models) == 1:
            return models[0]
        if not models:
            raise SourceError(f"the server at {backend.base_url} has no models; pull or load one")
        shown = ", ".join(models[:8]) + (", ..." if len(models) > 8 else "")
        raise UsageError(f"choose a model with --model; the server at {backend.base_url} has {shown}")  # fmt: skip

    async def _run_body(self, backend: Backend) -> str:
        """Run the cancellable part; return the run's status."""
        self._body = asyncio.create_task(self._steps(backend), name="llmtop-run")
        if self._stop_requested:
            self._body.cancel()
        try:
            await self._body
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling() and not self._stop_requested:
                # Cancelled from outside (not through stop()): close the run, then go on unwinding.
                self._stop_requested = True
                await self._writer.finish_run(self.run_id, "cancelled")  # type: ignore[union-attr, arg-type]
                raise
            return "failed" if self._failure else "cancelled"
        except _Stopped:
            return "failed"
        except SourceError as e:
            self._failure = ("source", str(e))
            return "failed"
        w = self._writer
        assert w is not None
        if w.error is not None:
            self._failure = ("storage", str(w.error))
            return "failed"
        t = self.tally
        if t.sent == 0:
            self._failure = ("requests", "no request was sent (a step too short?)")
            return "failed"
        if t.ok == 0 and t.errors > 0:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(t.error_kinds.items()))
            self._failure = (
                "requests",
                f"every request failed ({kinds}), e.g.: {t.first_error}",
            )
            return "failed"
        return "finished"

    async def _steps(self, backend: Backend) -> None:
        scenario = self.plan.scenario
        assert self.run_id is not None
        self._status(f"checking that {backend.base_url} has {self.model}")
        await backend.check(self.model)
        self._status("starting the samplers")
        samplers = self._samplers(backend)
        tasks = [asyncio.create_task(s.run(self._emit), name=f"sampler-{s.source}") for s in samplers]  # fmt: skip
        try:
            # Their setup (finding the server process, NVML, an HTTP client) holds the
            # interpreter for tens of ms: let it finish before the first request is timed.
            waits = [asyncio.create_task(s.ready.wait()) for s in samplers]
            await asyncio.wait(waits, timeout=SETUP_TIMEOUT_S)
            for w in waits:
                w.cancel()
            runner = await self._runner(backend)
            server = next((s for s in samplers if isinstance(s, ServerMetricsSampler)), None)
            self.probe = LoopProbe(self._emit, self.run_id)
            self.probe.start()
            try:
                # The server's /metrics read at each step's boundaries (the warm-up's end too):
                # the end of one is the start of the next, so counter increases over a step
                # are its own tokens.
                before = await server.scrape() if server is not None else None
                # What exists now (imports, setup) lives as long as the run: out of the
                # collector's way, a full collection stops the loop for 12-17 ms instead of <1.
                gc.freeze()
                request_short_slice()  # this thread stamps: first on its core when it wakes
                self.status = ""  # requests go out now: the progress is theirs
                await runner.warmup(scenario)
                if server is not None:
                    before = await _settled(server, before, self.tally.warmup_tokens)
                for i, step in enumerate(scenario.steps):
                    self.tally.begin_step(i)
                    self._steps_run.append(step.name)
                    await runner.run_step(step, i)
                    if server is not None:
                        before = await _settled(server, before, self.tally.steps[i].output_tokens)
                    if self._slo_broke(i):
                        break
            except* _Stopped:
                raise _Stopped from None
        finally:
            gc.unfreeze()  # collectable again: a process may record more than one run
            if self._pool is not None:
                await self._pool.close()
            if self.probe is not None:
                self.probe.stop()
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t

    async def _runner(self, backend: Backend) -> Runner | WorkerPool:
        """This loop's runner, or with ``--workers`` > 1 the started worker processes."""
        assert self.run_id is not None
        n = self.plan.workers
        if n <= 1:
            return Runner(
                backend, run_id=self.run_id, model=self.model, emit=self._emit,
                before_request=self._before_request,
            )  # fmt: skip
        self._status(f"starting {n} worker processes")
        self._pool = WorkerPool(
            self.plan, backend=backend.name, url=backend.base_url, model=self.model,
            run_id=self.run_id, emit=self._emit, count=n, before_step=self._before_request,
        )  # fmt: skip
        await self._pool.start()
        return self._pool

    def _slo_broke(self, i: int) -> bool:
        scenario = self.plan.scenario
        threshold = scenario.stop_below_goodput
        if threshold is None or i == len(scenario.steps) - 1:
            return False
        step = self.tally.steps[i]
        good = step.goodput
        if good is None or good >= threshold:
            return False
        self._stopped_early = (
            f"the SLOs broke at step {step.name!r}: goodput {good:.0%} < {threshold:.0%}; "
            f"{len(scenario.steps) - i - 1} later step(s) skipped"
        )
        return True

    def _samplers(self, backend: Backend) -> list[Any]:
        hz = self.plan.hz
        pid = self.plan.server_pid or getattr(backend, "server_pid", None)
        port = None if pid is not None else local_port(backend.base_url)
        out: list[Any] = [
            SystemSampler(self.run_id, hz=hz, server_pid=pid, server_port=port),
        ]
        if self.plan.sample_gpu:
            out.append(GpuSampler(self.run_id, hz=hz, nvml=self._nvml))
        if self.plan.sample_server:
            out.append(ServerMetricsSampler(self.run_id, backend.base_url, backend.name))
        return out


async def _settled(
    server: ServerMetricsSampler, before: dict[str, float] | None, tokens: int
) -> dict[str, float] | None:
    """Scrape the server after a step until its generation counter has grown by the ``tokens``
    the step received (at most ``SETTLE_S``); the canonical values of the last scrape."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SETTLE_S
    while True:
        now = await server.scrape()
        if now is None or before is None:
            return now
        grown = counter_increase(
            before.get("generation_tokens_total"), now.get("generation_tokens_total")
        )
        if grown is None or grown >= tokens or loop.time() >= deadline:
            return now
        await asyncio.sleep(SETTLE_EVERY_S)


async def record(
    plan: RecordPlan, db_path: str | Path | None = None, *, on_event: OnEvent | None = None
) -> RecordResult:
    """Record ``plan`` on the running event loop; see :class:`Recording`."""
    return await Recording(plan, db_path, on_event=on_event).run()


class RecordingThread:
    """A recording on its own thread and event loop, for the dashboard.

    ``start()`` it, read ``tally`` and ``run_id`` from any thread while it runs, ``stop()`` it
    from any thread, ``join()``, then read ``result`` (or ``error``, for a bug). ``on_event`` is
    called on the recording thread with every event; ``on_done`` with the result at the end.
    """

    def __init__(
        self,
        plan: RecordPlan,
        db_path: str | Path | None = None,
        on_event: OnEvent | None = None,
        *,
        on_done: Callable[[RecordResult], None] | None = None,
        backend_factory: BackendFactory = default_backend_factory,
        nvml: Nvml | None = None,
        on_status: StatusSink = no_status,
    ) -> None:
        self.recording = Recording(
            plan,
            db_path,
            on_event=on_event,
            backend_factory=backend_factory,
            nvml=nvml,
            on_status=on_status,
        )
        self.result: RecordResult | None = None
        self.error: BaseException | None = None
        """An unexpected exception (a bug) that ended the thread; expected failures are in
        ``result``."""
        self._on_done = on_done
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._main, name="llmtop-recording", daemon=True)

    @property
    def run_id(self) -> int | None:
        return self.recording.run_id

    @property
    def tally(self) -> LiveTally:
        return self.recording.tally

    @property
    def run_created(self) -> threading.Event:
        return self.recording.run_created

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the run to stop (thread-safe, idempotent); ``join()`` to wait for the end."""
        with self._lock:
            loop = self._loop
            if loop is None or loop.is_closed():
                self.recording._stop_requested = True
                return
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(self.recording.stop)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the run to end; ``True`` when it has."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _main(self) -> None:
        loop = new_event_loop()
        with self._lock:
            self._loop = loop
        try:
            self.result = loop.run_until_complete(self.recording.run())
        except BaseException as e:
            self.error = e
        finally:
            with self._lock:
                loop.close()
            self.recording.run_created.set()
        if self._on_done is not None and self.result is not None:
            self._on_done(self.result)
