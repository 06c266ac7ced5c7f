"""The proxy's HTTP side: every request relayed to the upstream, every answer back unchanged,
generations timed on the way (recorder/proxy_http.py does the HTTP; see there why not aiohttp).

What the client gets is exactly what the upstream sent: status line, headers (as spelled, in
order, duplicates kept, none added), body bytes and their chunking. What the upstream gets is
the client's request with its own Host, no ``Expect``, a chunked body sent with a length, and,
for a timed generation only, ``Accept-Encoding: identity`` (a compressed token stream cannot
be timed, and a compressing server would hold tokens back). The proxy answers itself only when
there is no answer to relay: 502 (upstream unreachable or closed before answering), 504
(connect timeout), 413 (body over the limit), in the client API's error shape.

``/llmtop/...`` is the proxy's own (``/llmtop/metrics``, ``/llmtop/health``); every other path
belongs to the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from llmtop.collectors.http import KEEPALIVE_S
from llmtop.collectors.proxy_timing import AnswerTimer, ObservedState, endpoint, error_body, observe
from llmtop.core.requests import Emit
from llmtop.recorder.proxy_http import ClientConnection, Request, response_bytes
from llmtop.recorder.proxy_upstream import ConnectFailed, Exchange, UpstreamPool

LOCAL_PREFIX = "/llmtop/"
LocalHandler = Callable[[], tuple[int, str, bytes]]
"""A proxy's own endpoint: ``(status, content type, body)``."""


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    """How much the proxy takes from a client."""

    max_body_bytes: int = 64 << 20
    """Largest request body (images in a chat can be megabytes); a larger one gets 413 before
    it is read."""
    idle_timeout_s: float = 300.0
    """How long a connection may take to send a complete request (from when it opens, and
    between requests): silent and slow (slowloris) connections are closed after it."""
    connect_timeout_s: float = 10.0
    """Connecting to the upstream; nothing else is limited (a model may think for minutes, and
    the client decides how long it waits)."""


def _upstream_request(req: Request, host: bytes, prefix: bytes, identity: bool) -> bytes:
    """The head sent upstream: the client's, with the upstream's Host (see the docstring)."""
    lines = [b"%s %s%s HTTP/%s" % (req.method.encode(), prefix, req.target, req.version.encode())]
    for name, value in req.headers:
        low = name.lower()
        if low == b"host":
            value = host
        elif (
            low == b"expect"
            or (identity and low == b"accept-encoding")
            or (req.chunked and low == b"transfer-encoding")
        ):
            continue
        lines.append(name + b": " + value)
    if req.header(b"host") is None:
        lines.append(b"Host: " + host)
    if req.chunked:
        lines.append(b"Content-Length: %d" % len(req.body))
    if identity:
        lines.append(b"Accept-Encoding: identity")
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _Timing:
    """One generation's timing. What the request asks (its JSON body: model, prompt, settings)
    is read once the request is on the upstream's socket, not before: reading it takes longer
    than relaying it, and would otherwise be added to every TTFT the client sees."""

    __slots__ = ("conn", "ex", "req", "server", "st", "t_begin_ns")

    def __init__(self, server: ProxyServer, req: Request, conn: ClientConnection) -> None:
        self.t_begin_ns = time.perf_counter_ns()
        self.server = server
        self.req = req
        self.conn = conn
        self.ex: Exchange | None = None
        self.st: ObservedState | None = None

    def state(self) -> ObservedState:
        """The request's state (made at its first use), timing the exchange's answer."""
        st = self.st
        if st is None:
            server, req = self.server, self.req
            obs = observe(req.method, req.path, req.body, store_prompts=server.store_prompts)
            assert obs is not None  # (a generation's path: see ProxyServer.handle)
            st = self.st = ObservedState(server.run_id, next(server._ids), obs, self.conn.client,
                                         server.emit)  # fmt: skip
            st.t_begin_ns = st.last_ns = self.t_begin_ns  # (a failure to connect dates from here)
            if self.ex is not None:
                self.ex.timer = AnswerTimer(st)
        return st

    def written(self, t_ns: int) -> None:
        """The request went onto the upstream's socket at ``t_ns`` (t0, as ``record``'s)."""
        self.state().written(t_ns)


class ProxyServer:
    """Relays requests to ``upstream``; emits the events of each generation it times.

    Args:
        upstream: the upstream's origin (``http://host:port``, optionally a path prefix).
        run_id: the observed run every event belongs to.
        emit: where events go (the run's writer and metrics).
        local: the proxy's own endpoints, by path (``/llmtop/metrics``).
        timing_allowed: asked before each generation; ``False`` relays it untimed (the run's
            disk is behind).
    """

    def __init__(
        self,
        upstream: str,
        *,
        run_id: int,
        emit: Emit,
        store_prompts: bool = False,
        limits: ProxyLimits | None = None,
        local: dict[str, LocalHandler] | None = None,
        timing_allowed: Callable[[], bool] | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream = upstream
        self.run_id = run_id
        self.emit = emit
        self.store_prompts = store_prompts
        self.limits = limits or ProxyLimits()
        self.local = local or {}
        self.timing_allowed = timing_allowed
        self.stopping = False
        self.in_flight = 0
        """Requests being relayed now."""
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        self._host = (parts.netloc.rpartition("@")[2]).encode("idna")
        self._prefix = parts.path.rstrip("/").encode()
        self._pool = UpstreamPool(
            parts.hostname or "127.0.0.1", port, tls=tls,
            connect_timeout_s=self.limits.connect_timeout_s, keepalive_s=KEEPALIVE_S,
        )  # fmt: skip
        self._ids = itertools.count(1)
        self._connections: set[ClientConnection] = set()
        self._listener: asyncio.Server | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Bind ``host:port`` (0: a free port) without accepting yet; returns the port.

        Raises:
            OSError: the address cannot be bound (in use, not this machine's).
        """
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._protocol, host, port, reuse_address=True, backlog=1024, start_serving=False
        )
        return int(self._listener.sockets[0].getsockname()[1])

    def _protocol(self) -> ClientConnection:
        return ClientConnection(
            self.handle, max_body=self.limits.max_body_bytes,
            idle_timeout_s=self.limits.idle_timeout_s, refuse=self._refuse_size,
            connections=self._connections,
        )  # fmt: skip

    async def serve(self) -> None:
        """Start accepting connections (after ``start``)."""
        assert self._listener is not None
        await self._listener.start_serving()

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop listening, let requests in flight end for up to ``grace_s``, cancel the rest."""
        self.stopping = True
        if self._listener is not None:
            self._listener.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                await self._idle.wait()
        for conn in list(self._connections):
            conn.abort()
        self._pool.close()
        await asyncio.sleep(0)  # let the cancelled handlers record their ends

    # --- one request -----------------------------------------------------------------------

    def _refuse_size(self, req: Request, size: str) -> bytes:
        message = (
            f"llmtop proxy: the request body is too large: {size}, the limit is "
            f"{self.limits.max_body_bytes:,} bytes (llmtop proxy --max-body-bytes)"
        )
        return response_bytes(413, error_body(req.path, 413, message), "application/json",
                              close=True)  # fmt: skip

    async def handle(self, req: Request, conn: ClientConnection) -> bool:
        """Answer ``req``; returns whether ``conn`` may serve another request."""
        path = req.path
        if path.startswith(LOCAL_PREFIX):
            local = self.local.get(path.rstrip("/"))
            if local is None:
                body = f"llmtop proxy: no {path} here\n".encode()
                conn.write(response_bytes(404, body, "text/plain; charset=utf-8", close=False))
            else:
                status, ctype, body = local()
                conn.write(response_bytes(status, body, ctype, close=False))
            return True
        timing = None
        if endpoint(req.method, path) is not None and (
            self.timing_allowed is None or self.timing_allowed()
        ):
            timing = _Timing(self, req, conn)
        self.in_flight += 1
        self._idle.clear()
        try:
            return await self._relay(req, conn, timing)
        except asyncio.CancelledError:
            if timing is not None:
                st = timing.state()
                why = "the proxy stopped" if self.stopping else "the client closed the connection"
                st.fail("cancelled", f"{why} after {st.chunks} chunks")
            raise
        finally:
            if timing is not None:  # (a cycle: refcounting frees the request's objects now,
                timing.ex = None  # not a collector pass ms long on the relay's thread)
            self.in_flight -= 1
            if not self.in_flight:
                self._idle.set()

    async def _relay(self, req: Request, conn: ClientConnection, timing: _Timing | None) -> bool:
        head = _upstream_request(req, self._host, self._prefix, identity=timing is not None)
        ex = Exchange(head, is_head=req.method == "HEAD", forward=conn.write)
        if timing is not None:  # timed in the upstream's protocol callback, as the bytes arrive
            timing.ex, ex.on_written = ex, timing.written
        conn.on_pause = ex.pause
        try:
            try:
                await self._pool.send(ex, req.body)
            except ConnectFailed as e:
                return self._unreachable(req, conn, timing, e)
            if conn.write_paused:
                ex.pause(True)
            if ex.cut and not ex.status:  # closed before any answer: nothing was relayed
                message = f"llmtop proxy: the upstream {self.upstream} closed the connection before answering"  # fmt: skip
                if timing is not None:
                    timing.state().fail("protocol", message)
                conn.write(response_bytes(502, error_body(req.path, 502, message),
                                          "application/json", close=False))  # fmt: skip
                return True
            await ex.done
        except BaseException:
            if ex.conn is not None and ex.conn.transport is not None and not ex.ended:
                ex.conn.transport.abort()  # closes the upstream request: the server stops
            raise
        if ex.cut:
            conn.close()  # the client sees the body end early, as we did
            return False
        return ex.keep_alive and not ex.close_delimited

    def _unreachable(
        self, req: Request, conn: ClientConnection, timing: _Timing | None, e: ConnectFailed
    ) -> bool:
        if e.kind == "timeout":
            status = 504
            message = f"llmtop proxy: connecting to the upstream {self.upstream} {e}"
        else:
            status = 502
            message = f"llmtop proxy: cannot connect to the upstream {self.upstream}: {e}"
        if timing is not None:
            timing.state().fail("timeout" if e.kind == "timeout" else "connect", message)
        conn.write(response_bytes(status, error_body(req.path, status, message),
                                  "application/json", close=False))  # fmt: skip
        return True


def listen_url(host: str, port: int) -> str:
    """``http://host:port`` with IPv6 hosts bracketed."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False
