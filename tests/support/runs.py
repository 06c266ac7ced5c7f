"""Write runs with hand-made timestamps through the real writer, for storage, export and CLI tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llmtop.core.events import (
    Event,
    RequestFailed,
    RequestFinished,
    RequestStarted,
    ResourcesSampled,
    ServerTimings,
    TokenReceived,
)
from llmtop.storage.writer import EventWriter, RunInfo

MS = 1_000_000


@dataclass
class FakeRequest:
    """One request: starts at ``start_ms`` (relative to the run's t0), chunks at the given offsets."""

    start_ms: float
    chunk_ms: Sequence[float]
    end_ms: float | None = None
    step: str = "s1"
    prompt_label: str = "short"
    warmup: bool = False
    fail: str | None = None  # an error kind
    message: str = "boom"
    server: ServerTimings = field(default_factory=ServerTimings)
    n_tokens: int = 1
    concurrency: int = 1
    temperature: float = 0.0


def request_events(run_id: int, request_id: int, t0_ns: int, r: FakeRequest) -> list[Event]:
    start = t0_ns + int(r.start_ms * MS)
    times = [t0_ns + int(c * MS) for c in r.chunk_ms]
    end = t0_ns + int((r.end_ms if r.end_ms is not None else (r.chunk_ms or [r.start_ms])[-1]) * MS)
    evs: list[Event] = [
        RequestStarted(
            run_id, request_id, start, step=r.step, prompt_label=r.prompt_label,
            prompt_chars=len(r.prompt_label), concurrency=r.concurrency,
            temperature=r.temperature, warmup=r.warmup,
        )
    ]  # fmt: skip
    evs += [
        TokenReceived(run_id, request_id, i, t, n_tokens=r.n_tokens, text_len=3)
        for i, t in enumerate(times)
    ]
    common = {
        "t_start_ns": start,
        "t_first_ns": times[0] if times else None,
        "t_last_ns": times[-1] if times else None,
        "chunks": len(times),
        "tokens_counted": len(times) * r.n_tokens,
    }
    if r.fail:
        evs.append(RequestFailed(run_id, request_id, end, r.fail, r.message, **common))  # type: ignore[arg-type]
    else:
        evs.append(RequestFinished(run_id, request_id, end, server=r.server, **common))
    return evs


async def write_run_async(
    path: Path,
    requests: Sequence[FakeRequest],
    *,
    info: RunInfo | None = None,
    status: str = "finished",
    samples: Sequence[tuple[float, float, int]] = (),
) -> int:
    """Record one run of ``requests`` (and ``(t_ms, cpu_pct, mem_used)`` samples); returns its id."""
    async with EventWriter(path) as w:
        run_id, t0 = await w.create_run(info or RunInfo(name="test", backend="fake", model="m"))
        for i, r in enumerate(requests, start=1):
            for ev in request_events(run_id, i, t0, r):
                await w.put(ev)
        for t_ms, cpu, mem in samples:
            await w.put(
                ResourcesSampled(run_id, t0 + int(t_ms * MS), cpu, (cpu, cpu), mem, 8 << 30)
            )
        await w.finish_run(run_id, status)
    return run_id


def write_run(path: Path, requests: Sequence[FakeRequest], **kw: object) -> int:
    return asyncio.run(write_run_async(path, requests, **kw))  # type: ignore[arg-type]
