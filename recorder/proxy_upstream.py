"""The proxy's upstream side: kept-alive connections to the model server, each carrying one
``Exchange`` at a time, whose answer is handed to the client byte for byte as it arrives and
then, for timing, decoded (httptools' response parser) and pushed to the exchange's ``AnswerSink``
in the same callback, stamped with the time the read came off the socket: a token's time is
its wire time, not when a task got round to it, and no task wakes per chunk. Backpressure: a
client that stops reading stops the upstream's reads. See recorder/proxy_http.py for why
protocols and httptools rather than aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any, Protocol, cast

import httptools


def nodelay(transport: asyncio.BaseTransport) -> None:
    """No Nagle delay: a token written is a token sent."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class AnswerSink(Protocol):
    """Who times an answer (collectors/proxy_timing.py's ``AnswerTimer``): called from the
    protocol, after the bytes went to the client; must not raise."""

    def head(self, status: int, reason: str, content_type: str) -> None: ...
    def body(self, data: bytes, t_ns: int) -> None: ...
    def end(self, cut: bool, t_ns: int) -> None:
        """The answer ended (``cut``: early); nothing when it never began (no ``head``)."""


class Exchange:
    """One request sent upstream and its answer coming back.

    ``forward`` gets every byte of the answer as it arrives (the client's ``write``); ``timer``
    the answer's head, decoded body and end (for timing), ``None`` when nobody times it.
    """

    __slots__ = (
        "close_delimited", "conn", "cut", "done", "ended", "forward", "head", "headers", "headers_done",
        "informational", "is_head", "keep_alive", "on_written", "reason", "retry", "status",
        "timer",
    )  # fmt: skip

    def __init__(
        self,
        head: bytes,
        *,
        is_head: bool,
        forward: Callable[[bytes], None],
        timer: AnswerSink | None = None,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self.head = head
        self.is_head = is_head
        self.forward = forward
        self.timer = timer
        self.on_written = on_written
        self.status = 0
        self.reason = ""
        self.headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.close_delimited = False
        self.informational = False
        self.cut = False
        self.ended = False
        """The answer ended (complete or cut); ``done`` may also be cancelled by its waiter."""
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

    def finish(self, cut: bool, t_ns: int) -> None:
        if self.ended:
            return
        self.ended = True
        self.cut = cut
        if self.timer is not None:
            self.timer.end(cut, t_ns)
        if not self.headers_done.done():
            self.headers_done.set_result(None)
        if not self.done.done():
            self.done.set_result(None)

    def pause(self, paused: bool) -> None:
        """The client stopped (or started again) taking bytes: stop (start) reading upstream."""
        if self.conn is not None:
            self.conn.hold(paused)


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
        self._t = 0
        """When the read being parsed came off the socket."""
        self._body: list[bytes] = []
        """The decoded body of that read, pushed to the timer at once (one push per read)."""
        self._held = False
        """Reads paused: the client stopped taking the answer's bytes."""
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's is not a subclass)
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

    def hold(self, on: bool) -> None:
        """Stop (start again) reading while the client does not take the bytes."""
        if self.transport is None or on == self._held:
            return
        self._held = on
        if on:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self._t = time.perf_counter_ns()  # before anything else: the tokens' arrival
        ex = self.ex
        if ex is None:  # bytes nobody asked for: the connection is not fit for reuse
            if self.transport is not None:
                self.transport.close()
            return
        self.answered = True
        ex.forward(data)  # the client's bytes first; parsing and timing after
        try:
            self._parser.feed_data(data)
            if self._body:
                self._push_body()
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            self._push_body()
            self.ex = None
            ex.finish(True, self._t)  # the client got the same bytes; the answer ends here
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
        if ex.timer is not None:
            ctype = (ex.header(b"content-type") or b"").decode("latin-1")
            ex.timer.head(ex.status, ex.reason, ctype)
        if not ex.headers_done.done():
            ex.headers_done.set_result(None)
        if ex.is_head:  # no body follows, whatever the headers say
            self.on_message_complete()

    def on_body(self, body: bytes) -> None:
        ex = self.ex
        if ex is not None and ex.timer is not None:
            self._body.append(body)

    def _push_body(self) -> None:
        parts, ex = self._body, self.ex
        if parts and ex is not None and ex.timer is not None:
            ex.timer.body(parts[0] if len(parts) == 1 else b"".join(parts), self._t)
        parts.clear()

    def on_message_complete(self) -> None:
        ex = self.ex
        if ex is None:
            return
        self._push_body()
        if ex.informational:
            ex.informational = False
            ex.headers.clear()
            return
        self.ex = None
        keep = ex.keep_alive and not self._held
        ex.finish(False, self._t)
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
        ex.finish(not (ex.close_delimited and ex.headers_done.done()), time.perf_counter_ns())

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
