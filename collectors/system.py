"""The system sampler: CPU (total and per core), memory, and the model server's own process.

psutil does the reading. Its calls block (they read /proc), so each sample runs in a worker
thread and the event loop that times tokens never waits on them: always the same one thread,
not ``asyncio.to_thread``'s pool, because psutil 7 keeps ``cpu_percent``'s previous reading per
thread; a sample read on another thread than the last one would be a delta from nothing. The
server process is found once by its listening port (or given by pid) and kept; its children are
included (Ollama loads each model in a child runner, where the memory really is). Finding
processes is the expensive part (``net_connections`` takes ~20 ms), so it runs only when the
server is not yet known, at most every few seconds.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import platform
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import psutil

from llmtop.core.events import ResourcesSampled, SourceDown
from llmtop.core.requests import Emit

DEFAULT_HZ = 2.0
CHILDREN_EVERY_S = 10.0
"""How often to look for new children of the server (a model runner started for a new model)."""
LOOK_AGAIN_S = (5.0, 60.0)
"""When no process listens on the port yet: look again after 5 s, doubling up to 60 s. Each
look costs ~25 ms of CPU holding the GIL (net_connections), which would delay token reads."""


def local_port(base_url: str) -> int | None:
    """The port of ``base_url`` when its host is this machine, else ``None``."""
    parts = urlsplit(base_url if "://" in base_url else f"http://{base_url}")
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    return port if is_local_host(host) else None


def is_local_host(host: str) -> bool:
    """Whether ``host`` names this machine (loopback, unspecified, or one of its addresses)."""
    if host in ("localhost", socket.gethostname()):
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if addr.is_loopback or addr.is_unspecified:
        return True
    own = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    return host in own


def pid_listening_on(port: int) -> tuple[int | None, bool]:
    """``(pid, found)``: the process listening on TCP ``port``.

    ``found`` with pid ``None`` means a socket listens but belongs to another user (Linux
    gives no pid then).
    """
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None, False
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port:
            return c.pid, True
    return None, False


class ServerProcess:
    """The server's process tree, for its RSS and CPU; found by pid or listening port."""

    def __init__(self, pid: int | None = None, port: int | None = None) -> None:
        self.pid = pid
        self.port = port
        self.problem: str | None = None
        """Why the server's process cannot be read, once known (for one ``SourceDown``)."""
        self._procs: dict[int, psutil.Process] = {}
        self._next_look = 0.0
        self._wait = LOOK_AGAIN_S[0]
        self._hopeless = False

    def _discover(self, now: float) -> None:
        self._next_look = now + CHILDREN_EVERY_S
        if self._hopeless:
            self._next_look = float("inf")
            return
        if self.pid is None and self.port is not None:
            pid, found = pid_listening_on(self.port)
            if pid is None:
                if found:  # it will not become ours: stop looking
                    self._hopeless = True
                    self._next_look = float("inf")
                    self.problem = (
                        f"the process listening on port {self.port} belongs to another user: "
                        "no server CPU or memory (give --server-pid)"
                    )
                else:
                    self._next_look = now + self._wait
                    self._wait = min(self._wait * 2, LOOK_AGAIN_S[1])
                    self.problem = f"no process listens on port {self.port} yet"
                return
            self.pid = pid
            self._wait = LOOK_AGAIN_S[0]
        if self.pid is None:
            return
        try:
            root = psutil.Process(self.pid)
            tree = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            self.problem = f"server process {self.pid} has exited"
            self._procs.clear()
            if self.port is not None:
                self.pid = None  # look for its successor on the same port
            return
        except psutil.AccessDenied:
            self.problem = f"no access to server process {self.pid}"
            return
        self.problem = None
        for p in tree:
            if p.pid not in self._procs:
                try:
                    p.cpu_percent(None)  # the first call only primes the counter
                except psutil.Error:
                    continue
                self._procs[p.pid] = p

    def read(self) -> tuple[int | None, float | None]:
        """``(rss_bytes, cpu_pct)`` of the tree; ``None`` when unknown or just primed."""
        now = time.monotonic()
        if now >= self._next_look:
            self._discover(now)
        if not self._procs:
            return None, None
        rss, cpu, primed = 0, 0.0, False
        for pid, p in list(self._procs.items()):
            try:
                with p.oneshot():
                    cpu += p.cpu_percent(None)
                    rss += p.memory_info().rss
                primed = True
            except psutil.NoSuchProcess:
                del self._procs[pid]
            except psutil.AccessDenied:
                continue
        if not self._procs:
            self._next_look = 0.0
            return None, None
        return (rss, cpu) if primed else (None, None)


class SystemSampler:
    """Samples the machine at ``hz`` and emits ``ResourcesSampled``; never raises on a read.

    Args:
        run_id: the run the samples belong to.
        hz: samples per second (``record --sample-hz``).
        server_pid: the server's pid, when known (the in-repo engine's child).
        server_port: else the port it listens on (from the backend URL, when local).
    """

    source = "system"

    def __init__(
        self,
        run_id: int | None,
        *,
        hz: float = DEFAULT_HZ,
        server_pid: int | None = None,
        server_port: int | None = None,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        if hz <= 0:
            raise ValueError(f"hz must be > 0, got {hz}")
        self.run_id = run_id
        self.hz = hz
        self.clock = clock
        self.server = (
            ServerProcess(server_pid, server_port)
            if server_pid is not None or server_port is not None
            else None
        )
        self.ready = asyncio.Event()
        """Set once primed and the server process looked for: the costly part is over."""
        self._primed = False

    def prime(self) -> None:
        """psutil's first ``cpu_percent`` call returns garbage (a delta from nothing): discard it."""
        psutil.cpu_percent(None, percpu=True)
        if self.server is not None:
            self.server.read()
        self._primed = True

    def read(self) -> ResourcesSampled:
        """One sample (blocking: call it from a thread)."""
        if not self._primed:
            self.prime()
        per_core = tuple(psutil.cpu_percent(None, percpu=True))
        mem = psutil.virtual_memory()
        rss, cpu = self.server.read() if self.server is not None else (None, None)
        return ResourcesSampled(
            run_id=self.run_id,
            t_ns=self.clock(),
            cpu_pct=sum(per_core) / len(per_core) if per_core else 0.0,
            per_core=per_core,
            # "used" as free(1) and htop mean it: what is not available to new allocations
            mem_used_bytes=mem.total - mem.available,
            mem_total_bytes=mem.total,
            server_rss_bytes=rss,
            server_cpu_pct=cpu,
        )

    async def run(self, emit: Emit) -> None:
        """Sample until cancelled, on a fixed schedule (a slow read skips ticks, never drifts)."""
        loop = asyncio.get_running_loop()
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llmtop-psutil")
        try:
            try:
                await loop.run_in_executor(thread, self.prime)
            finally:
                self.ready.set()
            period = 1.0 / self.hz
            start = loop.time()
            tick = 0
            reported: str | None = None
            while True:
                tick += 1
                due = start + tick * period
                delay = due - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    tick = int((loop.time() - start) / period)  # skip what we missed
                sample = await loop.run_in_executor(thread, self.read)
                emit(sample)
                problem = self.server.problem if self.server is not None else None
                if problem is not None and problem != reported:
                    emit(SourceDown(self.run_id, sample.t_ns, "server-process", problem))
                reported = problem
        finally:
            thread.shutdown(wait=False)


def host_info() -> dict[str, Any]:
    """What the machine is, stored once per run (``runs.host_json``)."""
    freq = None
    try:
        f = psutil.cpu_freq()
        freq = round(f.max or f.current) if f else None
    except (OSError, NotImplementedError, AttributeError):
        pass
    return {
        "hostname": socket.gethostname(),
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cpu_mhz": freq,
        "cores_logical": psutil.cpu_count(logical=True),
        "cores_physical": psutil.cpu_count(logical=False),
        "cpus_allowed": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
