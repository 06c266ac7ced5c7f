"""An asyncio event loop on a virtual clock, for code whose only waits are timers.

The runner schedules requests with ``loop.time()`` and ``asyncio.sleep``. On the real clock a
test of that schedule measures the machine as much as the runner: on a busy 2-core machine a
sleep can wake tens of milliseconds late, and a bound loose enough for that hides a runner that
drifts. On this loop the clock stands still while anything is ready to run and jumps to the next
timer when nothing is, so every wake-up is exactly on time, a step of 30 requests at 20 req/s
takes no wall time, and the schedule can be asserted exactly. ``late_s`` makes every timer wake
that much late, as a busy machine does, which is how a test tells deadlines taken from a fixed
start (each request is late by that much) from sleeps of one interval after the last wake-up
(the lateness adds up, request after request).

Only for code that waits on timers: a wait on a thread or a socket would see the clock jump past
it (the loop still blocks for real when no timer is pending at all).

    from support.virtual_time import run_virtual

    def test_schedule():
        run_virtual(main())
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    """Polls without blocking; where the loop would block until a timer, moves the clock."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualClockLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None or self.loop is None:  # no timer at all: wait for real I/O
            return super().select(timeout)
        self.loop.advance(timeout + self.loop.late_s)
        return []


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """``time()`` is virtual: it moves only by ``advance`` or to the next timer
    (``late_s`` past it)."""

    def __init__(self, late_s: float = 0.0) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = 1000.0  # an arbitrary origin, as a monotonic clock has
        self.late_s = late_s

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Spend ``seconds`` of virtual time now, without yielding (CPU work, as the clock sees it)."""
        self._now += seconds


def run_virtual(coro: Coroutine[Any, Any, T], late_s: float = 0.0) -> T:
    """Run ``coro`` to completion on a fresh ``VirtualClockLoop`` whose timers wake ``late_s``
    late."""
    loop = VirtualClockLoop(late_s)
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def now_ns() -> int:
    """The running loop's clock in ns: a backend's timestamps on the same (virtual) clock."""
    return round(asyncio.get_running_loop().time() * 1e9)
