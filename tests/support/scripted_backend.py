"""An in-process backend with known timings: the unit-test seam for the runner's arrival logic.

It follows collectors/base.py's contract exactly (RequestStarted, TokenReceived per chunk, one
RequestFinished or RequestFailed, cancellation emitted then re-raised) but sends nothing over a
socket, so tests of arrivals, labels and run status are fast and exact. Accuracy on the wire is
tested end to end with the real backends and the fake HTTP server (tests/cli/test_record*.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from llmtop.core.errors import SourceError
from llmtop.core.events import (
    RequestFailed,
    RequestFinished,
    RequestStarted,
    ServerTimings,
    TokenReceived,
)
from llmtop.core.requests import Emit, GenerationRequest

MS = 1_000_000


@dataclass
class ScriptedBackend:
    """Streams ``tokens`` tokens, the first ``ttft_ms`` after the start, then every ``itl_ms``.

    ``fail(req)`` may return an error kind for a request (it then fails after its TTFT);
    ``gate``, when set, holds every request after its first token until the event is set.
    ``clock`` stamps the events: ``virtual_time.now_ns`` for a test on the virtual clock.
    """

    ttft_ms: float = 2.0
    itl_ms: float = 1.0
    tokens: int = 3
    models: tuple[str, ...] = ("m",)
    fail: Callable[[GenerationRequest], str | None] | None = None
    gate: asyncio.Event | None = None
    enter_error: str | None = None
    name: str = "scripted"
    clock: Callable[[], int] = time.perf_counter_ns
    base_url: str = "http://127.0.0.1:9/scripted"
    requests: list[GenerationRequest] = field(default_factory=list)
    starts_ns: list[int] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    entered: bool = False
    exited: bool = False

    async def __aenter__(self) -> ScriptedBackend:
        if self.enter_error:
            raise SourceError(self.enter_error)
        self.entered = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.exited = True

    async def list_models(self) -> list[str]:
        return list(self.models)

    async def check(self, model: str | None) -> None:
        if model not in self.models:
            raise SourceError(f"model {model!r} not found at {self.base_url}")

    async def stream(self, req: GenerationRequest, emit: Emit) -> None:
        t0 = self.clock()
        self.requests.append(req)
        self.starts_ns.append(t0)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        emit(
            RequestStarted(
                req.run_id, req.request_id, t0, step=req.step, prompt_label=req.prompt_label,
                prompt_chars=len(req.prompt), concurrency=req.concurrency,
                temperature=req.temperature, max_tokens=req.max_tokens, warmup=req.warmup,
            )
        )  # fmt: skip
        first = last = None
        chunks = 0
        try:
            await asyncio.sleep(self.ttft_ms / 1000)
            kind = self.fail(req) if self.fail else None
            if kind is not None:
                emit(RequestFailed(req.run_id, req.request_id, self.clock(), kind,  # type: ignore[arg-type]
                                   f"scripted {kind}", t_start_ns=t0))  # fmt: skip
                return
            for i in range(self.tokens):
                if i:
                    await asyncio.sleep(self.itl_ms / 1000)
                last = self.clock()
                first = first or last
                chunks += 1
                emit(TokenReceived(req.run_id, req.request_id, i, last, 1, 4))
                if i == 0 and self.gate is not None:
                    await self.gate.wait()
            emit(
                RequestFinished(
                    req.run_id, req.request_id, self.clock(), t0, first, last, chunks,
                    chunks, ServerTimings(prompt_tokens=7, output_tokens=chunks),
                )
            )  # fmt: skip
        except asyncio.CancelledError:
            emit(
                RequestFailed(
                    req.run_id, req.request_id, self.clock(), "cancelled", "stopped",
                    t_start_ns=t0, t_first_ns=first, t_last_ns=last, chunks=chunks,
                    tokens_counted=chunks,
                )
            )  # fmt: skip
            raise
        finally:
            self.in_flight -= 1
