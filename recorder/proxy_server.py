"""The proxy's HTTP side: every request relayed to the upstream unchanged, generations timed.

Built on aiohttp's low-level ``web.Server`` (its C HTTP parser, no router) and one aiohttp
client session towards the upstream; see bench/proxy.py for what it costs. What passes through
unchanged: the method, the path and query as the client wrote them, every header but the
hop-by-hop ones (RFC 9110 7.6.1: ``Connection`` and those it names, ``Keep-Alive``,
``Transfer-Encoding``, ``TE``, ``Upgrade``, ``Proxy-*``) and ``Host`` (the upstream's own), the
body, the status and reason, the response headers, and the body bytes in the order they came
(re-chunked per read when the upstream chunks). One change, for timed requests only:
``Accept-Encoding: identity`` goes upstream, since a compressed token stream cannot be timed
and a compressing server would hold tokens back.

``/llmtop/...`` is the proxy's own (``/llmtop/metrics``, ``/llmtop/health``); every other path
belongs to the upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from llmtop.collectors.http import KEEPALIVE_S, SendTrace, connect_reason, one_line
from llmtop.collectors.proxy_timing import (
    ObservedState,
    UpstreamCut,
    error_body,
    observe,
    relay,
    relay_error,
    relay_timed,
)
from llmtop.core.requests import Emit

LOCAL_PREFIX = "/llmtop/"
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
     "te", "trailer", "trailers", "transfer-encoding", "upgrade"}
)  # fmt: skip
NOT_FORWARDED = HOP_BY_HOP | {"host", "content-length", "expect"}
"""Request headers the proxy does not copy upstream: aiohttp writes Host and Content-Length for
the upstream connection, and the body is already read (no 100-continue to wait for)."""


@dataclass(frozen=True, slots=True)
class ProxyLimits:
    """How much the proxy takes from a client."""

    max_body_bytes: int = 64 << 20
    """Largest request body (images in a chat can be megabytes); a larger one gets 413 before
    it is read."""
    idle_timeout_s: float = 300.0
    """A connection that sends nothing for this long is closed (before its first request too)."""
    connect_timeout_s: float = 10.0
    """Connecting to the upstream; nothing else is limited (a model may think for minutes, and
    the client decides how long it waits)."""


def _client_address(request: web.BaseRequest) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if not peer:
        return ""
    host, port = peer[0], peer[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _copy_headers(
    src: CIMultiDictProxy[str], drop: frozenset[str], raw: tuple[tuple[bytes, bytes], ...]
) -> CIMultiDict[str]:
    """The headers of ``raw`` (names spelled as they came: aiohttp respells those it knows in
    ``src``) without ``drop`` and without those the ``Connection`` header names, in order."""
    named = {t.strip().lower() for v in src.getall(hdrs.CONNECTION, ()) for t in v.split(",") if t}
    skip = drop | named
    # aiohttp writes header text as UTF-8: decoding as UTF-8 gives back the same bytes (bytes
    # that are not UTF-8, which no API sends, would become U+FFFD).
    pairs = ((k.decode("utf-8", "replace"), v.decode("utf-8", "replace")) for k, v in raw)
    return CIMultiDict((k, v) for k, v in pairs if k.lower() not in skip)


class _Passthrough(web.StreamResponse):
    """A response that adds no ``Date`` or ``Server`` header the upstream did not send (aiohttp
    adds both when absent); relies on aiohttp 3's ``_prepare_headers`` (tests check the headers
    arrive as the upstream sent them)."""

    _upstream_has: frozenset[str] = frozenset()

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()
        for name in (hdrs.DATE, hdrs.SERVER):
            if name.lower() not in self._upstream_has:
                self._headers.popall(name, None)


async def _on_chunk_sent(session: object, ctx: Any, params: object) -> None:
    sent = ctx.trace_request_ctx
    if isinstance(sent, SendTrace):
        sent.written(time.perf_counter_ns())


async def _on_reuse(session: object, ctx: Any, params: object) -> None:
    sent = ctx.trace_request_ctx
    if isinstance(sent, SendTrace):
        sent.reused = True


def _ignore(t_ns: int) -> None:
    return None


class ProxyServer:
    """Relays requests to ``upstream``; emits the events of each generation it times.

    Args:
        upstream: the upstream's origin (``http://host:port``, no path).
        run_id: the observed run every event belongs to.
        emit: where events go (the run's writer and metrics).
        local: handlers of the proxy's own paths, by path (``/llmtop/metrics``).
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
        local: dict[str, Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]] | None = None,
        timing_allowed: Callable[[], bool] | None = None,
    ) -> None:
        self.upstream = upstream
        self.run_id = run_id
        self.emit = emit
        self.store_prompts = store_prompts
        self.limits = limits or ProxyLimits()
        self.local = local or {}
        self.timing_allowed = timing_allowed
        self.stopping = False
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None
        self._server: web.Server | None = None
        self._listener: asyncio.Server | None = None
        self.in_flight = 0
        """Generations being relayed now."""

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        """Bind ``host:port`` (0: a free port) without accepting yet; returns the port.

        Raises:
            OSError: the address cannot be bound (in use, not this machine's).
        """
        trace = aiohttp.TraceConfig()
        trace.on_request_chunk_sent.append(_on_chunk_sent)
        trace.on_connection_reuseconn.append(_on_reuse)
        trace.freeze()
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=KEEPALIVE_S),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.limits.connect_timeout_s),
            trace_configs=[trace],
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        self._server = web.Server(
            self.handle,
            handler_cancellation=True,  # a client that hangs up cancels its upstream request
            keepalive_timeout=self.limits.idle_timeout_s,
            auto_decompress=False,
            access_log=None,
            lingering_time=0,  # a refused body is not read to its end
        )
        loop = asyncio.get_running_loop()
        self._listener = await loop.create_server(
            self._server, host, port, reuse_address=True, backlog=1024, start_serving=False
        )
        sock = self._listener.sockets[0]
        return int(sock.getsockname()[1])

    async def serve(self) -> None:
        """Start accepting connections (after ``start``)."""
        assert self._listener is not None
        await self._listener.start_serving()

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop listening, let requests in flight end for up to ``grace_s``, cancel the rest."""
        self.stopping = True
        if self._listener is not None:
            self._listener.close()
        if self._server is not None:
            await self._server.shutdown(grace_s)
        if self._session is not None:
            await self._session.close()

    # --- one request -----------------------------------------------------------------------

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        path = request.path
        if path.startswith(LOCAL_PREFIX):
            local = self.local.get(path.rstrip("/"))
            if local is None:
                return web.Response(status=404, text=f"llmtop proxy: no {path} here\n")
            return await local(request)
        body = await self._read_body(request)
        if isinstance(body, web.StreamResponse):
            return body
        obs = observe(request.method, path, body, store_prompts=self.store_prompts)
        if obs is None or (self.timing_allowed is not None and not self.timing_allowed()):
            return await self._forward(request, body, None)
        st = ObservedState(self.run_id, next(self._ids), obs, _client_address(request), self.emit)
        self.in_flight += 1
        try:
            return await self._forward(request, body, st)
        finally:
            self.in_flight -= 1

    async def _read_body(self, request: web.BaseRequest) -> bytes | web.StreamResponse:
        limit = self.limits.max_body_bytes
        size = request.content_length
        if size is not None and size > limit:
            return self._refuse_size(request, f"{size:,} bytes")  # the body is never read
        if request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        parts: list[bytes] = []
        got = 0
        while data := await request.content.readany():
            got += len(data)
            if got > limit:
                return self._refuse_size(request, "more than that")
            parts.append(data)
        return b"".join(parts)

    def _refuse_size(self, request: web.BaseRequest, size: str) -> web.StreamResponse:
        message = (
            f"llmtop proxy: the request body is too large: {size}, the limit is "
            f"{self.limits.max_body_bytes:,} bytes (llmtop proxy --max-body-bytes)"
        )
        refusal = self._error(request.path, 413, message)
        refusal.force_close()  # the rest of the body is not waited for (lingering_time=0)
        return refusal

    @staticmethod
    def _error(path: str, status: int, message: str) -> web.Response:
        return web.Response(
            status=status, body=error_body(path, status, message), content_type="application/json"
        )

    async def _send(
        self, request: web.BaseRequest, body: bytes, st: ObservedState | None
    ) -> aiohttp.ClientResponse | web.Response:
        """The upstream's response, or the error answer when there is none."""
        assert self._session is not None
        headers = _copy_headers(request.headers, NOT_FORWARDED, request.raw_headers)
        if st is not None:
            headers[hdrs.ACCEPT_ENCODING] = "identity"
        url = URL(self.upstream + request.raw_path, encoded=True)
        data = body if request.body_exists else None
        where = f"the upstream {self.upstream}"
        for attempt in range(2):
            sent = SendTrace(st.written if st is not None else _ignore)
            try:
                return await self._session.request(
                    request.method, url, data=data, headers=headers, allow_redirects=False,
                    trace_request_ctx=sent,
                )  # fmt: skip
            except aiohttp.ClientConnectorError as e:
                kind, status = "connect", 502
                message = f"llmtop proxy: cannot connect to {where}: {connect_reason(e)}"
            except aiohttp.ConnectionTimeoutError:
                kind, status = "timeout", 504
                message = (
                    f"llmtop proxy: connecting to {where} timed out after "
                    f"{self.limits.connect_timeout_s:g} s"
                )
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                if sent.reused and attempt == 0:
                    continue  # it closed an idle kept-alive connection as we reused it
                kind, status = "protocol", 502
                message = f"llmtop proxy: {where} closed the connection before answering ({one_line(e)})"  # fmt: skip
            except aiohttp.ClientResponseError as e:
                kind, status = "protocol", 502
                message = f"llmtop proxy: invalid HTTP response from {where}: {one_line(e.message)}"  # fmt: skip
            if st is not None:
                st.fail(kind, message)  # type: ignore[arg-type]
            return self._error(request.path, status, message)
        raise AssertionError("unreachable")

    async def _forward(
        self, request: web.BaseRequest, body: bytes, st: ObservedState | None
    ) -> web.StreamResponse:
        try:
            resp = await self._send(request, body, st)
        except asyncio.CancelledError:
            if st is not None:
                st.fail("cancelled", self._cancel_reason(st))
            raise
        if isinstance(resp, web.Response):
            return resp
        out = _Passthrough(status=resp.status, reason=resp.reason)
        out._upstream_has = frozenset(k.lower() for k in resp.headers)
        out.headers.extend(_copy_headers(resp.headers, HOP_BY_HOP, resp.raw_headers))
        if resp.headers.get(hdrs.TRANSFER_ENCODING, "").lower().endswith("chunked"):
            out.headers.popall(hdrs.CONTENT_LENGTH, None)
        clean = False
        try:
            await out.prepare(request)
            read, write = resp.content.readany, out.write
            if st is None:
                await relay(read, write)
            elif resp.status >= 400:
                await relay_error(read, write, st, resp.status, resp.reason or "")
            else:
                await relay_timed(read, write, st, resp.headers.get(hdrs.CONTENT_TYPE, ""))
            await out.write_eof()
            clean = True
        except UpstreamCut:
            if request.transport is not None:
                request.transport.close()  # the client sees the body end early, as we did
        except ConnectionError:  # the client went away (before the cancellation reached us)
            if st is not None:
                st.fail("cancelled", self._cancel_reason(st))
        except asyncio.CancelledError:
            if st is not None:
                st.fail("cancelled", self._cancel_reason(st))
            raise
        finally:
            if clean:
                resp.release()
            else:
                resp.close()  # closes the upstream connection: the server stops generating
        return out

    def _cancel_reason(self, st: ObservedState) -> str:
        if self.stopping:
            return f"the proxy stopped after {st.chunks} chunks"
        return f"the client closed the connection after {st.chunks} chunks"


def listen_url(host: str, port: int) -> str:
    """``http://host:port`` with IPv6 hosts bracketed."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address or ``localhost``."""
    import ipaddress

    if host == "localhost":
        return True
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_loopback
    return False
