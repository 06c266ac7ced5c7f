"""``llmtop record``'s live progress on stderr: one bar per step, redrawn four times a second.

Its own module: rich.progress is loaded only when the bars are shown (``--quiet``, ``--json``
and a stderr that is not a terminal show none), ~5 ms of a short run's start otherwise.
The bars read the recording's live tally from the same event loop (a few attribute reads;
rich draws from its own thread).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from llmtop.core.metrics import NS_PER_S, rate_per_s
from llmtop.recorder.recording import Recording

REFRESH_S = 0.25
RATE_WINDOW_S = 5.0


class ProgressView:
    """One bar per step: requests (or seconds) done, ok/errors, tok/s now, elapsed, ETA."""

    def __init__(self, recording: Recording, console: Console) -> None:
        self.rec = recording
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=30),
            TextColumn("{task.fields[amount]}"),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[tps]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            refresh_per_second=4,
            transient=False,
        )
        self._tasks: dict[int, TaskID] = {}
        self._warm: TaskID | None = None
        self._start: TaskID | None = None
        """The row that says what the run waits for before its first request."""
        self._seen: deque[tuple[int, int]] = deque()  # (perf_counter_ns, tokens so far)

    def _tokens_per_s(self) -> float | None:
        """Tokens per second over the last few seconds: what the server does now."""
        now, tokens = time.perf_counter_ns(), self.rec.tally.tokens
        seen = self._seen
        seen.append((now, tokens))
        while len(seen) > 2 and now - seen[0][0] > RATE_WINDOW_S * NS_PER_S:
            seen.popleft()
        t0, n0 = seen[0]
        return rate_per_s(tokens - n0, t0, now)

    async def run(self) -> None:
        """Update the bars until cancelled."""
        with self.progress:
            try:
                while True:
                    self.update()
                    await asyncio.sleep(REFRESH_S)
            finally:
                self.update()

    def _step_task(self, i: int) -> TaskID:
        if i not in self._tasks:
            count = self.rec.tally.steps[i]
            n = len(self.rec.tally.steps)
            total = count.planned_requests if count.planned_requests else count.planned_s
            self._tasks[i] = self.progress.add_task(
                f"{count.name} ({i + 1}/{n})", total=total, amount="", counts="", tps=""
            )
        return self._tasks[i]

    def _starting(self, waiting: bool) -> None:
        """Show what the run waits for (starting the engine...) until its first request."""
        status = self.rec.status
        if waiting and status:
            if self._start is None:
                self._start = self.progress.add_task("starting", total=None, amount="", counts="", tps="")  # fmt: skip
            self.progress.update(self._start, amount=status)
        elif self._start is not None and not waiting:
            self.progress.remove_task(self._start)
            self._start = None

    def update(self) -> None:
        t = self.rec.tally
        tps = self._tokens_per_s()
        tps_text = f"{tps:,.0f} tok/s" if tps is not None and t.tokens else ""
        self._starting(t.current < 0 and not t.warmup and not t.done)
        if t.current < 0:
            if t.warmup and self._warm is None:
                self._warm = self.progress.add_task(
                    "warm-up", total=None, amount="", counts="", tps=""
                )
            if self._warm is not None:
                self.progress.update(self._warm, amount=f"{t.warmup} request(s)", tps=tps_text)
            return
        if self._warm is not None:
            self.progress.update(self._warm, total=1, completed=1)
        for i in range(t.current + 1):
            s = t.steps[i]
            task = self._step_task(i)
            finished = i < t.current
            counts = f"ok {s.ok}" + (f" [red]err {s.errors}[/]" if s.errors else " err 0")
            done: float | None
            if s.planned_requests:
                done = s.planned_requests if finished else s.done
                amount = f"{s.done}/{s.planned_requests} req"
            else:
                elapsed = 0.0 if s.started_at is None else _since(s.started_at)
                done = s.planned_s if finished else min(elapsed, s.planned_s or 0.0)
                amount = f"{s.done} req"
            self.progress.update(task, completed=done, amount=amount, counts=counts,
                                 tps=tps_text if i == t.current else "")  # fmt: skip


def _since(t: float) -> float:
    return time.monotonic() - t
