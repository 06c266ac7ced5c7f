"""An event sink for driving backends in tests: collects what ``emit`` gets, per request, and lets
a test wait for a condition (a token index, a final event) instead of sleeping."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from llmtop.core.events import (
    Event,
    RequestFailed,
    RequestFinished,
    RequestStarted,
    TokenReceived,
)

Final = RequestFinished | RequestFailed


async def wait_until(cond: Callable[[], bool], timeout: float = 30.0, every: float = 0.005) -> bool:
    """Poll ``cond`` (something outside this process, like the fake server's log) until it holds;
    False if it never did within ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(every)
    return True


class Sink:
    """Pass it as ``emit``; then read ``events``, or one request's with the helpers."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._waiters: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []

    def __call__(self, ev: Event) -> None:
        self.events.append(ev)
        for pred, fut in list(self._waiters):
            if not fut.done() and pred(ev):
                fut.set_result(ev)

    async def wait_for(self, pred: Callable[[Event], bool], timeout: float = 30.0) -> Event:
        """The first event (already seen or still to come) for which ``pred`` holds."""
        for ev in self.events:
            if pred(ev):
                return ev
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._waiters.append((pred, fut))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.remove((pred, fut))

    def of(self, request_id: int) -> list[Event]:
        return [e for e in self.events if getattr(e, "request_id", None) == request_id]

    def kinds(self, request_id: int) -> list[str]:
        """The event types of one request, in order, with tokens collapsed: ``[S, T*, F]``."""
        out: list[str] = []
        for e in self.of(request_id):
            name = type(e).__name__
            if name == "TokenReceived" and out and out[-1] == "TokenReceived*":
                continue
            out.append("TokenReceived*" if name == "TokenReceived" else name)
        return out

    def started(self, request_id: int) -> RequestStarted:
        (ev,) = [e for e in self.of(request_id) if isinstance(e, RequestStarted)]
        return ev

    def tokens(self, request_id: int) -> list[TokenReceived]:
        return [e for e in self.of(request_id) if isinstance(e, TokenReceived)]

    def final(self, request_id: int) -> Final:
        """The one final event of a request (fails the test if there is not exactly one)."""
        finals = [e for e in self.of(request_id) if isinstance(e, RequestFinished | RequestFailed)]
        assert len(finals) == 1, finals
        return finals[0]

    def finished(self, request_id: int) -> RequestFinished:
        ev = self.final(request_id)
        assert isinstance(ev, RequestFinished), ev
        return ev

    def failed(self, request_id: int) -> RequestFailed:
        ev = self.final(request_id)
        assert isinstance(ev, RequestFailed), ev
        return ev


async def collect_events(
    sampler: Any, want: Callable[[list[Event]], bool], timeout: float = 30.0
) -> list[Event]:
    """Run ``sampler`` until what it emitted satisfies ``want`` (or ``timeout``: a wait, not a
    bound), then stop it; everything it emitted."""
    got: list[Event] = []
    enough = asyncio.Event()

    def emit(ev: Event) -> None:
        got.append(ev)
        if want(got):
            enough.set()

    task = asyncio.create_task(sampler.run(emit))
    waiter = asyncio.create_task(enough.wait())
    await asyncio.wait({task, waiter}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    task.cancel()
    waiter.cancel()
    await asyncio.gather(task, waiter, return_exceptions=True)
    return got
