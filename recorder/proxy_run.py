"""One observed run: ``llmtop proxy`` from its run row to its clean end.

The run row (kind ``observed``) is created once the listening socket is bound and before it
accepts anything, so every request belongs to it. Events go to the database writer and to the
``/llmtop/metrics`` histograms; samplers record the machine, the upstream's process (found by its
port when it is local) and the server's own numbers beside them, as for ``record``. The run ends
``finished`` when told to stop (Ctrl-C, SIGTERM): the socket closes, requests in flight get
``grace_s`` to end and are then cancelled (recorded ``cancelled``). A proxy killed outright
leaves a ``running`` row that the next open marks ``interrupted`` (storage/db.py).

The proxy never lets its own trouble break the traffic it relays: a full disk stops the
recording (one warning) but not the relaying, and a disk that falls far behind makes it relay
new requests untimed until it catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from llmtop.collectors.backends import ollama_answers
from llmtop.collectors.gpu import GpuSampler
from llmtop.collectors.http import base_url, one_line
from llmtop.collectors.server_metrics import ServerMetricsSampler
from llmtop.collectors.system import SystemSampler, host_info, local_port
from llmtop.core.errors import StorageError, UsageError
from llmtop.core.events import Event, RequestFailed, RequestFinished
from llmtop.core.metrics import Slo
from llmtop.live.client_metrics import CONTENT_TYPE, ClientMetrics
from llmtop.recorder.proxy_server import ProxyLimits, ProxyServer, is_loopback, listen_url
from llmtop.storage.db import resolve_db_path
from llmtop.storage.writer import EventWriter, RunInfo

OLLAMA_PORT = 11434
BACKENDS = ("ollama", "openai")


@dataclass(frozen=True, slots=True)
class ProxyPlan:
    """What ``llmtop proxy`` was asked to do."""

    upstream: str
    """The server to relay to, as given (``http://host:port``; a trailing ``/v1`` is dropped)."""
    backend: str | None = None
    """``ollama`` or ``openai``; ``None``: asked of the upstream at start."""
    listen: str | None = None
    """``host:port`` to listen on; ``None``: see :func:`default_listen`."""
    store_prompts: bool = False
    name: str = ""
    slo: Slo = field(default_factory=Slo)
    limits: ProxyLimits = field(default_factory=ProxyLimits)
    sample_hz: float = 1.0
    sample_gpu: bool = True
    sample_server: bool = True
    grace_s: float = 5.0
    """Seconds requests in flight may take to end once told to stop."""


@dataclass(frozen=True, slots=True)
class ProxyStarted:
    """The proxy listens: where, in front of what, recording which run."""

    run_id: int
    url: str
    upstream: str
    backend: str
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProxyResult:
    """How an observed run ended."""

    run_id: int | None
    status: str
    """``finished`` or ``failed`` (could not listen, or the database could not be used)."""
    error: str | None = None
    ok: int = 0
    errors: int = 0
    cancelled: int = 0
    untimed: int = 0
    """Generations relayed without timing while the disk was behind."""


def upstream_origin(url: str) -> str:
    """``scheme://host:port[/prefix]`` of the upstream: a bare host gets Ollama's port, and a
    trailing ``/v1`` (an OpenAI API base) is dropped, since clients send ``/v1/...`` themselves.

    Raises:
        UsageError: not an http(s) URL.
    """
    base = base_url(url, default_port=OLLAMA_PORT)
    return base.removesuffix("/v1")


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (or ``:port``, or ``[v6]:port``) as a pair.

    Raises:
        UsageError: not host:port with a port 0-65535.
    """
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:11434")
    host = host.strip("[]") or "127.0.0.1"
    return host, int(port)


def default_listen(backend: str, origin: str) -> tuple[str, int]:
    """Ollama's own port when the upstream is an Ollama elsewhere (clients then need no change),
    else a free port (the ready line says which)."""
    if backend == "ollama" and local_port(origin) != OLLAMA_PORT:
        return "127.0.0.1", OLLAMA_PORT
    return "127.0.0.1", 0


async def detect_backend(origin: str) -> str | None:
    """``ollama`` when ``/api/version`` answers as Ollama, ``openai`` when ``/v1/models``
    answers (even 401), ``None`` when the upstream does not answer."""
    if await ollama_answers(origin) is None:
        return "ollama"
    try:
        timeout = aiohttp.ClientTimeout(total=2.0)
        async with (
            aiohttp.ClientSession(timeout=timeout) as s,
            s.get(f"{origin}/v1/models") as resp,
        ):
            return "openai" if resp.status in (200, 401, 403) else None
    except (aiohttp.ClientError, TimeoutError):
        return None


class ProxyRun:
    """One observed run on the current event loop; ``await run(stop, ready)``.

    Args:
        plan: what to do.
        db_path: the database (``None``: the default).
        on_event: also called with every event (tests, a live view); keep it cheap.
    """

    def __init__(
        self,
        plan: ProxyPlan,
        db_path: str | Path | None = None,
        *,
        on_event: Callable[[Event], None] | None = None,
    ) -> None:
        self.plan = plan
        self.db_path = resolve_db_path(db_path)
        self.origin = upstream_origin(plan.upstream)
        self.metrics = ClientMetrics()
        self.run_id: int | None = None
        self.warnings: list[str] = []
        self._on_event = on_event
        self._writer: EventWriter | None = None
        self._server: ProxyServer | None = None
        self._counts = {"ok": 0, "errors": 0, "cancelled": 0, "untimed": 0}
        self._disk_warned = False

    # --- events ------------------------------------------------------------------------------

    def _emit(self, ev: Event) -> None:
        w = self._writer
        if w is not None and w.error is None:
            w.put_nowait(ev)
        self.metrics.add(ev)
        if type(ev) is RequestFinished:
            self._counts["ok"] += 1
        elif type(ev) is RequestFailed:
            self._counts["cancelled" if ev.error_kind == "cancelled" else "errors"] += 1
        cb = self._on_event
        if cb is not None:
            with contextlib.suppress(Exception):
                cb(ev)

    def _timing_allowed(self) -> bool:
        """Whether the next generation is timed: not while the disk is far behind (it would
        grow memory without bound) or after it failed (said once, on stderr by the caller)."""
        w = self._writer
        if w is None:
            return False
        if w.error is not None:
            if not self._disk_warned:
                self._disk_warned = True
                self.warnings.append(f"{w.error}; relaying goes on, untimed")
            self._counts["untimed"] += 1
            return False
        if w.backlog > w.max_pending_rows:
            self._counts["untimed"] += 1
            return False
        return True

    # --- local endpoints ---------------------------------------------------------------------

    def _metrics(self) -> tuple[int, str, bytes]:
        return 200, CONTENT_TYPE, self.metrics.render()

    def _health(self) -> tuple[int, str, bytes]:
        in_flight = self._server.in_flight if self._server else 0
        body = {"run_id": self.run_id, "upstream": self.origin, "in_flight": in_flight}
        return 200, "application/json", json.dumps(body).encode()

    # --- the run -----------------------------------------------------------------------------

    def _result(self, status: str, error: str | None = None) -> ProxyResult:
        c = self._counts
        return ProxyResult(self.run_id, status, error, c["ok"], c["errors"], c["cancelled"],
                           c["untimed"])  # fmt: skip

    async def run(
        self, stop: asyncio.Event, ready: Callable[[ProxyStarted], None] | None = None
    ) -> ProxyResult:
        """Relay and record until ``stop`` is set; never raises for an expected failure."""
        plan = self.plan
        backend = plan.backend or await detect_backend(self.origin)
        if backend is None:
            backend = "ollama"
            self.warnings.append(
                f"the upstream {self.origin} does not answer yet; assuming an Ollama API "
                "(say --backend openai otherwise)"
            )
        host, port = (
            parse_listen(plan.listen) if plan.listen else default_listen(backend, self.origin)
        )
        if not is_loopback(host):
            self.warnings.append(
                f"listening on {host}: other machines can reach the upstream through this proxy"
            )
        writer = EventWriter(self.db_path)
        self._writer = writer
        try:
            await writer.start()
        except StorageError as e:
            return self._result("failed", str(e))
        try:
            return await self._serve(writer, backend, host, port, stop, ready)
        finally:
            with contextlib.suppress(StorageError):
                await writer.close()

    async def _serve(
        self,
        writer: EventWriter,
        backend: str,
        host: str,
        port: int,
        stop: asyncio.Event,
        ready: Callable[[ProxyStarted], None] | None,
    ) -> ProxyResult:
        plan = self.plan
        server = ProxyServer(
            self.origin, run_id=0, emit=self._emit, store_prompts=plan.store_prompts,
            limits=plan.limits, timing_allowed=self._timing_allowed,
            local={"/llmtop/metrics": self._metrics, "/llmtop/health": self._health},
        )  # fmt: skip
        self._server = server
        try:
            port = await server.start(host, port)
        except OSError as e:
            await server.close(0)
            reason = one_line(e.strerror or e).lower()
            return self._result("failed", f"cannot listen on {host}:{port}: {reason}")
        url = listen_url(host, port)
        try:
            self.run_id, _ = await writer.create_run(self._info(backend, url))
        except StorageError as e:
            await server.close(0)
            return self._result("failed", str(e))
        server.run_id = self.run_id
        samplers = self._samplers(backend)
        tasks = [asyncio.create_task(s.run(self._emit), name=f"sampler-{s.source}") for s in samplers]  # fmt: skip
        try:
            await server.serve()
            if ready is not None:
                ready(ProxyStarted(self.run_id, url, self.origin, backend, tuple(self.warnings)))
            await stop.wait()
        finally:
            await server.close(plan.grace_s)
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        try:
            await writer.finish_run(self.run_id, "finished", None)
        except StorageError as e:
            return self._result("failed", str(e))
        return self._result("finished")

    def _info(self, backend: str, url: str) -> RunInfo:
        plan = self.plan
        params: dict[str, Any] = {
            "listen": url,
            "upstream": self.origin,
            "store_prompts": plan.store_prompts,
            "slo": dataclasses.asdict(plan.slo),
            "limits": dataclasses.asdict(plan.limits),
            "sample_hz": plan.sample_hz,
        }
        return RunInfo(
            name=plan.name, kind="observed", scenario="observed", backend=backend,
            base_url=self.origin, model="", params=params, host=host_info(),
        )  # fmt: skip

    def _samplers(self, backend: str) -> list[Any]:
        hz = self.plan.sample_hz
        out: list[Any] = [SystemSampler(self.run_id, hz=hz, server_port=local_port(self.origin))]
        if self.plan.sample_gpu:
            out.append(GpuSampler(self.run_id, hz=hz))
        if self.plan.sample_server:
            out.append(ServerMetricsSampler(self.run_id, self.origin, backend, hz=hz))
        return out


def check_backend(name: str | None) -> str | None:
    """``--backend`` as given, checked.

    Raises:
        UsageError: not ollama or openai.
    """
    if name is not None and name not in BACKENDS:
        raise UsageError(f"--backend {name!r}: the proxy speaks ollama or openai")
    return name


__all__ = [
    "BACKENDS", "ProxyPlan", "ProxyResult", "ProxyRun", "ProxyStarted",
    "check_backend", "default_listen", "detect_backend", "parse_listen", "upstream_origin",
]  # fmt: skip
