"""The HTTP client the backends share: one aiohttp session per run, t0 taken on the wire.

Why aiohttp and not httpx, settled by bench/collector.py (a fake server flooding 1, 64 and 256
streams, one HTTP chunk per token, server and client each pinned to one core; numbers from this
2-core machine, shared, so tokens/s varied run to run while CPU per token held steady):

- minimal aiohttp client (stream, parse, timestamp): 3.3-3.8 ms CPU per 1k tokens;
- the same minimal client on httpx: 8.1-10.1 ms, and half the tokens/s;
- this backend + EventWriter storing every token in SQLite: 4.0-5.3 ms, 0.8-1.4x the minimal
  aiohttp client's tokens/s.

The goal was >= 0.6x the minimal aiohttp client's tokens/s at <= 2x its CPU per token; this path
stays at 1.2-1.4x its CPU. httpx costs 2.5x the CPU per token (its HTTP/1.1 parsing is pure
Python), and its pool was measured (when issue 5 was filed) to delay a request's departure by
~18 ms at 64 streams. The official ``ollama`` and ``openai`` clients remain the references the
tests check our parsing against.

How t0 is taken: an aiohttp ``TraceConfig`` hook, ``on_request_chunk_sent``, fires immediately
before the request's one coalesced write of headers and body to the socket (after any wait for a
pooled connection and after connecting), so TTFT never includes pool queueing or connect time.
``RequestStarted`` is emitted there and then, so a live view sees the request in flight.

Stale pooled connections (issue 16): a kept-alive connection can die while it waits in the pool
(the server's idle timeout), and some servers close every connection right after its response
(llama.cpp's llama-server says ``Keep-Alive: timeout=5, max=100``, then closes). aiohttp only
learns of the close when its loop next reads the socket, so a request sent at once on the same
connection goes out on a dead one. Such a request is sent again on a new connection without
counting an attempt (its t0 is the write on the new connection); and once two pooled connections
were found dead and none ever carried a second request, the server is taken to close after every
response and every later request gets a connection of its own (``fresh_only``; the requests then
say ``Connection: close``, which is what happens anyway).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from llmtop import __version__
from llmtop.core.errors import SourceError, UsageError
from llmtop.core.requests import Timeouts

KEEPALIVE_S = 4.0
"""Idle pooled connections are closed after this, below uvicorn's default of 5 s (vLLM, SGLang),
so a request rarely goes out on a connection the server is closing."""
STALE_BEFORE_FRESH_ONLY = 2
"""Pooled connections found dead, with none ever reused, before the server is taken to close
after every response."""


def one_line(text: object, limit: int = 240) -> str:
    """``text`` on one line, shortened to ``limit`` characters: messages must stay one line."""
    s = re.sub(r"\s+", " ", str(text)).strip()
    return s if len(s) <= limit else s[: limit - 1] + "…"


def error_from_body(raw: bytes) -> str:
    """The message a server put in an error body (Ollama, OpenAI, FastAPI shapes, or plain text)."""
    try:
        obj = json.loads(raw)
    except ValueError:
        text = raw.decode("utf-8", "replace").strip()
        return one_line(text) if text else "(empty body)"
    if isinstance(obj, dict):
        err = obj.get("error", obj.get("message", obj.get("detail")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return one_line(err)
    return one_line(raw.decode("utf-8", "replace"))


# --- URLs --------------------------------------------------------------------------------------


def redacted(url: str) -> str:
    """``url`` with any ``user:password@`` masked, so a key typed into a URL is never echoed."""
    return re.sub(r"^((?:[^/@]*//)?)[^/]*@", r"\1***@", url.strip())


def base_url(url: str, *, default_port: int | None = None, default_path: str = "") -> str:
    """A normalized base URL: scheme, host, port and path, no trailing slash.

    Raises:
        UsageError: not an http(s) URL, no host, or credentials in it (keys go in env vars).
    """
    raw = url.strip()
    if raw.startswith(":"):  # ":11434", as OLLAMA_HOST allows
        raw = "127.0.0.1" + raw
    if "://" not in raw:
        raw = "http://" + raw
    try:
        parts = urlsplit(raw)
        port = parts.port
    except ValueError as e:
        raise UsageError(f"bad URL {redacted(url)!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"bad URL {redacted(url)!r}: expected http(s)://host[:port][/path]")
    if parts.username or parts.password:
        raise UsageError(
            f"bad URL {redacted(url)!r}: put credentials in an environment variable, not the URL"
        )
    host = parts.hostname
    if host in ("0.0.0.0", "::"):  # a server's listen-on-all address; connect over loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    if port is None and "://" not in url:  # no scheme given: the server's usual port
        port = default_port
    path = parts.path.rstrip("/") or default_path
    return f"{parts.scheme}://{host}{'' if port is None else f':{port}'}{path}"


# --- the session --------------------------------------------------------------------------------


class SendTrace:
    """Per-attempt trace context (``trace_request_ctx``): who to tell when the request is written,
    and whether it went out on a reused keep-alive connection."""

    __slots__ = ("reused", "written")

    def __init__(self, written: Callable[[int], None]) -> None:
        self.written = written
        self.reused = False


async def _on_chunk_sent(session: object, ctx: Any, params: object) -> None:
    sent = ctx.trace_request_ctx
    if isinstance(sent, SendTrace):
        sent.written(time.perf_counter_ns())


async def _on_reuse(session: object, ctx: Any, params: object) -> None:
    sent = ctx.trace_request_ctx
    if isinstance(sent, SendTrace):
        sent.reused = True


class HttpClient:
    """One aiohttp session for a run: pooled keep-alive connections, the t0 trace, our headers.

    Args:
        base: the server's base URL (already normalized).
        timeouts: connect timeout for the socket; the rest is the watchdog's.
        headers: extra default headers (an ``Authorization`` header is never logged or stored).
        max_connections: pool size; ``0`` = one connection per concurrent request, no queueing.
    """

    def __init__(
        self,
        base: str,
        timeouts: Timeouts,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 0,
    ) -> None:
        self.base = base
        self.timeouts = timeouts
        self._headers = {
            "User-Agent": f"llmtop/{__version__}",
            "Accept-Encoding": "identity",  # a compressing proxy would hold tokens back
            "Content-Type": "application/json",
            **(headers or {}),
        }
        self._max = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._fresh_session: aiohttp.ClientSession | None = None
        self._trace: aiohttp.TraceConfig | None = None
        self.reused_ok = 0
        """Requests answered on a reused (kept-alive) connection."""
        self.stale = 0
        """Pooled connections found dead when a request went out on them."""
        self.fresh_only = False
        """The server closes after every response: each request gets a new connection."""

    def __repr__(self) -> str:
        return f"HttpClient({self.base!r})"

    def url(self, path: str) -> URL:
        """The absolute URL of ``path`` (built once per endpoint, not per request)."""
        return URL(self.base + path)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use the backend as an async context manager before streaming")
        return self._session

    def session_for(self, fresh: bool) -> aiohttp.ClientSession:
        """The pooled session, or (``fresh``, or a server that closes after every response) one
        whose every request opens a new connection."""
        if not (fresh or self.fresh_only):
            return self.session
        if self._fresh_session is None:
            if self._session is None:
                raise RuntimeError("use the backend as an async context manager before streaming")
            connector = aiohttp.TCPConnector(limit=self._max, force_close=True)
            self._fresh_session = self._new_session(connector)
        return self._fresh_session

    def stale_connection(self) -> None:
        """A request went out on a pooled connection that turned out closed."""
        self.stale += 1
        if self.reused_ok == 0 and self.stale >= STALE_BEFORE_FRESH_ONLY:
            self.fresh_only = True

    def _new_session(self, connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
        assert self._trace is not None
        return aiohttp.ClientSession(
            connector=connector,
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect_s),
            trace_configs=[self._trace],
            auto_decompress=False,
        )

    async def open(self) -> None:
        trace = aiohttp.TraceConfig()
        trace.on_request_chunk_sent.append(_on_chunk_sent)
        trace.on_connection_reuseconn.append(_on_reuse)
        trace.freeze()
        self._trace = trace
        connector = aiohttp.TCPConnector(limit=self._max, keepalive_timeout=KEEPALIVE_S)
        self._session = self._new_session(connector)

    async def close(self) -> None:
        for s in (self._session, self._fresh_session):
            if s is not None:
                await s.close()
        self._session = self._fresh_session = None

    async def get_json(self, path: str, what: str, timeout_s: float = 10.0) -> tuple[int, Any]:
        """GET ``path`` and parse JSON: ``(status, body)``, the body ``None`` if not JSON.

        Raises:
            SourceError: the server cannot be reached or does not answer in ``timeout_s``.
        """
        url = self.base + path
        try:
            async with asyncio.timeout(timeout_s), self.session.get(url) as resp:
                raw = await resp.read()
        except aiohttp.ClientConnectorError as e:
            raise SourceError(f"cannot reach {what} at {self.base}: {connect_reason(e)}") from None
        except TimeoutError:
            raise SourceError(
                f"{what} at {self.base} did not answer within {timeout_s:g} s"
            ) from None
        except aiohttp.ClientError as e:
            raise SourceError(f"{what} at {self.base} failed: {one_line(e)}") from None
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, None


def os_error_text(err: OSError) -> str | None:
    """An OS error in words ("connection refused"); a failed name lookup says so ("unknown host:
    name or service not known") where ``os.strerror`` of its negative code reads "unknown error -2"."""
    if isinstance(err, socket.gaierror):
        return f"unknown host: {(err.strerror or str(err)).lower()}"
    if err.errno:
        return os.strerror(err.errno).lower()
    return None


def connect_reason(e: aiohttp.ClientConnectorError) -> str:
    """ "connection refused" rather than asyncio's "Connect call failed ('127.0.0.1', 1234)"."""
    err = e.os_error
    text = os_error_text(err) if isinstance(err, OSError) else None
    return text or one_line(err).lower() or "connection failed"


def api_key_from_env(env_name: str | None, default: str = "OPENAI_API_KEY") -> str | None:
    """The API key from ``env_name`` (an error if that variable is unset) or ``default`` (optional).

    Raises:
        UsageError: ``env_name`` was given but is not set.
    """
    if env_name:
        key = os.environ.get(env_name)
        if not key:
            raise UsageError(
                f"--api-key-env {env_name}: the environment variable {env_name} is not set"
            )
        return key
    return os.environ.get(default) or None
