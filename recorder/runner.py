"""The runner: turns a scenario's steps into requests on a backend, on time.

Arrivals are either a closed loop (``concurrency`` workers, each sending its next request when
its last one ended; 1 worker is sequential) or an open loop (``constant`` or seeded ``poisson``
gaps at ``rate`` requests per second, sent on schedule whatever the server's state). Open-loop
requests are due at absolute times from the step's start, so a late wake-up never shifts the
ones after it and a step keeps its rate. A step ends after ``requests`` requests or
``duration_s`` seconds, whichever comes first; requests already sent are waited for.

The runner knows nothing of storage: events go to ``emit``, the recording's fan-out. It stops
by cancellation (the recording cancels its task), which the backends turn into
``RequestFailed(cancelled)`` for every request in flight. With ``--workers`` one runner runs in
each worker process and sends its ``Share`` of every step (recorder/workers.py).

Request ids count on across the run: a step's request number ``i`` (0-based) gets id
``next_id + i``, and the next step starts after the highest number sent, so ids are the same
whether one process sends them all or several share them.
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
from llmtop.scenarios.model import Arrival, ReplayItem, Scenario, Step

BeforeRequest = Callable[[], Awaitable[None]]
SPIN_S = 0.002
"""A replayed request is slept for until this long before it is due, then the loop is yielded
to until it is: asyncio's timers wake up to a millisecond late (epoll rounds its timeout up),
and a replay aims to start each request within a couple of ms of its offset (bench/proxy.py)."""


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
class Share:
    """The part of every step one process sends: worker ``index`` of ``count`` (``--workers``).

    Closed loop: stream ``s`` of a step's ``concurrency`` runs in worker ``s % count``, and the
    step's request numbers are dealt to the streams in turn (request ``i`` to stream ``i % C``
    in round ``i // C``), so each worker sends its streams' share and the numbers stay those of
    one process. Open loop: request ``i`` of the schedule goes out from worker ``i % count``, on
    the same clock (CLOCK_MONOTONIC is system-wide), at the same time it would from one process.
    A step with fewer streams than workers leaves the extra workers idle.
    """

    index: int = 0
    count: int = 1

    def active(self, streams: int | None) -> int:
        """Workers taking part in a step of ``streams`` streams (``None``: no cap)."""
        return self.count if streams is None else max(1, min(self.count, streams))

    def streams(self, total: int) -> range:
        """This worker's stream numbers out of ``total``."""
        return range(self.index, total, self.active(total))

    def indices(self, total_streams: int, limit: int | None) -> Iterator[int]:
        """Closed loop: the request numbers this worker's streams send, in order."""
        mine = self.streams(total_streams)
        if not mine:
            return
        for k in itertools.count():
            for s in mine:
                i = k * total_streams + s
                if limit is not None and i >= limit:
                    return
                yield i

    def owns(self, i: int, streams: int | None) -> bool:
        """Open loop: whether request ``i`` of the schedule is this worker's."""
        n = self.active(streams)
        return self.index < n and i % n == self.index


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What one step did (its statistics come from storage)."""

    name: str
    sent: int
    elapsed_s: float
    last_index: int = -1
    """The highest request number (0-based, within the step) this process sent; -1 for none."""


async def _nothing() -> None:
    return None


class Runner:
    """Sends a scenario's requests through one backend (all of them, or a worker's ``share``).

    Args:
        backend: an entered backend (its HTTP client is open).
        run_id: the run every event belongs to.
        model: the model name sent with each request.
        emit: where the backend's events go.
        before_request: awaited before each request is sent: the recording waits there while
            the disk is behind, and raises there to end the run (a full disk).
        share: which part of each step this process sends (recorder/workers.py).
    """

    def __init__(
        self,
        backend: Backend,
        *,
        run_id: int,
        model: str,
        emit: Emit,
        before_request: BeforeRequest | None = None,
        share: Share | None = None,
    ) -> None:
        self.backend = backend
        self.run_id = run_id
        self.model = model
        self.emit = emit
        self.before_request = before_request or _nothing
        self.share = share or Share()
        self.next_id = 1
        """The id of request number 0 of the next step (ids count on across steps)."""
        self.sent = 0

    def request(
        self,
        step: Step,
        index: int,
        *,
        request_id: int | None = None,
        warmup: bool = False,
        t_scheduled_ns: int | None = None,
    ) -> GenerationRequest:
        """Request number ``index`` of ``step``: prompts taken in turn, labels attached; its id
        is ``next_id + index`` unless given."""
        if request_id is None:
            request_id = self.next_id + index
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
        streams = min(n, scenario.workers)
        left = self.share.indices(streams, n)
        base = self.next_id

        async def worker() -> None:
            for i in left:
                await self.before_request()
                await self._send(self.request(first, 0, request_id=base + i, warmup=True))

        async with asyncio.TaskGroup() as tg:
            for _ in self.share.streams(streams):
                tg.create_task(worker())
        self.next_id = base + n
        return n

    async def run_step(
        self,
        step: Step,
        step_index: int,
        *,
        started_ns: int | None = None,
        arrival_seed: int | None = None,
    ) -> StepOutcome:
        """Send one step's requests; returns when the last of them has ended.

        Args:
            started_ns: the step's start (``perf_counter_ns``); workers get a common one, so
                their schedules are one schedule to the nanosecond. Default: now.
            arrival_seed: the seed of an unseeded open-loop schedule, so every worker draws the
                same one (default: the step's seed, else a fresh random schedule).
        """
        loop = asyncio.get_running_loop()
        now_ns = time.perf_counter_ns()
        if started_ns is None:
            started_ns = now_ns
        started = loop.time() + (started_ns - now_ns) / 1e9  # the same instant, on the loop's clock
        if started > loop.time():
            await asyncio.sleep(started - loop.time())
        before = self.sent
        self._last = -1
        if step.replay:
            await self._replay(step, started, started_ns)
        elif step.open_loop:
            seed = step.seed if arrival_seed is None else arrival_seed
            await self._open_loop(step, step_index, started, started_ns, seed)
        else:
            await self._closed_loop(step, started)
        last = self._last
        self.next_id += last + 1  # workers are told theirs: the highest of all of them
        return StepOutcome(step.name, self.sent - before, loop.time() - started, last)

    def _note(self, i: int) -> None:
        if i > self._last:
            self._last = i

    async def _closed_loop(self, step: Step, started: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if step.duration_s is None else started + step.duration_s
        streams = step.concurrency or 1
        numbers = self.share.indices(streams, step.requests)

        async def worker() -> None:
            while True:
                if deadline is not None and loop.time() >= deadline:
                    return
                i = next(numbers, None)
                if i is None:
                    return
                await self.before_request()
                self._note(i)
                await self._send(self.request(step, i))

        async with asyncio.TaskGroup() as tg:
            for _ in self.share.streams(streams):
                tg.create_task(worker())

    def replay_request(
        self, step: Step, item: ReplayItem, index: int, t_scheduled_ns: int
    ) -> GenerationRequest:
        """A replayed request: its own API, model, prompt and settings."""
        return GenerationRequest(
            run_id=self.run_id, request_id=self.next_id + index, model=item.model or self.model,
            prompt=item.prompt, api=item.api, system=item.system, max_tokens=item.max_tokens,
            temperature=item.temperature, top_p=item.top_p, top_k=item.top_k, seed=item.seed,
            step=step.name, prompt_label=item.label, messages=item.messages,
            t_scheduled_ns=t_scheduled_ns,
        )  # fmt: skip

    async def _replay(self, step: Step, started: float, started_ns: int) -> None:
        """Each request of ``step.replay`` at ``started`` + its offset, whatever came before."""
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as tg:
            for i, item in enumerate(step.replay):
                due = started + item.offset_s
                if due - loop.time() > SPIN_S:
                    await asyncio.sleep(due - loop.time() - SPIN_S)
                while loop.time() < due:
                    await asyncio.sleep(0)
                await self.before_request()
                self._note(i)
                request = self.replay_request(
                    step, item, i, started_ns + round(item.offset_s * 1e9)
                )
                tg.create_task(self._send(request))

    async def _open_loop(
        self, step: Step, step_index: int, started: float, started_ns: int, seed: int | None
    ) -> None:
        assert step.rate is not None
        loop = asyncio.get_running_loop()
        deadline = None if step.duration_s is None else started + step.duration_s
        share = self.share
        cap = len(share.streams(step.concurrency)) if step.concurrency else None
        slots = asyncio.Semaphore(cap) if cap else None
        offsets = arrival_offsets(step.arrival, step.rate, step_rng(seed, step_index))
        # Each request keeps when it was due (``started_ns`` + offset, in the clock of every
        # event) beside when it went out: the schedule lag. ``started`` only paces the sleeps.

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
                if not share.owns(i, step.concurrency):
                    continue
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await self.before_request()
                if slots is not None:
                    await slots.acquire()
                due_ns = started_ns + round(offset * 1e9)
                self._note(i)
                tg.create_task(one(self.request(step, i, t_scheduled_ns=due_ns)))
