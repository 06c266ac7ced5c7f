"""The in-repo engine as a backend: starts ``llmtop serve`` as a child on a free loopback port,
waits until it answers, streams through its Ollama API, and stops it on exit, Ctrl-C and errors.

The launcher is generic: any command with a ``{port}`` placeholder that ends up serving the
Ollama API on 127.0.0.1:{port} will do (the tests use a stand-in). The child runs in its own
process group, so the terminal's Ctrl-C reaches llmtop alone and llmtop stops the child only after
its requests were recorded as cancelled; on Linux it also gets SIGTERM if llmtop dies without
cleaning up (``PR_SET_PDEATHSIG``; note that this follows the thread that started it, which for
a run is the thread of its event loop, alive until the backend is closed).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import aiohttp

from llmtop.collectors.http import one_line
from llmtop.collectors.ollama import OllamaBackend
from llmtop.core.errors import SourceError
from llmtop.core.requests import Emit, GenerationRequest, StatusSink, Timeouts, no_status

LABEL = "the llmtop engine"
_PROBE_INTERVAL_S = 0.05


def engine_available() -> str | None:
    """``None`` when the engine can run here, else why not (for ``auto`` and ``doctor``)."""
    missing = [m for m in ("torch", "gguf") if importlib.util.find_spec(m) is None]
    if missing:
        return f"the in-repo engine needs {' and '.join(missing)}: pip install 'llmtop-monitor[engine]'"
    return None


def default_command(model: str | None = None) -> list[str]:
    """``llmtop serve --host 127.0.0.1 --port {port} [--model M]`` from this installation."""
    exe = Path(sys.executable).parent / "llmtop"
    if exe.exists():
        base = [str(exe)]
    elif found := shutil.which("llmtop"):
        base = [found]
    else:
        base = [sys.executable, "-c", "from llmtop.app.cli import run; run()"]
    cmd = [*base, "serve", "--host", "127.0.0.1", "--port", "{port}"]
    return [*cmd, "--model", model] if model else cmd


@dataclass(frozen=True)
class EngineLaunch:
    """How to start the engine server."""

    command: Sequence[str] | None = None
    """Argv with ``{port}`` in it (default: ``llmtop serve`` on that port)."""
    model: str | None = None
    """Passed as ``--model`` to the default command."""
    startup_timeout_s: float = 120.0
    """Loading a model can take a while on a small CPU."""
    stop_timeout_s: float = 5.0
    """SIGTERM, then SIGKILL after this long."""
    env: Mapping[str, str] | None = None


def free_port() -> int:
    """A loopback port nobody listens on right now (the child binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent_hook() -> Any:
    """A ``preexec_fn`` asking Linux to SIGTERM the child when llmtop dies; ``None`` elsewhere.

    The signal follows the *thread* that starts the child: start it from one that lives as long
    as the child should (the main thread, or a run's event loop thread)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def hook() -> None:  # runs in the child between fork and exec: one system call, no locks
        prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call above
            os._exit(1)

    return hook


class _PortTaken(Exception):
    pass


class EngineBackend:
    """The engine started as a child (or one already running at ``url``), driven as Ollama.

    Args:
        launch: how to start it (ignored when ``url`` is given).
        url: an engine that is already serving; nothing is started or stopped.
        timeouts: per-request limits.
        max_connections: pool size (``0``: one connection per concurrent request).
        on_status: told, about once a second while the engine starts, how long it has been
            loading and the last line it printed (loading the model, building its kernels).
    """

    name = "engine"

    def __init__(
        self,
        launch: EngineLaunch | None = None,
        *,
        url: str | None = None,
        timeouts: Timeouts | None = None,
        max_connections: int = 0,
        on_status: StatusSink = no_status,
    ) -> None:
        self.launch = launch or EngineLaunch()
        self._on_status = on_status
        self.timeouts = timeouts or Timeouts()
        self._url = url
        self._max = max_connections
        self.base_url = url or ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._inner: OllamaBackend | None = None

    def __repr__(self) -> str:
        return f"EngineBackend({self.base_url or 'not started'!r})"

    @property
    def server_pid(self) -> int | None:
        """The engine's process (for the resource sampler); ``None`` when not ours or stopped."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    @property
    def inner(self) -> OllamaBackend:
        if self._inner is None:
            raise RuntimeError("use the engine backend as an async context manager first")
        return self._inner

    async def __aenter__(self) -> EngineBackend:
        try:
            if self._url is None:
                self.base_url = await self._start()
            self._inner = OllamaBackend(self.base_url, timeouts=self.timeouts,
                                        max_connections=self._max, label=LABEL)  # fmt: skip
            await self._inner.__aenter__()
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._inner is not None:
                await self._inner.__aexit__(*exc)
        finally:
            await self._stop()

    async def stream(self, req: GenerationRequest, emit: Emit) -> None:
        await self.inner.stream(req, emit)

    async def list_models(self) -> list[str]:
        return await self.inner.list_models()

    async def check(self, model: str | None) -> None:
        await self.inner.check(model)

    # --- the child ----------------------------------------------------------------------------

    async def _start(self) -> str:
        for _ in range(3):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            self._spawn(port)
            try:
                await self._wait_ready(url)
            except _PortTaken:
                await self._stop()
                continue
            return url
        raise SourceError(f"{LABEL} could not get a free loopback port (tried 3)")

    def _spawn(self, port: int) -> None:
        template = self.launch.command or default_command(self.launch.model)
        cmd = [arg.replace("{port}", str(port)) for arg in template]
        self._out = tempfile.TemporaryFile()
        # its start's progress as lines (loading, kernels, warming up), relayed by _wait_ready
        env = {**os.environ, "LLMTOP_SERVE_PROGRESS": "lines", **(self.launch.env or {})}
        try:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT, env=env,
                process_group=0, preexec_fn=die_with_parent_hook(),
            )  # fmt: skip
        except OSError as e:
            raise SourceError(f"cannot start {LABEL} ({cmd[0]}): {e.strerror or e}") from None
        atexit.register(self._kill_now)

    def _last_output(self) -> str:
        if self._out is None:
            return ""
        self._out.seek(0)
        lines = [ln.strip() for ln in self._out.read().decode("utf-8", "replace").splitlines()]
        lines = [ln for ln in lines if ln and not ln.startswith("Traceback")]
        # the engine's own lines start "llmtop: " or "llmtop serve: "; ours add the name once
        last = lines[-1].removeprefix("llmtop serve: ").removeprefix("llmtop: ") if lines else ""
        return one_line(last)

    async def _wait_ready(self, url: str) -> None:
        assert self._proc is not None
        started = time.monotonic()
        deadline = started + self.launch.startup_timeout_s
        timeout = aiohttp.ClientTimeout(total=1.0)
        said = ("", -1)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                news = (self._last_output(), int(time.monotonic() - started))
                if news != said:
                    said = news
                    line, seconds = news
                    self._on_status(f"starting {LABEL} ({seconds} s){': ' + line if line else ''}")
                code = self._proc.poll()
                if code is not None:
                    out = self._last_output()
                    if "address already in use" in out.lower():
                        raise _PortTaken
                    detail = f": {out}" if out else ""
                    raise SourceError(f"{LABEL} exited with code {code} before it answered{detail}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"{url}/api/version") as resp:
                        if resp.status == 200:
                            return
                if time.monotonic() > deadline:
                    out = self._last_output()
                    detail = f"; its last output: {out}" if out else ""
                    raise SourceError(
                        f"{LABEL} did not answer at {url} within {self.launch.startup_timeout_s:g} s{detail}"
                    )
                await asyncio.sleep(_PROBE_INTERVAL_S)  # polling a child that is loading a model

    async def _stop(self) -> None:
        proc, self._proc = self._proc, None
        try:
            if proc is not None and proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, self.launch.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    _signal_group(proc, signal.SIGKILL)
                    await asyncio.to_thread(proc.wait)
        finally:
            if proc is not None and proc.poll() is None:  # cancelled while waiting: no loose ends
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
            atexit.unregister(self._kill_now)
            if self._out is not None:
                self._out.close()
                self._out = None

    def _kill_now(self) -> None:
        """Last resort at interpreter exit, when the backend was never closed."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal the child's process group (it leads it), so its own children go too."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
