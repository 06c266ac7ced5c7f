"""The engine's HTTP server: Ollama's and OpenAI's APIs and /metrics on starlette + uvicorn.

``run()`` serves an already bound socket until SIGINT/SIGTERM; the program (program.py) binds
it first, so that a taken port fails before the model loads.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from llmtop.engine.api_ollama import OllamaApi
from llmtop.engine.api_openai import OpenAIApi
from llmtop.engine.metrics import CONTENT_TYPE, EngineMetrics
from llmtop.engine.model_service import ModelService
from llmtop.engine.serve_options import DEFAULT_IDLE_TIMEOUT_S
from llmtop.engine.version import server_header


def create_app(service: ModelService, metrics: EngineMetrics) -> Starlette:
    """The ASGI app: both APIs, /metrics, /health and a plain / like Ollama's."""

    async def root(request: Request) -> Response:
        return PlainTextResponse("llmtop serve is running (Ollama and OpenAI APIs)")

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    async def prometheus(request: Request) -> Response:
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    async def server_error(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"}, 500)

    routes = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", prometheus, methods=["GET"]),
        *OllamaApi(service).routes(),
        *OpenAIApi(service).routes(),
    ]
    app = Starlette(routes=routes, exception_handlers={Exception: server_error})
    app.add_middleware(ErrorCounter, metrics=metrics)
    return app


class ErrorCounter:
    """Counts error answers for /metrics (``llmtop_engine_http_errors_total{status}``): a server
    refusing work under load (503) or being sent garbage (400, 413) is what an operator watches.
    A plain ASGI wrapper, so streamed answers pass through untouched."""

    def __init__(self, app: ASGIApp, metrics: EngineMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                self.metrics.http_error(message["status"])
            await send(message)

        await self.app(scope, receive, counting_send)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: a free one). Raises OSError."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11) with a deadline on every request's headers.

    uvicorn times a kept-alive connection out between requests, but cancels that timer on the
    first byte that comes in, and sets none before the first request: a connection that never
    completes a request (idle from the start, or sending its headers a byte at a time, as
    slowloris does) would be held open forever, and its memory with it. Here each connection
    gets ``timeout_keep_alive`` seconds, from when it opens and from the end of each response,
    to complete its next request's headers; a request in progress (a long stream) is never cut.
    """

    # uvicorn's H11Protocol narrows asyncio.Protocol's BaseTransport to Transport (and ignores the
    # same error itself); ours takes what uvicorn's takes.
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._arm()

    def on_response_complete(self) -> None:
        self._arm()  # before uvicorn starts a pipelined next request (a new cycle)
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self.loop.call_later(self.timeout_keep_alive, self._expire, self.cycle)

    def _expire(self, cycle_then: object) -> None:
        """No request began since the deadline was set (uvicorn makes a new cycle for each)."""
        if self.cycle is cycle_then and not self.transport.is_closing():
            self.transport.close()  # connection_lost then closes the h11 state, as on any close


class _Server(uvicorn.Server):
    """uvicorn with two hooks: say when it accepts requests, and end the streams at shutdown
    (uvicorn would otherwise wait for every open stream to finish before exiting)."""

    def __init__(
        self, config: uvicorn.Config, on_ready: Callable[[], None], on_stop: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self._on_ready = on_ready
        self._on_stop = on_stop

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self._on_ready()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._on_stop()
        await super().shutdown(sockets)


def run(
    sock: socket.socket,
    service: ModelService,
    metrics: EngineMetrics,
    *,
    on_ready: Callable[[str], None],
    on_stop: Callable[[], None],
    idle_timeout_s: int = DEFAULT_IDLE_TIMEOUT_S,
) -> None:
    """Serve on ``sock`` until SIGINT/SIGTERM; ``on_ready(url)`` once requests are accepted."""
    config = uvicorn.Config(
        create_app(service, metrics),
        http=_Protocol,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
        timeout_keep_alive=idle_timeout_s,
        server_header=False,  # ours instead: clients (and llmtop's auto) can tell it from Ollama
        headers=[("server", server_header())],
    )
    url = url_of(sock)
    _Server(config, lambda: on_ready(url), on_stop).run(sockets=[sock])
