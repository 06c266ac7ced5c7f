"""llmtop watching its own event loop: a probe timer that measures how late the loop woke, and the
CPU its process and loop thread used, sampled once a second as ``ClientSampled``.

Why the loop gets a selector of its own: asyncio's epoll selector rounds every timeout up to the
next whole millisecond, so a timer on an idle loop fires 0-1 ms late by construction (0.5 ms on
average) while a socket read is not rounded (it wakes epoll at once). That would show as loop lag
that no token suffers, and would send open-loop requests up to 1 ms late. ``PreciseSelector``
asks epoll for one millisecond less (it may wake early, never late), and waits out the last
fraction with select(2) on the epoll descriptor itself, which takes microseconds. Loops made by
``new_event_loop`` use it (``record``, the dashboard's recording, workers); a loop made elsewhere
(a test's) keeps asyncio's rounding.

Cost: one timer callback per ``PERIOD_S`` (~2 us); an idle wait takes two wake-ups instead of one.
"""

from __future__ import annotations

import asyncio
import select
import selectors
import time
from array import array
from collections.abc import Callable
from typing import Any

from llmtop.core.events import ClientSampled, Event
from llmtop.core.self_check import ClientCheck, lag_summary

PERIOD_S = 0.01
"""The probe's period: 100 samples a second, so a p99 over a few seconds rests on real samples."""
REPORT_S = 1.0
"""How often a ``ClientSampled`` goes out."""


class PreciseSelector(selectors.DefaultSelector):
    """The platform's default selector with timeouts kept to the microsecond (see above), which
    also notes when each of its last two waits returned (``StampingLoop``)."""

    def __init__(self) -> None:
        super().__init__()
        rounds = isinstance(self, selectors.EpollSelector | selectors.PollSelector)
        self._fd = self.fileno() if rounds else -1
        self._precise = rounds and self._fd < 1024  # select(2) takes descriptors below 1024
        self.returned_ns = 0
        self.returned_before_ns = 0

    def select(self, timeout: float | None = None) -> Any:
        if self._precise and timeout is not None and timeout > 0:
            if timeout > 1e-3:
                timeout -= 1e-3  # rounded up: wakes by ``timeout`` at most
            else:
                select.select([self._fd], [], [], timeout)
                timeout = 0
        events = super().select(timeout)
        self.returned_before_ns = self.returned_ns
        self.returned_ns = time.perf_counter_ns()
        return events


class StampingLoop(asyncio.SelectorEventLoop):
    """A loop that says when the bytes a coroutine now reads were known to have arrived.

    asyncio reads a socket in the iteration whose select reported it, and resumes the coroutine
    waiting for those bytes in the next one, after every callback queued before it. Stamping at
    the resume adds all that work to the token's time: at 256 streams whose tokens come together,
    the last one read waits for the 255 others to be parsed (~2.5 ms). The previous iteration's
    select return is when the loop learned the bytes were there, whatever ran after it.
    """

    def __init__(self, selector: PreciseSelector) -> None:
        super().__init__(selector)
        self._stamps = selector

    def received_ns(self) -> int:
        """When the bytes a coroutine resumed by them reads now had arrived (see the class)."""
        return self._stamps.returned_before_ns or time.perf_counter_ns()


def new_event_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers fire on time and whose reads are stamped when the bytes arrived
    (``asyncio.Runner(loop_factory=new_event_loop)``)."""
    return StampingLoop(PreciseSelector())


class LoopProbe:
    """Samples the running loop's lag every ``PERIOD_S``; emits a ``ClientSampled`` every
    ``REPORT_S`` and keeps every sample (microseconds) for the run's summary.

    Args:
        emit: where the per-second samples go (the recording's fan-out), or ``None``.
        run_id: the run the samples belong to.
        worker: this process's number (0 without ``--workers``).
    """

    def __init__(
        self,
        emit: Callable[[Event], None] | None,
        run_id: int | None,
        worker: int = 0,
        *,
        period_s: float = PERIOD_S,
        report_s: float = REPORT_S,
    ) -> None:
        self.emit = emit
        self.run_id = run_id
        self.worker = worker
        self.period_s = period_s
        self.report_s = report_s
        self.lags_us: array[int] = array("q")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0
        self._t0 = self._cpu0 = self._thread0 = 0.0
        self._t_end = self._cpu_end = self._thread_end = 0.0
        self._window = (0.0, 0.0, 0.0, 0)  # wall, process CPU, thread CPU, first sample index

    def start(self) -> None:
        """Start probing the running loop (call on it)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._t0, self._cpu0, self._thread0 = time.monotonic(), time.process_time(), time.thread_time()  # fmt: skip
        self._window = (self._t0, self._cpu0, self._thread0, 0)
        self._due = self._t0 + self.period_s
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        """Stop probing (call on the loop); the summary covers start to now."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._t_end, self._cpu_end, self._thread_end = time.monotonic(), time.process_time(), time.thread_time()  # fmt: skip

    def _tick(self) -> None:
        now = time.monotonic()
        due = self._due
        self.lags_us.append(max(0, int((now - due) * 1e6)))
        if now - self._window[0] >= self.report_s:
            self._report(now)
        nxt = due + self.period_s
        self._due = nxt if nxt > now else now + self.period_s  # a long stall skips, never bursts
        assert self._loop is not None
        self._handle = self._loop.call_at(self._due, self._tick)

    def _report(self, now: float) -> None:
        cpu, thread = time.process_time(), time.thread_time()
        t, c, th, first = self._window
        self._window = (now, cpu, thread, len(self.lags_us))
        if self.emit is None:
            return
        p50, p99, worst = lag_summary(self.lags_us[first:])
        wall = now - t
        self.emit(
            ClientSampled(
                self.run_id, time.perf_counter_ns(), self.worker, p50, p99, worst,
                cpu_pct=100 * (cpu - c) / wall, loop_cpu_pct=100 * (thread - th) / wall,
            )
        )  # fmt: skip

    def summary(self) -> ClientCheck:
        """The whole probe's lag percentiles and CPU (schedule lag is the requests' to tell)."""
        end, cpu, thread = self._t_end, self._cpu_end, self._thread_end
        if self._handle is not None:  # still running
            end, cpu, thread = time.monotonic(), time.process_time(), time.thread_time()
        wall = end - self._t0
        p50, p99, worst = lag_summary(self.lags_us)
        return ClientCheck(
            loop_lag_ms_p50=p50,
            loop_lag_ms_p99=p99,
            loop_lag_ms_max=worst,
            cpu_pct=100 * (cpu - self._cpu0) / wall if wall > 0 else None,
            loop_cpu_pct=100 * (thread - self._thread0) / wall if wall > 0 else None,
            probes=len(self.lags_us),
        )
