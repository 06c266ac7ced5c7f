"""``--workers N``: a run's streams spread over N processes, each with its own event loop, merged
into one run in one database on one clock.

Why processes: one event loop reads every token of every stream, and at 256 streams one loop was
measured 5 ms late on average (issue 17), which is TTFT error; threads would share one interpreter
lock and be no faster. Each worker (recorder/worker_process.py) sends its ``Share`` of every step
and stamps its own events with ``perf_counter_ns`` (CLOCK_MONOTONIC, one clock for every process
on a Linux machine), so their times compare as if one process took them; open-loop requests go
out at the same absolute times from whichever worker owns them. The recording keeps the rest:
the database writer, the samplers, the tally, the live view; every worker's events reach them
through ``emit`` as if the recording had sent the requests itself. Stopping (Ctrl-C, the
dashboard's stop) tells every worker to cancel what is in flight and waits for their last
events; a worker whose recording dies sees its socket close and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

from llmtop.core.errors import SourceError
from llmtop.core.requests import Emit
from llmtop.core.self_check import ClientCheck, lag_summary
from llmtop.recorder.plan import RecordPlan
from llmtop.recorder.runner import Share, StepOutcome
from llmtop.recorder.worker_process import WorkerSetup
from llmtop.scenarios.model import Scenario, Step

STREAMS_PER_WORKER = 128
"""``--workers auto`` gives each process at most this many streams. Issue 17 measured one loop's
read lag growing 4x from 64 to 256 streams; bench/fidelity.py here (2 cores) kept one loop within
the TTFT targets at 256 staggered streams, so 128 leaves room; not yet measured on more cores."""
START_AHEAD_S = 0.05
"""A step starts this long after the recording says so, so every worker has heard it in time."""
STOP_WAIT_S = 30.0


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def auto_workers(scenario: Scenario, cores: int | None = None) -> int:
    """``--workers auto``: enough processes that none has over ``STREAMS_PER_WORKER`` streams of
    the busiest step, and no more than the cores."""
    cores = available_cores() if cores is None else cores
    streams = max((s.concurrency or 1 for s in scenario.steps), default=1)
    return max(1, min(cores, math.ceil(streams / STREAMS_PER_WORKER)))


class _Peer:
    """One worker process as the recording sees it."""

    def __init__(self, index: int, proc: subprocess.Popen[bytes], conn: Connection, log: Any):
        self.index = index
        self.proc = proc
        self.conn = conn
        self.log = log
        self.reply: asyncio.Future[Any] | None = None
        self.probe: tuple[list[int], dict[str, Any]] | None = None
        self.gone = False

    def expect(self) -> asyncio.Future[Any]:
        self.reply = asyncio.get_running_loop().create_future()
        return self.reply

    def answer(self, value: Any = None, error: BaseException | None = None) -> None:
        fut, self.reply = self.reply, None
        if fut is not None and not fut.done():
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(value)

    def ended(self) -> str:
        """How the process ended, for a message."""
        try:
            code = self.proc.wait(5)
        except subprocess.TimeoutExpired:
            return "its socket closed but it still runs"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"killed by {signal.Signals(-code).name}"
        self.log.seek(0)
        last = [line for line in self.log.read().decode(errors="replace").splitlines() if line]
        return f"exit code {code}" + (f": {last[-1]}" if last else "")


class WorkerPool:
    """N worker processes with the surface of a ``Runner`` (``warmup``, ``run_step``).

    Args:
        plan: the run's plan (workers take the scenario, timeouts and key variable from it).
        backend: the backend the recording resolved (``auto`` decided), and its ``url``.
        model: the model every request names.
        run_id: the run the events belong to.
        emit: the recording's fan-out; every worker event is handed to it on this loop.
        count: how many processes.
        before_step: awaited before each step (raises to end the run, e.g. a full disk).
    """

    def __init__(
        self,
        plan: RecordPlan,
        *,
        backend: str,
        url: str,
        model: str,
        run_id: int,
        emit: Emit,
        count: int,
        before_step: Callable[[], Awaitable[None]],
    ) -> None:
        self.plan = plan
        self.backend, self.url, self.model, self.run_id = backend, url, model, run_id
        self.emit = emit
        self.count = count
        self.before_step = before_step
        self.next_id = 1
        self._peers: list[_Peer] = []

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the processes and wait until each has its backend open.

        Raises:
            SourceError: a worker could not reach the server (its message), or died.
        """
        loop = asyncio.get_running_loop()
        for i in range(self.count):
            mine, theirs = socket.socketpair()
            log = tempfile.TemporaryFile()
            code = f"from llmtop.recorder.worker_process import worker_entry; worker_entry({theirs.fileno()})"  # fmt: skip
            proc = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,  # Ctrl-C is the recording's to handle
            )
            theirs.close()
            peer = _Peer(i, proc, Connection(mine.detach()), log)
            self._peers.append(peer)
            setup = WorkerSetup(
                self.plan, self.backend, self.url, self.model, self.run_id, Share(i, self.count)
            )
            peer.conn.send(setup)
            loop.add_reader(peer.conn.fileno(), self._on_readable, peer)
        try:
            await asyncio.gather(*(p.expect() for p in self._peers))
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Ask every worker to finish, collect its self-check, and wait for it to exit."""
        waits = []
        for p in self._peers:
            if not p.gone:
                waits.append(p.expect())
                with contextlib.suppress(OSError):
                    p.conn.send(("close", None))
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), STOP_WAIT_S)
        loop = asyncio.get_running_loop()
        for p in self._peers:
            if not p.gone:
                loop.remove_reader(p.conn.fileno())
                p.gone = True
            p.conn.close()
            try:
                await asyncio.to_thread(p.proc.wait, 10)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                await asyncio.to_thread(p.proc.wait)
            p.log.close()

    # --- messages ---------------------------------------------------------------------------

    def _on_readable(self, peer: _Peer) -> None:
        try:
            kind, payload = peer.conn.recv()
        except (EOFError, OSError):
            asyncio.get_running_loop().remove_reader(peer.conn.fileno())
            peer.gone = True
            err = SourceError(
                f"worker process {peer.index + 1} of {self.count} ended unexpectedly "
                f"({peer.ended()})"
            )
            peer.answer(error=err)
            return
        if kind == "events":
            emit = self.emit
            for ev in payload:
                emit(ev)
        elif kind in ("ready", "done"):
            peer.answer(payload)
        elif kind == "probe":
            peer.probe = payload
            peer.answer(None)
        elif kind == "error":  # could not open its backend: the server's own words
            peer.answer(error=SourceError(payload))
        elif kind == "failed":  # a bug in the worker
            peer.answer(error=RuntimeError(f"worker process {peer.index + 1}: {payload}"))

    async def _all(self, kind: str, args: dict[str, Any]) -> list[Any]:
        """Send one command to every worker and wait for every answer; on cancellation, stop
        them (their requests in flight end cancelled) and wait for their last events first."""
        futures = []
        for p in self._peers:
            futures.append(p.expect())
            p.conn.send((kind, args))
        try:
            return await asyncio.gather(*futures)
        except asyncio.CancelledError:
            for p in self._peers:
                if not p.gone:
                    with contextlib.suppress(OSError):
                        p.conn.send(("stop", None))
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(
                    asyncio.wait_for(asyncio.gather(*futures, return_exceptions=True), STOP_WAIT_S)
                )
            raise

    # --- the runner's surface ---------------------------------------------------------------

    async def warmup(self, scenario: Scenario) -> int:
        n = scenario.warmup_requests
        if not n or not scenario.steps:
            return 0
        await self.before_step()
        await self._all("warmup", {"scenario": scenario, "next_id": self.next_id})
        self.next_id += n
        return n

    async def run_step(self, step: Step, step_index: int) -> StepOutcome:
        await self.before_step()
        started_ns = time.perf_counter_ns() + int(START_AHEAD_S * 1e9)
        seed = step.seed if step.seed is not None else random.SystemRandom().randrange(1 << 62)
        lasts = await self._all(
            "step",
            {"index": step_index, "started_ns": started_ns, "seed": seed, "next_id": self.next_id},
        )
        last = max((x for x in lasts if x is not None), default=-1)
        self.next_id += last + 1
        return StepOutcome(step.name, last + 1, (time.perf_counter_ns() - started_ns) / 1e9, last)

    def client_check(self, own: ClientCheck) -> ClientCheck:
        """The run's self-check: every worker's loop lag together, the worst loop, the CPU of
        the recording and every worker added up."""
        lags: list[int] = []
        cpu = own.cpu_pct or 0.0
        loops: list[float] = []
        for p in self._peers:
            if p.probe is None:
                continue
            samples, summary = p.probe
            lags += samples
            cpu += summary.get("cpu_pct") or 0.0
            if summary.get("loop_cpu_pct") is not None:
                loops.append(summary["loop_cpu_pct"])
        p50, p99, worst = lag_summary(lags)
        return ClientCheck(
            loop_lag_ms_p50=p50,
            loop_lag_ms_p99=p99,
            loop_lag_ms_max=worst,
            cpu_pct=cpu,
            loop_cpu_pct=max(loops) if loops else None,
            workers=self.count,
            probes=len(lags),
        )
