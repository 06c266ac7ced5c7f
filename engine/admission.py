"""Admission control for ``llmtop serve``: at most ``max_batch`` jobs running and ``max_queue``
waiting; a job beyond that is refused at once with 503 and an honest ``Retry-After``.

The count lives here, at the serving layer, not in the scheduler: a job counts from the moment
it is admitted until its ``Done`` reaches the event loop (finished, cancelled by a client that
went away, or failed), and everything happens on the loop thread, so no lock is needed. An
unbounded queue would turn overload into memory growth and ever longer waits that every client
times out on; a quick 503 lets a client (or a load balancer) back off and try again.
"""

from __future__ import annotations

import asyncio
import math

from llmtop.engine.api_common import ApiError
from llmtop.engine.jobs import Done, Event, Job, JobHandle
from llmtop.engine.serve_options import DEFAULT_MAX_QUEUE

MAX_RETRY_AFTER_S = 600


class Admission:
    """Counts the jobs the server holds and refuses the ones it should not take."""

    def __init__(self, max_batch: int, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.in_flight = 0
        """Admitted jobs whose ``Done`` has not reached the loop yet (running or waiting)."""
        self.refused = 0
        """Jobs refused with 503 so far."""
        self._service_s: float | None = None
        """Moving average of a finished job's time in the batch (prefill and decode)."""

    @property
    def waiting(self) -> int:
        return max(self.in_flight - self.max_batch, 0)

    def admit(self) -> None:
        """Take one more job or raise a 503 ``ApiError`` with ``Retry-After`` (seconds)."""
        if self.in_flight >= self.max_batch + self.max_queue:
            self.refused += 1
            wait_s = self.retry_after_s()
            raise ApiError(
                503,
                f"server busy: {self.max_batch} requests running and {self.waiting} waiting, "
                f"the most it queues (--max-queue {self.max_queue}); retry after {wait_s} s",
                code="server_busy",
                headers={"Retry-After": str(wait_s)},
            )
        self.in_flight += 1

    def release(self, done: Done) -> None:
        """A job ended: free its place and learn how long jobs take."""
        self.in_flight -= 1
        if done.reason in ("stop", "length"):
            took_s = max(done.total_ns - done.queue_ns, 0) / 1e9
            prev = self._service_s
            self._service_s = took_s if prev is None else 0.8 * prev + 0.2 * took_s

    def retry_after_s(self) -> int:
        """When a place should be free: the jobs ahead, drained ``max_batch`` at a time at the
        recent time per job; at least 1 s (and 1 s before any job has finished)."""
        if self._service_s is None:
            return 1
        ahead = self.waiting + 1
        return min(max(1, math.ceil(ahead * self._service_s / self.max_batch)), MAX_RETRY_AFTER_S)


class AdmittedHandle(JobHandle):
    """A job handle that gives its place back to ``Admission`` when its ``Done`` arrives."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop, admission: Admission) -> None:
        super().__init__(job, loop)
        self._admission = admission

    def deliver(self, event: Event) -> None:
        if isinstance(event, Done) and self.done is None:
            self._admission.release(event)
        super().deliver(event)
