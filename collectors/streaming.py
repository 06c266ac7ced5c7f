"""One streamed request, from the POST to its last event: per-request state, the watchdog, the
read loop. Shared by the Ollama (NDJSON) and OpenAI (SSE) backends, which bring a parser.

How chunks are timestamped: one stamp per socket read, when the loop learned its bytes had
arrived (core/arrival.py; ``perf_counter_ns()`` at the resume on loops that cannot say); every
line in that read arrived together and shares it. A read is decoded once (incremental UTF-8, so
a character split across reads is fine) and split into lines; per line there is only the JSON
parse and the event.

Timeouts: a watchdog timer per request, re-armed only when it fires, checks the time of the last
read that completed a line; so the per-chunk cost of a sliding timeout is one attribute store.
Phase one (until the first content chunk) allows ``first_token_s``, then ``between_chunks_s`` of
silence, and ``total_s`` overall. A timeout cancels the read; it is reported as
``RequestFailed(timeout)`` and told apart from a cancellation by the caller, which is reported as
``RequestFailed(cancelled)`` and re-raised.
"""

from __future__ import annotations

import asyncio
import codecs
import json
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from yarl import URL

from llmtop.collectors.http import (
    HttpClient,
    SendTrace,
    connect_reason,
    error_from_body,
    one_line,
    os_error_text,
)
from llmtop.core.arrival import arrival_clock
from llmtop.core.events import (
    ErrorKind,
    RequestFailed,
    RequestFinished,
    RequestStarted,
    ServerTimings,
)
from llmtop.core.requests import Emit, GenerationRequest, Timeouts

DRAIN_S = 2.0
"""After the final chunk, how long to wait for the end of the body so the connection can be reused."""
MAX_ERROR_BODY = 8192
MAX_LINE_CHARS = 1 << 20
"""The longest line a stream may send (1 Mi characters; a token's line is ~100-300). A longer one
fails the request as a protocol error instead of growing a buffer without bound: a server that
sends no line end at all would otherwise fill memory at the speed of the network."""


class StreamError(Exception):
    """A request-level failure found while streaming; becomes exactly one ``RequestFailed``."""

    def __init__(self, kind: ErrorKind, message: str, http_status: int | None = None) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind
        self.message = message
        self.http_status = http_status


# --- JSON ----------------------------------------------------------------------------------------


def loads_json(text: str) -> Any:
    """One stream line's JSON: orjson, else (what orjson refuses) the standard library.

    Why: parsing is most of a token's cost. orjson reads an OpenAI chunk in 0.76 us where
    ``json.loads`` takes 1.9 us (bench/collector.py's payload, this machine). It is stricter, so
    whatever it refuses (NaN, integers beyond 64 bits, lone surrogates, nesting past 1,024) is
    read again by ``json``, which then decides exactly as before: the two read the same streams
    the same way (tests/faults/test_faults_fuzz.py), errors included (``ValueError``,
    ``RecursionError``).
    """
    try:
        return _orjson_loads(text)
    except _OrjsonError:
        return json.loads(text)


_orjson_loads = orjson.loads
_OrjsonError = orjson.JSONDecodeError


# --- what a server reports -----------------------------------------------------------------

MAX_REPORTED_TOKENS = 1 << 24
"""A token count a server reports is believed up to this (16.7 M, beyond any model's context);
a larger one would make ITL samples of absurd size downstream, so it counts as not reported."""
MAX_REPORTED_NS = 1 << 62
"""Durations a server reports are believed up to ~146 years (SQLite integers stop at 2**63)."""


def reported_count(v: object) -> int | None:
    """A token count from the server: a non-negative int within reason, else ``None``."""
    return v if type(v) is int and 0 <= v <= MAX_REPORTED_TOKENS else None


def reported_ns(v: object) -> int | None:
    """A duration in ns from the server: a non-negative int within reason, else ``None``."""
    return v if type(v) is int and 0 <= v <= MAX_REPORTED_NS else None


def reported_ms_as_ns(v: object) -> int | None:
    """A duration in ms (a JSON number, finite) as ns, within reason, else ``None``."""
    if type(v) not in (int, float):
        return None
    try:
        ns = v * 1e6  # type: ignore[operator]
    except OverflowError:  # an integer beyond any float (JSON allows 400 digits)
        return None
    return int(ns) if math.isfinite(ns) and 0 <= ns <= MAX_REPORTED_NS else None


# --- per-request state ----------------------------------------------------------------------


def request_params(req: GenerationRequest, backend: str) -> dict[str, Any]:
    """What a request's ``params`` column keeps beyond its own columns: the API, the backend,
    and the sampling settings that were set (an unset one is the server's default, not stored)."""
    params: dict[str, Any] = {"api": req.api, "backend": backend}
    for key, value in (("top_p", req.top_p), ("top_k", req.top_k), ("seed", req.seed)):
        if value is not None:
            params[key] = value
    if req.extra:
        params["extra"] = dict(req.extra)
    return params


class RequestState:
    """One request's counters and clock readings; emits its start, finish or failure once each."""

    __slots__ = (
        "chunks", "done", "emit", "last_ns", "params", "req", "request_id", "run_id",
        "started", "t0_ns", "t_begin_ns", "t_first_ns", "t_last_ns", "tokens",
    )  # fmt: skip

    def __init__(self, req: GenerationRequest, emit: Emit, params: dict[str, Any]) -> None:
        self.req = req
        self.emit = emit
        self.params = params
        self.run_id = req.run_id
        self.request_id = req.request_id
        self.t_begin_ns = time.perf_counter_ns()
        self.t0_ns: int | None = None
        self.t_first_ns: int | None = None
        self.t_last_ns: int | None = None
        self.last_ns = self.t_begin_ns
        self.chunks = 0
        self.tokens = 0
        self.started = False
        self.done = False

    def written(self, t_ns: int) -> None:
        """The request went onto the socket at ``t_ns`` (every attempt; the event only once)."""
        self.t0_ns = t_ns
        if not self.started:
            self.started = True
            r = self.req
            self.emit(
                RequestStarted(
                    r.run_id, r.request_id, t_ns, step=r.step, prompt_label=r.prompt_label,
                    prompt_chars=len(r.prompt) + len(r.system or "")
                    + sum(len(text) for _, text in r.messages), concurrency=r.concurrency,
                    temperature=r.temperature, max_tokens=r.max_tokens, warmup=r.warmup,
                    params=self.params, t_scheduled_ns=r.t_scheduled_ns,
                )
            )  # fmt: skip

    def finish(self, t_ns: int, server: ServerTimings) -> None:
        """The final chunk arrived at ``t_ns``: emit ``RequestFinished``."""
        if self.done:
            return
        self.done = True
        t0 = self.t0_ns if self.t0_ns is not None else self.t_begin_ns
        self.emit(
            RequestFinished(
                self.run_id, self.request_id, t_ns, t0, self.t_first_ns, self.t_last_ns,
                self.chunks, self.tokens, server,
            )
        )  # fmt: skip

    def fail(self, kind: ErrorKind, message: str, http_status: int | None = None) -> None:
        """Emit ``RequestFailed`` with what arrived so far (and ``RequestStarted`` if it never went
        out, dated when the attempt began, so every request has both events)."""
        if self.done:
            return
        self.done = True
        if not self.started:
            self.written(self.t_begin_ns)
        self.emit(
            RequestFailed(
                self.run_id, self.request_id, time.perf_counter_ns(), kind, one_line(message, 400),
                t_start_ns=self.t0_ns, t_first_ns=self.t_first_ns, t_last_ns=self.t_last_ns,
                chunks=self.chunks, tokens_counted=self.tokens, http_status=http_status,
            )
        )  # fmt: skip


class StreamParser:
    """Turns a response body into ``TokenReceived`` events and one finish. Subclasses: NDJSON, SSE.

    ``feed`` gets the complete lines of one socket read and their arrival time; it emits one event
    per content chunk and calls ``state.finish`` at the final chunk. Problems raise ``StreamError``.
    """

    expected = "a stream"

    def __init__(self, state: RequestState) -> None:
        self.st = state

    def accepts(self, content_type: str) -> str | None:
        """``"stream"``, ``"document"`` (one JSON answer) or ``None`` (refuse) for a Content-Type."""
        raise NotImplementedError

    def feed(self, lines: list[str], t_ns: int) -> None:
        raise NotImplementedError

    def feed_document(self, text: str, t_ns: int) -> None:
        raise StreamError("protocol", f"expected {self.expected}, got one JSON document")

    def feed_eof(self, t_ns: int) -> None:
        """The body ended without the final chunk."""
        raise StreamError(
            "protocol",
            f"stream ended after {self.st.chunks} chunks without the final chunk (cut short)",
        )


# --- the watchdog -------------------------------------------------------------------------------


class Watchdog:
    """Enforces ``Timeouts`` on one request by cancelling its task; re-armed only when it fires."""

    __slots__ = (
        "_between", "_first", "_handle", "_loop", "_st", "_task", "_tm", "_total", "drain_until",
        "expired",
    )  # fmt: skip

    def __init__(self, st: RequestState, timeouts: Timeouts) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        self._task = task
        self._st = st
        self._tm = timeouts
        self._first = int(timeouts.first_token_s * 1e9)
        self._between = int(timeouts.between_chunks_s * 1e9)
        self._total = None if timeouts.total_s is None else int(timeouts.total_s * 1e9)
        self.drain_until: int | None = None
        self.expired: str | None = None
        """Why it fired; ``"drain"`` when only the wait for the end of a finished body ran out."""
        self._handle = self._arm(self._deadline())

    def _deadline(self) -> int:
        st = self._st
        if self.drain_until is not None:
            return self.drain_until
        d = st.t_begin_ns + self._first if st.t_first_ns is None else st.last_ns + self._between
        return d if self._total is None else min(d, st.t_begin_ns + self._total)

    def _arm(self, deadline_ns: int) -> asyncio.TimerHandle:
        delay = max(0.0, (deadline_ns - time.perf_counter_ns()) / 1e9)
        return self._loop.call_later(delay, self._check)

    def _check(self) -> None:
        deadline = self._deadline()
        now = time.perf_counter_ns()
        if now < deadline:
            self._handle = self._arm(deadline)
            return
        st, tm = self._st, self._tm
        if self.drain_until is not None:
            self.expired = "drain"
        elif self._total is not None and now >= st.t_begin_ns + self._total:
            self.expired = f"request took longer than its total limit of {tm.total_s:g} s"
        elif st.t_first_ns is None:
            self.expired = f"no first token within {tm.first_token_s:g} s"
        else:
            self.expired = f"no data for {tm.between_chunks_s:g} s after {st.chunks} chunks"
        self._task.cancel()

    def drain(self) -> None:
        """The final chunk is in: allow ``DRAIN_S`` more for the end of the body."""
        self.drain_until = time.perf_counter_ns() + int(DRAIN_S * 1e9)

    def stop(self) -> None:
        self._handle.cancel()


# --- one streamed request ------------------------------------------------------------------------

_RETRY = object()
"""The server refused an optional field that is now dropped: send again (counts as an attempt)."""
_STALE = object()
"""A pooled connection was found closed before any answer: send again on a new one (not counted)."""
MAX_ATTEMPTS = 3


async def stream_request(
    client: HttpClient,
    url: URL,
    make_body: Callable[[], bytes],
    state: RequestState,
    make_parser: Callable[[RequestState], StreamParser],
    *,
    retry_on_status: Callable[[int, str], bool] | None = None,
) -> None:
    """POST one request and stream its answer into events; see base.py for the rules.

    Sent again (same request, the first ``RequestStarted`` kept, t0 taken again at the new write)
    when a reused keep-alive connection turns out closed before any answer: once, on a new
    connection, not counted as an attempt (collectors/http.py says why); and when
    ``retry_on_status`` says a 4xx was caused by an optional field it has now dropped, up to
    ``MAX_ATTEMPTS`` attempts, after which the server's own answer is the error.
    """
    wd = Watchdog(state, client.timeouts)
    task = asyncio.current_task()
    assert task is not None
    try:
        attempts = 0
        fresh = False
        while True:
            attempts += 1
            retry = retry_on_status if attempts < MAX_ATTEMPTS else None
            outcome = await _attempt(client, url, make_body(), state, make_parser, wd, retry, fresh)
            if outcome is _STALE:
                client.stale_connection()
                attempts -= 1
                fresh = True  # a new connection is never stale: this happens once at most
            elif outcome is not _RETRY:
                break
    except StreamError as e:
        state.fail(e.kind, e.message, e.http_status)
    except TimeoutError as e:  # an OSError; from the socket layer, not our watchdog
        state.fail("timeout", one_line(e) or "timed out")
    except (aiohttp.ClientError, OSError) as e:
        state.fail("protocol", f"{type(e).__name__}: {one_line(e)}")
    except asyncio.CancelledError:
        if wd.expired is not None and task.uncancel() == 0:
            if wd.expired != "drain":  # a finished request whose body end never came: no event
                state.fail("timeout", wd.expired)
            return
        state.fail("cancelled", f"cancelled after {state.chunks} chunks")
        raise
    finally:
        wd.stop()


def _os_cause(e: BaseException) -> str:
    """What an OS-level failure was, in words: "connection reset by peer", not aiohttp's
    "Can not write request body for URL"."""
    for err in (e, e.__cause__ or e.__context__):
        if isinstance(err, OSError) and (text := os_error_text(err)):
            return text
    return one_line(e) or type(e).__name__


async def _attempt(
    client: HttpClient,
    url: URL,
    body: bytes,
    st: RequestState,
    make_parser: Callable[[RequestState], StreamParser],
    wd: Watchdog,
    retry_on_status: Callable[[int, str], bool] | None,
    fresh: bool,
) -> object:
    sent = SendTrace(st.written)
    path = url.path
    try:
        resp = await client.session_for(fresh).post(url, data=body, trace_request_ctx=sent)
    except aiohttp.ClientConnectorError as e:
        raise StreamError(
            "connect", f"cannot connect to {e.host}:{e.port}: {connect_reason(e)}"
        ) from None
    except aiohttp.ConnectionTimeoutError:
        raise StreamError(
            "timeout", f"connect timed out after {client.timeouts.connect_s:g} s"
        ) from None
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
        if sent.reused and st.chunks == 0:
            return _STALE  # the server had closed this kept-alive connection while it idled
        why = [] if isinstance(e, aiohttp.ServerDisconnectedError) else [_os_cause(e)]
        if fresh:
            why.append("on a new connection too")
        detail = f" ({'; '.join(why)})" if why else ""
        raise StreamError(
            "protocol", f"the server closed the connection before answering{detail}"
        ) from None
    except aiohttp.ClientResponseError as e:
        raise StreamError(
            "protocol", f"invalid HTTP response from POST {path}: {one_line(e.message)}"
        ) from None
    if sent.reused:
        client.reused_ok += 1
    if st.t0_ns is None:  # no trace fired (cannot happen with aiohttp 3.9-3.14): the best we know
        st.written(st.t_begin_ns)
    clean = False
    try:
        if resp.status >= 400:
            raw = await _read_some(resp)
            msg = error_from_body(raw)
            if retry_on_status is not None and retry_on_status(resp.status, msg):
                return _RETRY
            extra = (
                f" (Retry-After: {resp.headers['Retry-After']})"
                if "Retry-After" in resp.headers
                else ""
            )
            raise StreamError(
                "http_status", f"HTTP {resp.status}{_reason(resp)} from POST {path}: {msg}{extra}",
                resp.status,
            )  # fmt: skip
        parser = make_parser(st)
        ctype = resp.headers.get("Content-Type", "").lower()
        mode = parser.accepts(ctype)
        if mode is None:
            raise StreamError(
                "protocol",
                f"unexpected Content-Type {ctype!r} from POST {path} (expected {parser.expected})",
            )
        if mode == "document":
            raw = await resp.read()
            parser.feed_document(raw.decode("utf-8", "replace"), time.perf_counter_ns())
        else:
            await read_stream(resp.content.readany, parser, st)
        if not st.done:
            raise StreamError(
                "protocol", f"the answer ended without its final chunk after {st.chunks} chunks"
            )
        wd.drain()
        while await resp.content.readany():  # read to the end so the connection can be reused
            pass
        clean = True
    except aiohttp.ClientPayloadError:
        if st.done:
            return None  # finished; only the body's end was lost
        raise StreamError(
            "protocol",
            f"stream cut after {st.chunks} chunks: the connection closed before the final chunk",
        ) from None
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as e:
        if st.done:
            return None
        raise StreamError(
            "protocol", f"connection lost after {st.chunks} chunks: {_os_cause(e)}"
        ) from None
    finally:
        if clean:
            resp.release()
        else:
            resp.close()  # never hand a half-read connection back to the pool
    return None


def _reason(resp: aiohttp.ClientResponse) -> str:
    return f" {resp.reason}" if resp.reason else ""


async def _read_some(resp: aiohttp.ClientResponse) -> bytes:
    """Up to ``MAX_ERROR_BODY`` bytes of an error body."""
    out = b""
    try:
        while len(out) < MAX_ERROR_BODY:
            data = await resp.content.readany()
            if not data:
                break
            out += data
    except aiohttp.ClientError:
        pass
    return out[:MAX_ERROR_BODY]


def _lines(text: str) -> tuple[list[str], str]:
    """Complete lines of ``text`` (LF, CRLF or CR ends) and the unfinished rest.

    A CR at the very end is held back with the rest: the LF that may follow it in the next read
    belongs to the same line end.
    """
    if "\r" in text:
        held = "\r" if text[-1] == "\r" else ""
        lines = (text[:-1] if held else text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
        return lines, lines.pop() + held
    lines = text.split("\n")
    return lines, lines.pop()


def _too_long(st: RequestState) -> StreamError:
    """The failure of a line over ``MAX_LINE_CHARS``."""
    return StreamError(
        "protocol",
        f"a line longer than {MAX_LINE_CHARS:,} characters after {st.chunks} chunks: "
        "not a token stream",
    )


def _undecodable(
    e: UnicodeDecodeError, buf: str, parser: StreamParser, st: RequestState, t_ns: int
) -> None:
    """Bytes that are not UTF-8: feed the lines complete before them (their tokens arrived),
    then fail, unless the final chunk was among them. Lines over the bound fail as they would
    have, had the bad bytes come in a later read."""
    lines, rest = _lines(buf + e.object[: e.start].decode("utf-8"))
    long = next((i for i, s in enumerate(lines) if len(s) > MAX_LINE_CHARS), None)
    if long is not None:
        lines = lines[:long]
    if lines:
        parser.feed(lines, t_ns)
    if st.done:
        return
    if long is not None or len(rest.removesuffix("\r")) > MAX_LINE_CHARS:
        raise _too_long(st)
    raise StreamError(
        "protocol", f"the stream is not valid UTF-8 after {st.chunks} chunks: {e.reason}"
    )


class LineFeed:
    """``read_stream``'s work on one read at a time: decode (incremental UTF-8), split into
    lines, hand the complete ones to the parser with the read's time. ``push`` each read as it
    arrives, ``end`` at the end of the body; both raise ``StreamError``. Pushed rather than
    pulled so that the proxy can time an answer inside its protocol callback, with the time the
    bytes came off the socket (collectors/proxy_timing.py)."""

    __slots__ = ("_buf", "_decode", "_feed", "parser", "st")

    def __init__(self, parser: StreamParser, st: RequestState) -> None:
        self.parser = parser
        self.st = st
        self._feed = parser.feed
        self._decode = codecs.getincrementaldecoder("utf-8")().decode
        self._buf = ""

    def push(self, data: bytes, t: int) -> bool:
        """One read, arrived at ``t``; returns whether the request is done (its final chunk,
        or a failure recorded)."""
        st = self.st
        try:
            text = self._decode(data)
        except UnicodeDecodeError as e:
            _undecodable(e, self._buf, self.parser, st, t)
            return True
        if self._buf:
            text = self._buf + text
        if "\r" in text:
            lines, buf = _lines(text)
        else:  # the common case, inline
            lines = text.split("\n")
            buf = lines.pop()
        self._buf = buf
        # (a CR held back at the end of buf is a line end, not part of the line)
        too_long = len(buf) > MAX_LINE_CHARS and len(buf.removesuffix("\r")) > MAX_LINE_CHARS
        if len(text) > MAX_LINE_CHARS:  # rare: a big read; is one of its lines too long?
            long = next((i for i, s in enumerate(lines) if len(s) > MAX_LINE_CHARS), None)
            if long is not None:
                lines, too_long = lines[:long], True
        if lines:
            st.last_ns = t
            self._feed(lines, t)
            if st.done:
                return True
        if too_long:
            raise _too_long(st)
        return False

    def end(self, t: int) -> None:
        """The body ended at ``t``: its unfinished last line, then the parser's end."""
        st = self.st
        try:
            tail = self._decode(b"", True) + self._buf
        except UnicodeDecodeError as e:
            raise StreamError(
                "protocol", f"the stream is not valid UTF-8 after {st.chunks} chunks: {e.reason}"
            ) from None
        if tail:
            lines, _ = _lines(tail + "\n")
            self._feed(lines, t)
        if not st.done:
            self.parser.feed_eof(t)


async def read_stream(
    readany: Callable[[], Awaitable[bytes]], parser: StreamParser, st: RequestState
) -> None:
    """The hot loop: one timestamp per socket read, then ``LineFeed`` (one decode per read,
    the parser per line).

    ``readany`` returns the bytes of one socket read, ``b""`` at the end of the body (aiohttp's
    ``resp.content.readany``); taking it rather than the response lets tests feed byte chunks
    split wherever they like (tests/faults/test_faults_fuzz.py) at no cost per read.
    """
    lines = LineFeed(parser, st)
    push = lines.push
    perf = arrival_clock()
    while True:
        data = await readany()
        t = perf()
        if not data:
            break
        if push(data, t):
            return
    lines.end(t)
