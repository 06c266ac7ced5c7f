"""Watching a server with no run of ours: system, GPU and server samplers between runs.

The dashboard keeps one ``Watcher`` going while no run is recorded, so a server that other
clients drive is still seen (its loaded models, its own /metrics, the machine). Its events carry
no run id and are not stored: they only feed the live aggregator. It stops while a run has
samplers of its own, so the two never sample at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Coroutine
from typing import Any

from llmtop.collectors.gpu import GpuSampler
from llmtop.collectors.server_metrics import ServerMetricsSampler
from llmtop.collectors.system import SystemSampler, local_port
from llmtop.core.requests import Emit

WATCH_HZ = 1.0
"""Samples per second between runs: enough to watch, cheap enough to leave open all day."""
DEFAULT_OLLAMA = "http://127.0.0.1:11434"


def watch_target(backend: str, url: str | None) -> tuple[str, str]:
    """``(url, kind)`` to watch between runs: the given server, else Ollama's address.

    ``kind`` is the server sampler's: ``ollama`` reads ``/api/ps``, ``openai`` ``/metrics``,
    ``engine`` both (an endpoint the server lacks is dropped after its first 404).
    """
    if url is None:
        host = os.environ.get("OLLAMA_HOST", DEFAULT_OLLAMA)
        url = host if "://" in host else f"http://{host}"
    kind = backend if backend in ("ollama", "openai") else "engine"
    return url, kind


class Watcher:
    """System, GPU and server samplers on a thread and loop of their own, with no run id.
    ``url=None``: no server to watch (the bundled engine runs only during a run), the machine
    and GPUs alone."""

    def __init__(self, url: str | None, kind: str, emit: Emit, *, hz: float = WATCH_HZ) -> None:
        self.url, self.kind, self.hz = url, kind, hz
        self._emit = emit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main_task: asyncio.Task[None] | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="llmtop-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the samplers to stop (thread-safe); they end within one sample."""
        with self._lock:
            self._stopping = True
            if self._loop is not None and self._main_task is not None:
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._main_task.cancel)

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._main())

    async def _main(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._loop = asyncio.get_running_loop()
            self._main_task = asyncio.current_task()
        port = None if self.url is None else local_port(self.url)
        samplers: list[SystemSampler | GpuSampler | ServerMetricsSampler] = [
            SystemSampler(None, hz=self.hz, server_port=port),
            GpuSampler(None, hz=self.hz),
        ]
        if self.url is not None:
            samplers.append(ServerMetricsSampler(None, self.url, self.kind, hz=self.hz))
        async with asyncio.TaskGroup() as tg:
            for s in samplers:
                tg.create_task(_quietly(s.run(self._emit)))


async def _quietly(coro: Coroutine[Any, Any, None]) -> None:
    """A sampler that breaks (a bug) must not take the others down with it."""
    with contextlib.suppress(Exception):
        await coro
