"""HTTP/1.1 for the proxy on asyncio protocols and httptools (llhttp, the parser Node.js uses):
requests parsed, the upstream's bytes relayed exactly as they arrive.

Why not aiohttp's server and client, which the proxy first used: relaying one request cost
0.8 ms of CPU on this 2-core machine, 0.5 ms of it aiohttp's own (an empty aiohttp relay; an
empty uvicorn one, 0.48 ms), against 0.24 ms for a relay on protocols, which also adds one
less loop iteration per hop (bench/proxy.py). The relay is also exact: the upstream's status
line, headers and body framing (its chunks as it cut them) reach the client byte for byte, and
nothing is added (no Date, no Server). The proxy owns only the client's connection: requests go
upstream with the upstream's Host, without ``Expect`` (the body is already read), and a chunked
request body with a Content-Length instead.

This module is the client's side: one request at a time per connection (pipelined ones wait
their turn); the handler gets the parsed ``Request`` and answers through the connection
(``write``: relayed bytes, or a whole answer of the proxy's own from ``response_bytes``). A
client that hangs up cancels its handler at once, so the upstream request is closed while the
server is still generating. The upstream's side is recorder/proxy_upstream.py.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import cast

import httptools

from llmtop.recorder.proxy_upstream import nodelay

MAX_HEAD = 64 * 1024
"""Largest request head (line and headers); a larger one gets 431."""
MAX_PIPELINED = 8
"""Requests parsed ahead of the one being answered before the connection stops being read."""
LINGER_S = 2.0
"""After refusing a body: how long what the client still sends is read and dropped."""


class Request:
    """One parsed client request (headers as sent: names spelled as they came, in order)."""

    __slots__ = ("body", "chunked", "headers", "keep_alive", "method", "target", "version")

    def __init__(self) -> None:
        self.method = "GET"
        self.target = b""
        self.version = "1.1"
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.keep_alive = True
        self.chunked = False

    @property
    def path(self) -> str:
        return self.target.partition(b"?")[0].decode("latin-1")

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


Handler = Callable[[Request, "ClientConnection"], Awaitable[bool]]
"""Answers one request; returns whether the connection may serve another."""


def response_bytes(status: int, body: bytes, content_type: str, *, close: bool) -> bytes:
    """A whole response of the proxy's own (errors, /llmtop/ endpoints)."""
    reason = HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode("latin-1") + body


class ClientConnection(asyncio.Protocol):
    """One client's connection: parses its requests and hands them to ``handler`` in turn."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_body: int,
        idle_timeout_s: float,
        refuse: Callable[[Request, str], bytes],
        connections: set[ClientConnection],
    ) -> None:
        self._handler = handler
        self._max_body = max_body
        self._idle_s = idle_timeout_s
        self._refuse = refuse
        self._connections = connections
        self._parser = httptools.HttpRequestParser(self)
        self._req = Request()
        self._url: list[bytes] = []
        self._head_size = 0
        self._body: list[bytes] = []
        self._body_size = 0
        self._queue: deque[Request] = deque()
        self._refusing = False
        self.transport: asyncio.Transport | None = None
        self.client = ""
        self.task: asyncio.Task[None] | None = None
        self.closed = False
        self.write_paused = False
        self.on_pause: Callable[[bool], None] | None = None
        """Told when the client stops (``True``) or starts again (``False``) taking bytes."""
        self._timer: asyncio.TimerHandle | None = None

    # --- the connection ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
        nodelay(transport)
        peer = transport.get_extra_info("peername")
        if peer:
            host, port = peer[0], peer[1]
            self.client = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._connections.add(self)
        self._arm()

    def _arm(self) -> None:
        """A complete request must arrive within the idle timeout (slow and silent clients)."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(self._idle_s, self._expire)

    def _expire(self) -> None:
        if self.task is None and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        if self.task is not None:
            self.task.cancel()  # the client is gone: stop its upstream request now

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.on_pause is not None:
            self.on_pause(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.on_pause is not None:
            self.on_pause(False)

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        """Close after what was written (a cut the client must see as a cut)."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- parsing ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._refusing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._reject(501, "llmtop proxy: protocol upgrades (websockets) are not relayed")
        except httptools.HttpParserError as e:
            if not self._refusing:  # (a refusal raised inside a callback already answered)
                self._reject(400, f"llmtop proxy: not a valid HTTP request ({e})")

    def _reject(self, status: int, message: str) -> None:
        self._refusing = True
        body = (message + "\n").encode()
        if self.task is None:
            self.write(response_bytes(status, body, "text/plain; charset=utf-8", close=True))
            self.close()
        else:  # answer the request in progress first, then close
            self._queue.clear()

    def on_message_begin(self) -> None:
        self._req = Request()
        self._url.clear()
        self._body.clear()
        self._head_size = self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url.append(url)
        self._head_size += len(url)
        if self._head_size > MAX_HEAD:
            raise httptools.HttpParserError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._req.headers.append((name, value))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > MAX_HEAD:
            self._reject(431, "llmtop proxy: request headers too large")
            raise httptools.HttpParserError("headers too large")

    def on_headers_complete(self) -> None:
        req, p = self._req, self._parser
        req.method = p.get_method().decode("latin-1")
        req.version = p.get_http_version()
        req.keep_alive = p.should_keep_alive()
        req.target = b"".join(self._url)
        te = req.header(b"transfer-encoding")
        req.chunked = te is not None and b"chunked" in te.lower()
        size = req.header(b"content-length")
        if size is not None and size.strip().isdigit() and int(size) > self._max_body:
            self._refuse_body(req, f"{int(size):,} bytes")
            return
        if (req.header(b"expect") or b"").lower() == b"100-continue" and self.task is None:
            self.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self._refusing:
            return
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._refuse_body(self._req, "more than that")
            return
        self._body.append(body)

    def _refuse_body(self, req: Request, size: str) -> None:
        """413 at once, the body never kept: the answer, then the end of our side; what the
        client still sends is read and dropped for ``LINGER_S`` so that closing does not reset
        the connection under the answer before the client has read it."""
        self._refusing = True
        self._queue.clear()
        if self.task is None and self.transport is not None:
            self.write(self._refuse(req, size))
            if self.transport.can_write_eof():
                self.transport.write_eof()
            asyncio.get_running_loop().call_later(LINGER_S, self.close)

    def eof_received(self) -> bool:
        return False  # the client ended its side: close ours (after what is being written)

    def on_message_complete(self) -> None:
        if self._refusing:
            return
        req = self._req
        req.body = b"".join(self._body)
        self._queue.append(req)
        if len(self._queue) >= MAX_PIPELINED and self.transport is not None:
            self.transport.pause_reading()
        if self.task is None:
            self._next()

    # --- answering --------------------------------------------------------------------------

    def _next(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        req = self._queue.popleft()
        self.task = asyncio.get_running_loop().create_task(self._answer(req))

    async def _answer(self, req: Request) -> None:
        keep = False
        try:
            keep = await self._handler(req, self)
        except asyncio.CancelledError:
            return  # the client went away (or the proxy stops): nothing more to send
        finally:
            self.task = None
            self.on_pause = None
        if self.closed:
            return
        if not (keep and req.keep_alive) or self._refusing:
            self.close()
            return
        if self.transport is not None and self.transport.is_reading() is False:
            self.transport.resume_reading()
        if self._queue:
            self._next()
        else:
            self._arm()
