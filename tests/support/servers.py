"""A fake model server speaking Ollama NDJSON and OpenAI SSE, with known timings and faults.

For tests and benchmarks. It listens on 127.0.0.1 on a free port, in a thread (starts in
milliseconds, but shares the GIL with the test) or in a subprocess (``process=True``: its own
interpreter, optionally pinned to cores with ``cpus=``; use it when timings matter)::

    from support.servers import Behavior, FakeServer, refused_url

    timed = Behavior(ttft_ms=200, itl_ms=20, tokens=64)
    with FakeServer({"m": timed, "m-cut": Behavior(fault="cut", fault_after=3)}, process=True) as srv:
        srv.url          # http://127.0.0.1:PORT: the Ollama API;  srv.openai_url == srv.url + "/v1"
        srv.configure(models={...}, default=...)   # change behaviours while it runs (both modes)
        srv.script(Behavior(fault="status", status=500))   # the next generation request gets this
        srv.log()        # one RequestLog per generation request: send times, outcome, peer, body
    refused_url()        # a loopback URL where nothing listens (connection refused)

Each model name maps to a ``Behavior``; a model the server does not have gets a 404 as the real
server words it. ``default`` (if given) answers any other model name. ``script`` queues behaviours
that the next generation requests take, in arrival order, whatever their model.

``FakeServer(persona=Persona("llama.cpp"))`` plays a real server recorded on this machine (vLLM
0.32 or llama-server): its /metrics page with moving counters, its headers, its version
(fake_personas.py).

Endpoints: ``POST /api/generate``, ``/api/chat`` (NDJSON; headers go out with the first chunk, as
Ollama does), ``POST /v1/chat/completions``, ``/v1/completions`` (SSE; headers and the role chunk at
once, as vLLM does; ``stream_options.include_usage`` honoured; ``"stream": false`` answers one JSON
document), ``GET /api/tags``, ``/api/ps``, ``/api/version``, ``/v1/models``, ``/metrics``
(Prometheus text, vLLM names), and the control API ``POST /_fake/config``, ``GET /_fake/log``.

Timing: the first content chunk goes out ``load_ms + ttft_ms`` after the request arrived; a chunk of
k tokens goes out k x ``itl_ms`` after the one before it (so each token is ``itl_ms`` apart, the way
collectors.metrics spreads a chunk's tokens over its gap). Deadlines are absolute, so sleeps never
drift. Every send time is logged with ``perf_counter_ns`` (CLOCK_MONOTONIC: comparable with the
client's clock across processes) beside its scheduled time. ``itl_ms=0`` floods: chunks as fast as
the socket takes them, ``lines_per_write`` chunks per write (the collector benchmark).

Faults (``Behavior.fault``; ``fault_after`` = content chunks sent before a mid-stream fault):

=====================  ================================================================
``status``             HTTP ``status`` (429 adds Retry-After) with a JSON error body, or
                       an empty body when ``error_body=False``
``close_before_headers``  reads the request, then closes the connection without a response
``hang_before_headers``   reads the request, then sends nothing for ``hold_s``
``hang_mid_stream``    ``fault_after`` chunks, then nothing for ``hold_s``
``cut``                ``fault_after`` chunks, then closes the connection mid-body
``malformed``          ``fault_after`` chunks, then a line that is not JSON, then the rest
``error_line``         ``fault_after`` chunks, then an in-stream error object
``huge_line``          ``fault_after`` chunks, then one 10 MB line (valid JSON), then the rest
``invalid_utf8``       ``fault_after`` chunks, then bytes that are not UTF-8, then the rest
``unknown_model``      404 worded as the real server words an unknown model
``split``              every chunk written in two parts ``trickle_ms`` apart, cut inside a
                       multi-byte character when the text has one (the stream is valid)
``trickle``            every chunk written one byte at a time, ``trickle_ms`` apart
``wrong_content_type`` 200 with ``text/html`` and an HTML page
``no_timings``         final line without Ollama's counts and durations; no OpenAI usage
``reject_stream_options``  400 when the body has ``stream_options`` (older servers)
``ignore_stream``      answers one JSON document although a stream was asked for
=====================  ================================================================

Connections: ``FakeServer(conn=ConnPolicy(close_after_response=True))`` closes every connection
after its response, ``ConnPolicy(idle_close_ms=N)`` closes one left idle for N ms, and
``llama_server_conn()`` replays llama-server's recorded response headers (``Keep-Alive: timeout=5,
max=100``) and closes after every response, as it does. ``srv.conn_counts()`` says how many
connections it accepted and closed for idleness.

``Behavior(raw=...)`` sends a body of your own making byte for byte (``raw_chunk`` bytes per write,
``trickle_ms`` apart), for wire-format cases no fault covers. ``FakeServer(api_key="k")`` makes
the OpenAI endpoints answer 401 unless ``Authorization: Bearer k`` is sent.

Adding a fault: subclass ``Fault`` in fake_faults.py, override the hook it needs
(``before_headers``, ``content_type``, ``write``, ``before_chunk``, ``final``), and add it to
``FAULTS``. The layers: fake_http.py (a tiny HTTP/1.1 server), fake_wire.py (the wire formats),
fake_faults.py (behaviours and faults), fake_app.py (routes and the running state), and this
module (the handle and the command line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import select
import selectors
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python tests/support/servers.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fake_app import State, serve_forever
    from fake_faults import FAULTS, Behavior, Fault, RequestLog
    from fake_http import ConnPolicy
    from fake_personas import Persona, recorded, recorded_headers
else:
    from .fake_app import State, serve_forever
    from .fake_faults import FAULTS, Behavior, Fault, RequestLog
    from .fake_http import ConnPolicy
    from .fake_personas import Persona, recorded, recorded_headers

__all__ = [
    "FAULTS", "Behavior", "ConnPolicy", "FakeServer", "Fault", "Persona", "RequestLog",
    "llama_server_conn", "raise_priority", "recorded", "refused_url", "restore_priority",
]  # fmt: skip


def llama_server_conn(*, late: bool = False) -> ConnPolicy:
    """llama.cpp's llama-server as recorded: ``Keep-Alive: timeout=5, max=100``, then it closes
    the connection after every response (issue 16); ``late``: the close reaches the client only
    once it sends the next request on that connection (``ConnPolicy.close_on_next_request``)."""
    headers = recorded_headers("llama.cpp")
    assert headers.get("Keep-Alive") == "timeout=5, max=100", headers
    return ConnPolicy(close_after_response=True, close_on_next_request=late, headers=headers)


class _PreciseEpoll(selectors.EpollSelector):
    """epoll, whose timeouts have millisecond resolution (rounded up), made exact: it asks for
    1 ms less, then waits the rest with select(2) on the epoll descriptor, which takes
    microseconds. (llmtop's own loop does the same, recorder/loop_probe.py; the fake server
    keeps its own copy so the truth does not depend on the code it judges.)"""

    def select(self, timeout: float | None = None) -> Any:
        if timeout is not None and timeout > 0:
            if timeout > 1e-3:
                return super().select(timeout - 1e-3)
            select.select([self.fileno()], [], [], timeout)
            timeout = 0
        return super().select(timeout)


def _precise_loop() -> asyncio.AbstractEventLoop:
    """An event loop whose timers fire within tens of microseconds of their time.

    epoll alone rounds every timeout up to the next millisecond, which would make each send
    0-1 ms late; select(2) alone is exact but stops at FD_SETSIZE (1,024 descriptors), short of
    a 1,024-stream benchmark. So: epoll, with the last fraction of each wait done by select(2)
    on the one epoll descriptor.
    """
    return asyncio.SelectorEventLoop(_PreciseEpoll())


def raise_priority() -> str:
    """Real-time priority for this thread if allowed (``fifo``), else nice -10 (``nice``), else
    ``normal``. Keeps a timing-critical process on schedule on a machine shared with other work."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        return "fifo"
    except (OSError, AttributeError):
        pass
    try:
        os.nice(-10)
        return "nice"
    except OSError:
        return "normal"


def restore_priority(previous: str) -> None:
    """Undo ``raise_priority`` for this thread."""
    with contextlib.suppress(OSError, AttributeError):
        if previous == "fifo":
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
        elif previous == "nice":
            os.nice(10)


def refused_url() -> str:
    """A loopback URL where nothing listens: connecting to it is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _config_json(models: dict[str, Behavior] | None, default: Behavior | None) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    if models is not None:
        cfg["models"] = {k: asdict(v) for k, v in models.items()}
    cfg["default"] = None if default is None else asdict(default)
    return cfg


class FakeServer:
    """A handle on one fake server; a context manager that starts and stops it.

    Args:
        models: model name -> behaviour (default: one model ``fake`` with ``Behavior()``).
        default: the behaviour for any other model name (default: 404 for them).
        process: run in a subprocess instead of a thread.
        cpus: cores to pin the subprocess to (``os.sched_setaffinity``).
        port: the port to listen on (default: a free one).
        api_key: require ``Authorization: Bearer <api_key>`` on the OpenAI endpoints.
        conn: how connections are treated (closed after each response, after idling...).
        realtime: run the subprocess at real-time priority (SCHED_FIFO, else nice -10, when
            allowed) so that other load on a shared machine cannot make it late; for timing
            tests, not for floods (it would starve its core).
        persona: play a real server (fake_personas.py): its /metrics, headers, version.
    """

    def __init__(
        self,
        models: dict[str, Behavior] | None = None,
        default: Behavior | None = None,
        *,
        process: bool = False,
        cpus: set[int] | None = None,
        port: int = 0,
        api_key: str | None = None,
        realtime: bool = False,
        conn: ConnPolicy | None = None,
        persona: Persona | None = None,
    ) -> None:
        self._cfg = _config_json(models or {"fake": Behavior()}, default)
        self._cfg["api_key"] = api_key
        self._cfg["persona"] = None if persona is None else asdict(persona)
        if conn is not None:
            self._cfg["conn"] = asdict(conn)
        self.process = process
        self.cpus = cpus
        self.port = port
        self.realtime = realtime
        self.priority = "normal"
        """The priority the subprocess got: ``normal``, ``fifo`` or ``nice``."""
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """Base URL of the Ollama API (also the server root)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        """Base URL of the OpenAI API."""
        return f"{self.url}/v1"

    @property
    def pid(self) -> int:
        """The process that serves (this one in thread mode)."""
        return self._proc.pid if self._proc else os.getpid()

    def start(self) -> FakeServer:
        if self.process:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--port", str(self.port),
                   "--config", json.dumps(self._cfg)]  # fmt: skip
            if self.cpus:
                cmd += ["--cpus", ",".join(map(str, sorted(self.cpus)))]
            if self.realtime:
                cmd.append("--realtime")
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            assert self._proc.stdout is not None
            line = self._proc.stdout.readline()  # blocks until the server listens (or dies)
            if not line.startswith("listening "):
                self._proc.kill()
                raise RuntimeError(f"fake server did not start: {line!r}")
            _, port, self.priority = line.split()
            self.port = int(port)
            return self
        started = threading.Event()
        state = State()
        state.apply(self._cfg)

        def ready(port: int) -> None:
            self.port = port
            started.set()

        def main() -> None:
            loop = _precise_loop()
            self._loop = loop
            self._task = loop.create_task(serve_forever(state, self.port, ready))
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._task)
            loop.close()

        self._thread = threading.Thread(target=main, name="fake-server", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("fake server thread did not start")
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._thread is not None and self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _control(self, path: str, payload: dict[str, Any] | None = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(
            f"{self.url}/_fake/{path}", data=data, method="POST" if data else "GET"
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def configure(
        self, models: dict[str, Behavior] | None = None, default: Behavior | None = None
    ) -> None:
        """Replace the model behaviours and the default (``None`` default: 404 for others)."""
        self._control("config", _config_json(models, default))

    def script(self, *behaviors: Behavior) -> None:
        """The next ``len(behaviors)`` generation requests take these, in arrival order."""
        self._control("config", {"script": [asdict(b) for b in behaviors]})

    def conn_counts(self) -> dict[str, int]:
        """``connections`` accepted and ``idle_closed`` (closed for idleness) so far."""
        return dict(self._control("conn"))

    def log(self, clear: bool = False) -> list[RequestLog]:
        """Generation requests so far, in arrival order (``clear``: and forget them)."""
        rows = self._control("log?clear=1" if clear else "log")
        names = {f.name for f in fields(RequestLog)}
        return [RequestLog(**{k: v for k, v in r.items() if k in names}) for r in rows]


def _main() -> None:
    ap = argparse.ArgumentParser(description="llmtop's fake model server (tests, benchmarks)")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--config", default="{}", help="JSON: {models: {name: Behavior}, default}")
    ap.add_argument("--cpus", default="", help="comma-separated cores to pin to")
    ap.add_argument("--startup-delay", type=float, default=0.0, help="wait before listening")
    ap.add_argument("--realtime", action="store_true", help="SCHED_FIFO (or nice -10) if allowed")
    args = ap.parse_args()
    if args.cpus:
        os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    priority = raise_priority() if args.realtime else "normal"
    if args.startup_delay:
        time.sleep(args.startup_delay)  # stands in for a model load (engine launcher tests)
    state = State()
    state.apply(json.loads(args.config))

    def ready(port: int) -> None:
        print(f"listening {port} {priority}", flush=True)

    # The server is the truth the benches measure against: a full collection of its growing
    # request log stopped it for 10-20 ms, at a point the allocation counts decide (the third
    # round of bench/proxy.py's direct requests, every run). As a process of its own (benches,
    # CLI tests) it collects nothing; what cycles its requests leave live as long as it does.
    gc.disable()
    loop = _precise_loop()
    with contextlib.suppress(KeyboardInterrupt):
        loop.run_until_complete(serve_forever(state, args.port, ready))


if __name__ == "__main__":
    _main()
