"""Live counters of a recording: what the progress bar shows and what the SLO stop judges.

Fed every event on the recording's loop (a few integer updates per event, nothing per token
but one addition). Other threads may read the integers at any time (the dashboard's status
line); each one is a single store, so a reader sees a recent value, never a torn one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from llmtop.core.events import (
    Event,
    RequestFailed,
    RequestFinished,
    RequestStarted,
    TokenReceived,
)
from llmtop.core.metrics import Slo, meets_slo, request_metrics
from llmtop.scenarios.model import Step


@dataclass(slots=True)
class StepCount:
    """One step's requests so far (warm-up excluded)."""

    name: str
    planned_requests: int | None = None
    planned_s: float | None = None
    started_at: float | None = None
    """``time.monotonic()`` when the step began; ``None`` until then."""
    sent: int = 0
    done: int = 0
    ok: int = 0
    errors: int = 0
    cancelled: int = 0
    good: int = 0
    """Requests that succeeded and met every SLO."""
    output_tokens: int = 0
    """Output tokens of the step's ended requests (the server's count when it gave one)."""

    @property
    def goodput(self) -> float | None:
        judged = self.ok + self.errors
        return self.good / judged if judged else None


@dataclass(slots=True)
class LiveTally:
    """Counters over the whole run and per step, updated by :meth:`add`."""

    slo: Slo = field(default_factory=Slo)
    steps: list[StepCount] = field(default_factory=list)
    current: int = -1
    """Index of the step running now; -1 before the first (warm-up)."""
    started_at: float = field(default_factory=time.monotonic)
    sent: int = 0
    done: int = 0
    ok: int = 0
    errors: int = 0
    cancelled: int = 0
    warmup: int = 0
    warmup_tokens: int = 0
    """Output tokens of the warm-up requests that ended."""
    tokens: int = 0
    """Tokens received so far, as the chunks counted them (warm-up included)."""
    error_kinds: dict[str, int] = field(default_factory=dict)
    first_error: str | None = None
    _warm_ids: set[int] = field(default_factory=set)
    _step_of: dict[int, int] = field(default_factory=dict)

    @classmethod
    def for_steps(cls, steps: tuple[Step, ...], slo: Slo) -> LiveTally:
        return cls(
            slo=slo,
            steps=[StepCount(s.name, s.requests, s.duration_s) for s in steps],
        )

    def begin_step(self, index: int) -> None:
        self.current = index
        self.steps[index].started_at = time.monotonic()

    def add(self, ev: Event) -> None:
        """Count one event (any kind; samples are ignored)."""
        if type(ev) is TokenReceived:  # the hot path: one comparison and one addition
            self.tokens += ev.n_tokens
        elif isinstance(ev, RequestStarted):
            if ev.warmup:
                self._warm_ids.add(ev.request_id)
                self.warmup += 1
                return
            self.sent += 1
            if self.current >= 0:
                self._step_of[ev.request_id] = self.current
                self.steps[self.current].sent += 1
        elif isinstance(ev, RequestFinished):
            if ev.request_id in self._warm_ids:
                self.warmup_tokens += request_metrics(ev).output_tokens
                return
            self.done += 1
            self.ok += 1
            step = self._step(ev.request_id)
            if step is not None:
                step.done += 1
                step.ok += 1
                step.output_tokens += request_metrics(ev).output_tokens
                if self._meets(ev):
                    step.good += 1
        elif isinstance(ev, RequestFailed):
            if ev.request_id in self._warm_ids:
                self.warmup_tokens += ev.tokens_counted
                return
            self.done += 1
            step = self._step(ev.request_id)
            if step is not None:
                step.output_tokens += ev.tokens_counted
            if ev.error_kind == "cancelled":
                self.cancelled += 1
                if step is not None:
                    step.done += 1
                    step.cancelled += 1
                return
            self.errors += 1
            self.error_kinds[ev.error_kind] = self.error_kinds.get(ev.error_kind, 0) + 1
            if self.first_error is None:
                self.first_error = ev.message
            if step is not None:
                step.done += 1
                step.errors += 1

    def _step(self, request_id: int) -> StepCount | None:
        i = self._step_of.pop(request_id, None)
        return None if i is None else self.steps[i]

    def _meets(self, ev: RequestFinished) -> bool:
        if not self.slo.is_set:
            return True
        m = request_metrics(ev)
        return meets_slo(self.slo, True, m.ttft_ms, m.tpot_ms, m.e2e_ms)

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self.started_at
