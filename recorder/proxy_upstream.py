"""The proxy's upstream side: kept-alive connections to the model server, each carrying one
``Exchange`` at a time, whose answer is handed to the client byte for byte as it arrives and, for
timing, decoded (httptools' response parser) into a ``BodyReader``. Backpressure both ways: a
client that stops reading, or a timing reader that falls behind, stops the upstream's reads.
See recorder/proxy_http.py for why protocols and httptools rather than aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import httptools

BODY_HIGH_WATER = 1 << 20
"""Decoded body bytes a timing reader may hold before the upstream stops being read."""


def nodelay(transport: asyncio.BaseTransport) -> None:
    """No Nagle delay: a token written is a token sent."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class Exchange:
    """One request sent upstream and its answer coming back.

    ``forward`` gets every byte of the answer as it arrives (the client's ``write``);
    ``on_body`` the decoded body (for timing), ``None`` when nobody times it.
    """

    __slots__ = (
        "close_delimited", "conn", "cut", "done", "forward", "head", "headers", "headers_done",
        "informational", "is_head", "keep_alive", "on_body", "on_end", "on_written", "reason",
        "retry", "status",
    )  # fmt: skip

    def __init__(
        self,
        head: bytes,
        *,
        is_head: bool,
        forward: Callable[[bytes], None],
        on_body: Callable[[bytes], None] | None = None,
        on_end: Callable[[Exception | None], None] | None = None,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.head = head
        self.is_head = is_head
        self.forward = forward
        self.on_body = on_body
        self.on_end = on_end
        self.on_written = on_written
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.close_delimited = False
        self.informational = False
        self.cut = False
        self.retry = False
        """A reused connection closed before answering: send again on a new one."""
        self.conn: UpstreamConnection | None = None
        self.headers_done: asyncio.Future[None] = loop.create_future()
        self.done: asyncio.Future[None] = loop.create_future()

    def header(self, name: bytes) -> bytes | None:
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def finish(self, cut: bool) -> None:
        if self.done.done():
            return
        self.cut = cut
        if not self.headers_done.done():
            self.headers_done.set_result(None)
        if self.on_end is not None:
            self.on_end(ConnectionResetError("cut") if cut else None)
        self.done.set_result(None)

    def pause(self, paused: bool) -> None:
        """The client stopped (or started again) taking bytes: stop (start) reading upstream."""
        if self.conn is not None:
            self.conn.hold("client", paused)


class UpstreamConnection(asyncio.Protocol):
    """One kept-alive connection to the upstream; answers one ``Exchange`` at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.ex: Exchange | None = None
        self.answered = False
        """Whether any byte of an answer came on this connection (a reused one that closes
        before answering is retried once, as ``record`` does)."""
        self.reused = False
        self._parser: Any = None
        self._holds: set[str] = set()
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        nodelay(transport)

    def begin(self, ex: Exchange, body: bytes, *, reused: bool) -> None:
        assert self.transport is not None
        if self._idle is not None:
            self._idle.cancel()
        self.ex, ex.conn = ex, self
        self.answered = False
        self.reused = reused
        self._parser = httptools.HttpResponseParser(self)
        self.transport.write(ex.head + body if len(body) < 65536 else ex.head)
        if len(body) >= 65536:
            self.transport.write(body)
        if ex.on_written is not None:  # t0: the request is on the socket (as record's)
            ex.on_written(time.perf_counter_ns())

    def hold(self, reason: str, on: bool) -> None:
        """Stop reading while any reason holds (a slow client, a timing reader behind)."""
        if self.transport is None:
            return
        was = bool(self._holds)
        if on:
            self._holds.add(reason)
        else:
            self._holds.discard(reason)
        if bool(self._holds) != was:
            if self._holds:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        ex = self.ex
        if ex is None:  # bytes nobody asked for: the connection is not fit for reuse
            if self.transport is not None:
                self.transport.close()
            return
        self.answered = True
        ex.forward(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self.ex = None
            ex.finish(cut=True)  # the client got the same bytes; the answer ends here
            if self.transport is not None:
                self.transport.close()

    def on_status(self, reason: bytes) -> None:
        assert self.ex is not None
        self.ex.reason = reason.decode("latin-1")

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.ex is not None
        self.ex.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.ex
        assert ex is not None
        ex.status = self._parser.get_status_code()
        if 100 <= ex.status < 200:  # 1xx: another head follows
            ex.informational = True
            return
        ex.keep_alive = self._parser.should_keep_alive()
        framed = ex.header(b"content-length") is not None or ex.header(b"transfer-encoding")
        ex.close_delimited = not framed and not ex.is_head and ex.status not in (204, 304)
        if not ex.headers_done.done():
            ex.headers_done.set_result(None)
        if ex.is_head:  # no body follows, whatever the headers say
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is not None and ex.on_body is not None:
            ex.on_body(body)

    def on_message_complete(self) -> None:
        ex = self.ex
        if ex is None:
            return
        if ex.informational:
            ex.informational = False
            ex.headers.clear()
            return
        self.ex = None
        keep = ex.keep_alive and not self._holds
        ex.finish(cut=False)
        if keep:
            self.pool.release(self)
        elif self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.pool.discard(self)
        if self._idle is not None:
            self._idle.cancel()
        ex, self.ex = self.ex, None
        if ex is None:
            return
        if self.reused and not self.answered:  # the server closed it as we reused it
            ex.retry = True
            if not ex.headers_done.done():
                ex.headers_done.set_result(None)
            return
        ex.finish(cut=not (ex.close_delimited and ex.headers_done.done()))

    def expire_after(self, seconds: float) -> None:
        self._idle = asyncio.get_running_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        if self.ex is None and self.transport is not None:
            self.transport.close()


class ConnectFailed(Exception):
    """The upstream could not be reached; ``kind`` is ``connect`` or ``timeout``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class UpstreamPool:
    """Kept-alive connections to one upstream, newest first."""

    def __init__(
        self, host: str, port: int, *, tls: bool, connect_timeout_s: float, keepalive_s: float
    ) -> None:
        self.host, self.port = host, port
        self._ssl = ssl.create_default_context() if tls else None
        self._timeout = connect_timeout_s
        self._keepalive = keepalive_s
        self._idle: list[UpstreamConnection] = []
        self._all: set[UpstreamConnection] = set()

    async def _connect(self) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._timeout):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self), self.host, self.port, ssl=self._ssl,
                    server_hostname=self.host if self._ssl else None,
                )  # fmt: skip
        except TimeoutError:
            raise ConnectFailed("timeout", f"timed out after {self._timeout:g} s") from None
        except OSError as e:  # asyncio words a refusal "Connect call failed ('h', p)"
            reason = os.strerror(e.errno) if e.errno else str(e) or type(e).__name__
            raise ConnectFailed("connect", reason.lower()) from None
        self._all.add(conn)
        return conn

    async def send(self, ex: Exchange, body: bytes) -> None:
        """Send ``ex`` and wait for the answer's head (or its end): on a kept-alive connection,
        sent again on a new one if that closes before answering, else on a new one.

        Raises:
            ConnectFailed: no connection could be made.
        """
        while self._idle:
            conn = self._idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.begin(ex, body, reused=True)
                await ex.headers_done
                if not ex.retry:
                    return
                ex.retry = False
                ex.headers_done = asyncio.get_running_loop().create_future()
                break
        conn = await self._connect()
        conn.begin(ex, body, reused=False)
        await ex.headers_done

    def release(self, conn: UpstreamConnection) -> None:
        self._idle.append(conn)
        conn.expire_after(self._keepalive)

    def discard(self, conn: UpstreamConnection) -> None:
        self._all.discard(conn)
        with contextlib.suppress(ValueError):
            self._idle.remove(conn)

    def close(self) -> None:
        for conn in list(self._all):
            if conn.transport is not None:
                conn.transport.abort()


class BodyReader:
    """An answer's decoded body for the timing coroutine: pushed by the protocol as it arrives,
    read with ``readany`` (``read_stream``'s read: whatever arrived since the last one, ``b""``
    at the end, ``ConnectionResetError`` when the upstream cut it). Holds the upstream while
    more than ``BODY_HIGH_WATER`` bytes wait to be timed."""

    __slots__ = ("_buf", "_end", "_held", "_hold", "_size", "_waiter")

    def __init__(self, hold: Callable[[bool], None]) -> None:
        self._buf: list[bytes] = []
        self._size = 0
        self._end: Exception | bool | None = False
        self._waiter: asyncio.Future[None] | None = None
        self._hold = hold
        self._held = False

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def feed(self, data: bytes) -> None:
        self._buf.append(data)
        self._size += len(data)
        if self._size > BODY_HIGH_WATER and not self._held:
            self._held = True
            self._hold(True)
        self._wake()

    def end(self, error: Exception | None) -> None:
        self._end = error if error is not None else True
        self._wake()

    async def readany(self) -> bytes:
        while not self._buf:
            if self._end is True:
                return b""
            if isinstance(self._end, Exception):
                raise self._end
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
            self._waiter = None
        data = self._buf[0] if len(self._buf) == 1 else b"".join(self._buf)
        self._buf.clear()
        self._size = 0
        if self._held:
            self._held = False
            self._hold(False)
        return data
