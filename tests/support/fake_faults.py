"""The fake server's behaviours and faults. A ``Fault`` is the normal stream built from hooks;
each fault overrides the one hook where it misbehaves, and ``FAULTS`` maps its name to it.

See servers.py for how to use the fake server and the list of faults.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

try:
    from .fake_http import NOTHING, Response, Stream
    from .fake_wire import Wire, prompt_chars, request_limit
except ImportError:  # run as a script (servers.py): the folder is on sys.path
    from fake_http import NOTHING, Response, Stream  # type: ignore[no-redef]
    from fake_wire import Wire, prompt_chars, request_limit  # type: ignore[no-redef]

_NS = 1_000_000
HUGE_LINE_BYTES = 10 * 1024 * 1024
"""The size of the one line the ``huge_line`` fault sends."""


@dataclass(frozen=True)
class Behavior:
    """How the fake server answers one generation request."""

    tokens: int = 8
    """Tokens to generate (fewer when the request's max tokens is lower: done_reason "length")."""
    ttft_ms: float = 0.0
    itl_ms: float = 0.0
    """Between tokens; ``0`` floods (no sleeps at all)."""
    tokens_per_chunk: int = 1
    load_ms: float = 0.0
    """Added before the first token and reported as Ollama's ``load_duration``."""
    prompt_tokens: int | None = None
    """Reported prompt size; default: prompt characters / 4, at least 1."""
    text: str = " tok"
    """The text of each token."""
    fault: str | None = None
    fault_after: int = 0
    """Content chunks sent before a mid-stream fault strikes."""
    status: int = 500
    error_body: bool = True
    hold_s: float = 60.0
    """How long the hang faults hold the connection (the client is expected to give up first)."""
    trickle_ms: float = 2.0
    lines_per_write: int = 1
    """Chunks (one HTTP chunk each) coalesced into one socket write when flooding (``itl_ms == 0``)."""
    log_sends: bool = True
    """Record each send time (turn off for the benchmark's floods)."""
    raw: str | None = None
    """Send exactly this as the body (with the API's content type) instead of a generated stream."""
    raw_chunk: int = 0
    """Write ``raw`` in pieces of this many bytes, ``trickle_ms`` apart (``0``: in one write)."""

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; known: {', '.join(sorted(FAULTS))}")
        if self.tokens < 0 or self.tokens_per_chunk < 1 or self.lines_per_write < 1:
            raise ValueError("tokens >= 0, tokens_per_chunk >= 1 and lines_per_write >= 1")


@dataclass
class RequestLog:
    """What the server did with one generation request (times are ``perf_counter_ns``)."""

    seq: int
    api: str
    """``ollama`` or ``openai``."""
    path: str
    model: str
    fault: str | None
    t_recv_ns: int
    """When the handler got the request (the schedule's origin)."""
    peer: list[Any] | None
    """The client's (host, port): equal ports mean one kept-alive connection."""
    body: dict[str, Any]
    auth: str | None
    t_headers_ns: int | None = None
    t_end_ns: int | None = None
    sends: list[list[int]] = field(default_factory=list)
    """``[t_ns, tokens]`` per write of content, taken as the write began."""
    scheduled: list[int] = field(default_factory=list)
    """When each of those writes was due."""
    outcome: str = "running"
    """``done``, ``fault`` (the fault struck), ``client_gone`` (the client closed first)."""


@dataclass
class Ctx:
    """One generation request being answered."""

    stream: Stream
    wire: Wire
    beh: Behavior
    body: dict[str, Any]
    log: RequestLog
    t_recv_ns: int
    sent_tokens: int = 0
    t_first_send: int | None = None
    t_last_send: int | None = None

    def __post_init__(self) -> None:
        limit = request_limit(self.body)
        self.n_tokens = self.beh.tokens if limit is None else min(self.beh.tokens, limit)
        self.done_reason = "length" if self.n_tokens < self.beh.tokens else "stop"
        pt = self.beh.prompt_tokens
        self.prompt_tokens = pt if pt is not None else max(1, -(-prompt_chars(self.body) // 4))


async def _sleep_until(t_ns: int) -> None:
    """Sleep until ``t_ns``: most of the way first, then the last 2 ms (a process woken from a
    long sleep is slow to run again; the second, short sleep starts from a warm one)."""
    delay = (t_ns - time.perf_counter_ns()) / 1e9
    if delay > 0.004:
        await asyncio.sleep(delay - 0.002)
        delay = (t_ns - time.perf_counter_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)


class Fault:
    """The normal answer, built from hooks that the faults override."""

    async def before_headers(self, ctx: Ctx) -> Response | None:
        """Return a response to send instead of the stream (``NOTHING``: send nothing)."""
        return None

    def content_type(self, ctx: Ctx) -> str:
        return ctx.wire.content_type

    async def write(self, ctx: Ctx, data: bytes) -> None:
        ctx.stream.write(data)
        await ctx.stream.drain()

    async def before_chunk(self, ctx: Ctx, index: int) -> bool:
        """Called before content chunk ``index``; return True to end the stream there."""
        return False

    def final(self, ctx: Ctx) -> bytes:
        return ctx.wire.final(ctx)

    async def send(self, ctx: Ctx, data: bytes) -> None:
        """Write ``data``, the headers first if they have not gone out yet."""
        if not ctx.stream.started:
            ctx.stream.start(200, self.content_type(ctx))
            ctx.log.t_headers_ns = time.perf_counter_ns()
            if not data:
                ctx.stream.write(b"")  # the headers alone
                return
        await self.write(ctx, data)

    async def run(self, ctx: Ctx) -> None:
        early = await self.before_headers(ctx)
        if early is not None:
            ctx.log.outcome = "fault"
            ctx.stream.respond(early)
            return
        beh, wire = ctx.beh, ctx.wire
        if beh.raw is not None:
            await self._raw(ctx, beh.raw.encode())
            return
        n, k = ctx.n_tokens, beh.tokens_per_chunk
        sizes = [min(k, n - a) for a in range(0, n, k)]
        first = ctx.t_recv_ns + int((beh.load_ms + beh.ttft_ms) * _NS)
        itl = int(beh.itl_ms * _NS)
        if not wire.streaming:
            await _sleep_until(first + (n - sizes[0] if sizes else 0) * itl)
            ctx.sent_tokens = n
            ctx.log.outcome = "done"
            ctx.stream.respond(Response.json(wire.document(ctx, beh.text * n)))
            return
        if wire.headers_first:
            await self.send(ctx, wire.preamble())
        per_write = beh.lines_per_write if itl == 0 and beh.fault is None else 1
        lines = {s: wire.chunk(beh.text * s) for s in set(sizes)}
        log, offset, i = ctx.log, 0, 0
        while i < len(sizes):
            if await self.before_chunk(ctx, i):
                log.outcome = "fault"
                return
            group = sizes[i : i + per_write]
            due = first + offset * itl
            await _sleep_until(due)
            t = time.perf_counter_ns()  # the write starts: what the client can see from now on
            if len(group) == 1:
                await self.send(ctx, lines[group[0]])
            else:  # flooding: one HTTP chunk per token, several per socket write
                if not ctx.stream.started:
                    await self.send(ctx, b"")
                ctx.stream.write_chunks([lines[s] for s in group])
                await ctx.stream.drain()
            if ctx.t_first_send is None:
                ctx.t_first_send = t
            ctx.t_last_send = t
            ctx.sent_tokens += sum(group)
            if beh.log_sends:
                log.sends.append([t, sum(group)])
                log.scheduled.append(due)
            i += len(group)
            offset += sum(sizes[i : i + 1])  # the next chunk is due its own tokens x ITL later
            if not itl:
                await asyncio.sleep(0)  # flooding: every stream gets its turn
        await self.send(ctx, self.final(ctx))
        ctx.stream.end()
        log.outcome = "done"

    async def _raw(self, ctx: Ctx, data: bytes) -> None:
        step = ctx.beh.raw_chunk or len(data) or 1
        await self.send(ctx, b"")
        for i in range(0, len(data), step):
            await self.write(ctx, data[i : i + step])
            if ctx.beh.raw_chunk:
                await asyncio.sleep(ctx.beh.trickle_ms / 1000)
        ctx.stream.end()
        ctx.log.outcome = "done"


class Status(Fault):
    async def before_headers(self, ctx: Ctx) -> Response | None:
        b = ctx.beh
        headers = {"Retry-After": "1"} if b.status == 429 else {}
        if not b.error_body:
            return Response(b.status, b"", "text/plain", headers)
        return Response.json(ctx.wire.error_body(b.status), b.status, headers)


class CloseBeforeHeaders(Fault):
    async def before_headers(self, ctx: Ctx) -> Response | None:
        ctx.stream.close()
        return NOTHING


class HangBeforeHeaders(Fault):
    async def before_headers(self, ctx: Ctx) -> Response | None:
        await asyncio.sleep(ctx.beh.hold_s)
        ctx.stream.close()
        return NOTHING


class HangMidStream(Fault):
    async def before_chunk(self, ctx: Ctx, index: int) -> bool:
        if index != ctx.beh.fault_after:
            return False
        await asyncio.sleep(ctx.beh.hold_s)
        ctx.stream.close()
        return True


class Cut(Fault):
    async def before_chunk(self, ctx: Ctx, index: int) -> bool:
        if index != ctx.beh.fault_after:
            return False
        await self.send(ctx, b"")  # the headers out (if not yet), so the cut is mid-body
        ctx.stream.close()
        return True


class Malformed(Fault):
    async def before_chunk(self, ctx: Ctx, index: int) -> bool:
        if index == ctx.beh.fault_after:
            await self.send(ctx, ctx.wire.malformed())
        return False


class HugeLine(Fault):
    """A 10 MB line (one chunk of well-formed JSON whose text is 10 MB), then the rest."""

    async def before_chunk(self, ctx: Ctx, index: int) -> bool:
        if index == ctx.beh.fault_after:
            await self.send(ctx, ctx.wire.chunk("x" * HUGE_LINE_BYTES))
        return False


class InvalidUtf8(Fault):
    """``fault_after`` chunks, then bytes that are not UTF-8 (and a line end), then the rest."""

    async def before_chunk(self, ctx: Ctx, index: int) -> bool:
        if index == ctx.beh.fault_after:
            await self.send(ctx, b"\xff\xfe\xfd\n\n")
        return False


class UnknownModel(Fault):
    """404 as the real server words an unknown model (a model deleted or unloaded mid-run)."""

    async def before_headers(self, ctx: Ctx) -> Response | None:
        return Response.json(ctx.wire.not_found_body(ctx.wire.model), 404)


class ErrorLine(Fault):
    async def before_chunk(self, ctx: Ctx, index: int) -> bool:
        if index != ctx.beh.fault_after:
            return False
        await self.send(ctx, ctx.wire.error_line("fake runner crashed"))
        ctx.stream.end()
        return True


class Split(Fault):
    async def write(self, ctx: Ctx, data: bytes) -> None:
        if len(data) < 2:
            await super().write(ctx, data)
            return
        cut = next((i + 1 for i, b in enumerate(data) if b >= 0x80), len(data) // 2)
        await super().write(ctx, data[:cut])
        await asyncio.sleep(ctx.beh.trickle_ms / 1000)
        await super().write(ctx, data[cut:])


class Trickle(Fault):
    async def write(self, ctx: Ctx, data: bytes) -> None:
        for i in range(len(data)):
            await super().write(ctx, data[i : i + 1])
            await asyncio.sleep(ctx.beh.trickle_ms / 1000)


class WrongContentType(Fault):
    async def before_headers(self, ctx: Ctx) -> Response | None:
        return Response(
            200, b"<html><body>Sign in to continue</body></html>", "text/html; charset=utf-8"
        )


class IgnoreStream(Fault):
    async def run(self, ctx: Ctx) -> None:
        ctx.wire.streaming = False  # one JSON document, as a server without streaming answers
        await super().run(ctx)


class NoTimings(Fault):
    def final(self, ctx: Ctx) -> bytes:
        return ctx.wire.final(ctx, timings=False)


class RejectStreamOptions(Fault):
    async def before_headers(self, ctx: Ctx) -> Response | None:
        if "stream_options" not in ctx.body:
            return None
        msg = "Unrecognized request argument supplied: stream_options"
        return Response.json({"error": {"message": msg, "type": "invalid_request_error"}}, 400)


FAULTS: dict[str, type[Fault]] = {
    "status": Status,
    "close_before_headers": CloseBeforeHeaders,
    "hang_before_headers": HangBeforeHeaders,
    "hang_mid_stream": HangMidStream,
    "cut": Cut,
    "malformed": Malformed,
    "error_line": ErrorLine,
    "huge_line": HugeLine,
    "invalid_utf8": InvalidUtf8,
    "unknown_model": UnknownModel,
    "split": Split,
    "trickle": Trickle,
    "wrong_content_type": WrongContentType,
    "no_timings": NoTimings,
    "ignore_stream": IgnoreStream,
    "reject_stream_options": RejectStreamOptions,
}
