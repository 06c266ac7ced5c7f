"""The runner: turns a scenario's steps into requests on a backend, on time.

Arrivals are either a closed loop (``concurrency`` workers, each sending its next request when
its last one ended; 1 worker is sequential) or an open loop (``constant`` or seeded ``poisson``
gaps at ``rate`` requests per second, sent on schedule whatever the server's state). Open-loop
requests are due at absolute times from the step's start, so a late wake-up never shifts the
ones after it and a step keeps its rate. A step ends after ``requests`` requests or
``duration_s`` seconds, whichever comes first; requests already sent are waited for.

The runner knows nothing of storage: events go to ``emit``, the recording's fan-out. It stops
by cancellation (the recording cancels its task), which the backends turn into
``RequestFailed(cancelled)`` for every request in flight.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from llmtop.collectors.base import Backend
from llmtop.core.requests import Emit, GenerationRequest
from llmtop.scenarios.model import Arrival, Scenario, Step

BeforeRequest = Callable[[], Awaitable[None]]


def step_rng(seed: int | None, step_index: int) -> random.Random:
    """The random source of one step: seeded runs draw the same arrivals every time, and each
    step of a scenario its own sequence; unseeded runs differ each time."""
    if seed is None:
        return random.Random()
    return random.Random(f"llmtop-arrivals:{seed}:{step_index}")


def arrival_offsets(arrival: Arrival, rate: float, rng: random.Random) -> Iterator[float]:
    """Seconds from the step's start at which each request is due (endless; the step cuts it).

    The first request is due at once; then gaps of ``1 / rate`` (``constant``) or exponential
    gaps with mean ``1 / rate`` (``poisson``, drawn from ``rng``).
    """
    if arrival == "closed":
        raise ValueError("a closed-loop step has no arrival schedule")
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    t = 0.0
    for i in itertools.count():
        yield t
        t = (i + 1) / rate if arrival == "constant" else t + rng.expovariate(rate)


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What one step did (its statistics come from storage)."""

    name: str
    sent: int
    elapsed_s: float


async def _nothing() -> None:
    return None


class Runner:
    """Sends a scenario's requests through one backend.

    Args:
        backend: an entered backend (its HTTP client is open).
        run_id: the run every event belongs to.
        model: the model name sent with each request.
        emit: where the backend's events go.
        before_request: awaited before each request is sent: the recording waits there while
            the disk is behind, and raises there to end the run (a full disk).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        run_id: int,
        model: str,
        emit: Emit,
        before_request: BeforeRequest | None = None,
    ) -> None:
        self.backend = backend
        self.run_id = run_id
        self.model = model
        self.emit = emit
        self.before_request = before_request or _nothing
        self._ids = itertools.count(1)
        self.sent = 0

    def request(
        self, step: Step, index: int, *, warmup: bool = False, t_scheduled_ns: int | None = None
    ) -> GenerationRequest:
        """The ``index``-th request of ``step``: prompts taken in turn, labels attached."""
        request_id = next(self._ids)
        prompt = step.prompts[index % len(step.prompts)]
        text = f"Request {request_id}. {prompt.text}" if step.unique_prompts else prompt.text
        return GenerationRequest(
            run_id=self.run_id,
            request_id=request_id,
            model=self.model,
            prompt=text,
            api=step.api,
            system=step.system,
            max_tokens=step.max_tokens,
            temperature=step.temperature,
            seed=None if step.seed is None else step.seed + request_id,
            step=step.name,
            prompt_label=prompt.label,
            concurrency=step.concurrency,
            warmup=warmup,
            t_scheduled_ns=t_scheduled_ns,
        )

    async def _send(self, req: GenerationRequest) -> None:
        self.sent += 1
        await self.backend.stream(req, self.emit)

    async def warmup(self, scenario: Scenario) -> int:
        """Send the scenario's warm-up requests (its first step's first prompt), as many at once
        as the scenario has workers, so a batching server warms the slots the steps will use."""
        n = scenario.warmup_requests
        if not n or not scenario.steps:
            return 0
        first = scenario.steps[0]
        left = iter(range(n))

        async def worker() -> None:
            for _ in left:
                await self.before_request()
                await self._send(self.request(first, 0, warmup=True))

        async with asyncio.TaskGroup() as tg:
            for _ in range(min(n, scenario.workers)):
                tg.create_task(worker())
        return n

    async def run_step(self, step: Step, step_index: int) -> StepOutcome:
        """Send one step's requests; returns when the last of them has ended."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        before = self.sent
        if step.open_loop:
            await self._open_loop(step, step_index, started)
        else:
            await self._closed_loop(step, started)
        return StepOutcome(step.name, self.sent - before, loop.time() - started)

    async def _closed_loop(self, step: Step, started: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if step.duration_s is None else started + step.duration_s
        counter = itertools.count()

        async def worker() -> None:
            while True:
                if deadline is not None and loop.time() >= deadline:
                    return
                i = next(counter)
                if step.requests is not None and i >= step.requests:
                    return
                await self.before_request()
                await self._send(self.request(step, i))

        async with asyncio.TaskGroup() as tg:
            for _ in range(step.concurrency or 1):
                tg.create_task(worker())

    async def _open_loop(self, step: Step, step_index: int, started: float) -> None:
        assert step.rate is not None
        loop = asyncio.get_running_loop()
        deadline = None if step.duration_s is None else started + step.duration_s
        # The schedule in perf_counter_ns, the clock of every event: each request keeps when it
        # was due beside when it went out (schedule lag). loop.time() is the same clock on Linux
        # (CLOCK_MONOTONIC); it only paces the sleeps.
        started_ns = time.perf_counter_ns() - round((loop.time() - started) * 1e9)
        slots = asyncio.Semaphore(step.concurrency) if step.concurrency else None
        offsets = arrival_offsets(step.arrival, step.rate, step_rng(step.seed, step_index))

        async def one(req: GenerationRequest) -> None:
            try:
                await self._send(req)
            finally:
                if slots is not None:
                    slots.release()

        async with asyncio.TaskGroup() as tg:
            for i, offset in enumerate(offsets):
                if step.requests is not None and i >= step.requests:
                    break
                due = started + offset
                if deadline is not None and due >= deadline:
                    break
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.before_request()
                if slots is not None:
                    await slots.acquire()
                due_ns = started_ns + round(offset * 1e9)
                tg.create_task(one(self.request(step, i, t_scheduled_ns=due_ns)))
