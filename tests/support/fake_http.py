"""A tiny HTTP/1.1 server on asyncio's Protocol, underneath the fake model server.

Hand-written rather than aiohttp.web because the fake server must be cheaper and more exact than
the client it measures: a request is parsed in microseconds, each chunk is one transport write,
and a request's arrival is stamped when its bytes arrive (``data_received``), not when a handler
gets to run, so a burst of 64 requests still keeps its schedule. It also gives the faults
byte-level control: cut a chunked body, close before the headers, split a write.

Not a general server: requests with a Content-Length body (what every client here sends), keep-
alive, one request at a time per connection; responses chunked (``Stream``) or sized (``Response``).

``ConnPolicy`` makes it treat connections as some real servers do: llama.cpp's llama-server says
``Keep-Alive: timeout=5, max=100`` and then closes the connection after every response
(``close_after_response``); others close a connection left idle for a while (``idle_close_ms``).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, urlsplit

MAX_HEAD = 64 * 1024


@dataclass
class ConnPolicy:
    """How the server treats its connections (shared by all of them; may change while it runs)."""

    close_after_response: bool = False
    """Close each connection once its response is out, whatever the headers said."""
    close_on_next_request: bool = False
    """With ``close_after_response``: keep the connection open and silent after the response,
    and close it, unanswered, when the next request arrives on it: the worst case of a server
    that closes after every response, whose close reaches the client only after it wrote again."""
    idle_close_ms: float | None = None
    """Close a connection that has waited this long for its next request after a response (as
    uvicorn's keep-alive timeout does; a new connection's first request is not timed)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra headers on every response (e.g. llama-server's ``Server`` and ``Keep-Alive``)."""
    idle_closed: int = 0
    """Connections closed for idleness so far."""
    connections: int = 0
    """Connections accepted so far."""


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    """Lower-case names."""
    body: bytes
    t_arrival_ns: int
    """When the request's first bytes arrived (``perf_counter_ns``)."""
    peer: tuple[str, int] | None

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Response:
    """A whole response with a Content-Length; ``status=0`` means "send nothing"."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(obj).encode(), "application/json", headers or {})


NOTHING = Response(status=0)


def _head(status: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class Stream:
    """The answer to one request: ``start`` then ``write`` chunks and ``end``, or ``respond``."""

    def __init__(self, conn: _Conn) -> None:
        self._conn = conn
        self._extra = conn.policy.headers
        self._pending_head: bytes | None = None
        self.started = False
        self.ended = False
        self.headers: dict[str, str] = {}
        """Extra response headers (a persona's ``Server:``), sent with either kind of answer."""

    @property
    def closed(self) -> bool:
        return self._conn.closed

    def start(self, status: int = 200, content_type: str = "application/json") -> None:
        """Begin a chunked response; the head goes out with the first write."""
        self.started = True
        self._pending_head = _head(
            status,
            {
                **self._extra,
                **self.headers,
                "Content-Type": content_type,
                "Transfer-Encoding": "chunked",
            },
        )

    def _send(self, data: bytes) -> None:
        if self._conn.closed:
            raise ConnectionResetError("the client closed the connection")
        assert self._conn.transport is not None
        self._conn.transport.write(data)

    def write(self, data: bytes) -> None:
        """One chunk (an empty ``data`` sends only a pending head: it never ends the body)."""
        out = b"%x\r\n%b\r\n" % (len(data), data) if data else b""
        if self._pending_head is not None:
            out, self._pending_head = self._pending_head + out, None
        if out:
            self._send(out)

    def write_chunks(self, pieces: list[bytes]) -> None:
        """Several chunks (one per token, as a real server flushes them) in one socket write."""
        out = b"".join([b"%x\r\n%b\r\n" % (len(p), p) for p in pieces if p])
        if self._pending_head is not None:
            out, self._pending_head = self._pending_head + out, None
        if out:
            self._send(out)

    async def drain(self) -> None:
        """Wait while the client is slower than we write (flow control)."""
        await self._conn.writable()

    def end(self) -> None:
        self.write(b"")
        self._send(b"0\r\n\r\n")
        self.ended = True

    def respond(self, resp: Response) -> None:
        if resp.status == 0:
            return
        headers = {
            **self.headers,
            "Content-Type": resp.content_type,
            "Content-Length": str(len(resp.body)),
            **self._extra,
            **resp.headers,
        }
        self.started = self.ended = True
        self._send(_head(resp.status, headers) + resp.body)

    def close(self) -> None:
        """Close the connection (what was written still goes out first)."""
        if self._conn.transport is not None:
            self._conn.transport.close()


Handler = Callable[[Request, Stream], Awaitable[None]]


class _Conn(asyncio.Protocol):
    """One client connection; a handler task per request, cancelled if the client goes away."""

    def __init__(self, handler: Handler, policy: ConnPolicy) -> None:
        self.handler = handler
        self.policy = policy
        self._idle: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] | None = None
        self.buf = b""
        self.t_arrival = 0
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.closing = False
        self._resumed: asyncio.Event | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1]) if peer else None
        self.policy.connections += 1

    def _wait_idle(self) -> None:
        """Arm the idle timer (when the policy has one): no request within it closes us."""
        ms = self.policy.idle_close_ms
        if ms is not None:
            self._idle = asyncio.get_running_loop().call_later(ms / 1000, self._idle_close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _idle_close(self) -> None:
        if self.task is None and not self.buf and not self.closed and self.transport is not None:
            self.policy.idle_closed += 1
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            self._close()
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if not self.buf:
            self.t_arrival = time.perf_counter_ns()
        self.buf += data
        self._dispatch()

    def _dispatch(self) -> None:
        if self.task is not None or self.closed or self.closing:
            return
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._bad()
            return
        try:
            lines = self.buf[:end].decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            size = int(headers.get("content-length", "0"))
        except ValueError:
            self._bad()
            return
        if len(self.buf) < end + 4 + size:
            return
        body = self.buf[end + 4 : end + 4 + size]
        self.buf = self.buf[end + 4 + size :]
        url = urlsplit(target)
        req = Request(
            method, url.path, dict(parse_qsl(url.query)), headers, body, self.t_arrival, self.peer
        )
        if self.buf:  # pipelined bytes: they arrived with this request
            self.t_arrival = req.t_arrival_ns
        self.task = asyncio.get_running_loop().create_task(self._run(req))

    def _bad(self) -> None:
        if self.transport is not None:
            self.transport.write(_head(400, {"Content-Length": "0", "Connection": "close"}))
            self.transport.close()

    async def _run(self, req: Request) -> None:
        stream = Stream(self)
        try:
            await self.handler(req, stream)
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            traceback.print_exc(file=sys.stderr)
            if not stream.started and not self.closed:
                stream.respond(Response.json({"error": "fake server bug"}, 500))
            elif self.transport is not None:
                self.transport.close()
        finally:
            self.task = None
        if (
            self.closed
            or not stream.ended
            or self.policy.close_after_response
            or req.headers.get("connection", "").lower() == "close"
        ):
            self.closing = True  # a request already buffered, or still to come, is never answered
            if not (self.policy.close_on_next_request and stream.ended) or self.buf:
                self._close()
            return
        if not self.buf:
            self._wait_idle()
        self._dispatch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
        if self.task is not None:
            self.task.cancel()  # like aiohttp's handler_cancellation: the handler learns at once
        if self._resumed is not None:
            self._resumed.set()

    def pause_writing(self) -> None:
        self._resumed = asyncio.Event()

    def resume_writing(self) -> None:
        if self._resumed is not None:
            self._resumed.set()
            self._resumed = None

    async def writable(self) -> None:
        if self._resumed is not None:
            await self._resumed.wait()


async def serve(
    handler: Handler, host: str = "127.0.0.1", port: int = 0, policy: ConnPolicy | None = None
) -> asyncio.Server:
    """Listen on ``host:port`` (0: a free port); each request goes to ``handler``."""
    loop = asyncio.get_running_loop()
    pol = policy if policy is not None else ConnPolicy()
    return await loop.create_server(lambda: _Conn(handler, pol), host, port, reuse_address=True)
