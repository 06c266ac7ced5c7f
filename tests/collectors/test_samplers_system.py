"""The system sampler with the real psutil: the machine, and a real server process by port or pid."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import time

import psutil
import pytest
from support.servers import FakeServer, refused_url

from llmtop.collectors.system import SystemSampler, host_info, is_local_host, local_port
from llmtop.core.events import ResourcesSampled, SourceDown

MIB = 1 << 20


def test_local_port_only_for_this_machine():
    assert local_port("http://127.0.0.1:11434") == 11434
    assert local_port("http://localhost:8000/v1") == 8000
    assert local_port("127.0.0.1:9000") == 9000
    assert local_port("http://[::1]:8080/v1") == 8080
    assert local_port("http://0.0.0.0") == 80
    assert local_port(f"http://{socket.gethostname()}:5000") == 5000
    assert local_port("https://api.example.com/v1") is None
    assert local_port("http://10.255.255.1:8000") is None
    assert is_local_host("127.0.0.2")


def test_one_sample_reads_the_machine():
    s = SystemSampler(run_id=1).read()
    assert isinstance(s, ResourcesSampled) and s.run_id == 1
    assert len(s.per_core) == psutil.cpu_count() and all(0 <= c <= 100 for c in s.per_core)
    assert 0 <= s.cpu_pct <= 100
    assert 0 < s.mem_used_bytes < s.mem_total_bytes == psutil.virtual_memory().total
    assert s.server_rss_bytes is None and s.server_cpu_pct is None


def test_the_server_process_is_found_by_its_listening_port():
    with FakeServer(process=True) as srv:
        sampler = SystemSampler(1, server_port=srv.port)
        sampler.prime()
        s = sampler.read()
        assert sampler.server.pid == srv.pid
        own = psutil.Process(srv.pid).memory_info().rss
        assert s.server_rss_bytes == pytest.approx(own, rel=0.2)
        assert s.server_cpu_pct is not None and s.server_cpu_pct >= 0


CHILD = """
import subprocess, sys
child = subprocess.Popen([sys.executable, "-c",
    "import sys; b = bytearray(80 << 20); b[::4096] = b'x' * len(b[::4096]); "
    "print('ready', flush=True); sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print('ready', flush=True)
sys.stdin.read()
child.stdin.close(); child.wait()
"""


def test_a_server_given_by_pid_counts_its_children():
    """Ollama keeps the model in a child runner: its memory must count as the server's."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "ready"
        sampler = SystemSampler(1, server_pid=proc.pid)
        sampler.prime()
        s = sampler.read()
        parent_only = psutil.Process(proc.pid).memory_info().rss
        assert s.server_rss_bytes >= parent_only + 75 * MIB
    finally:
        proc.stdin.close()
        proc.wait(30)


async def test_run_samples_on_schedule_and_says_once_when_no_server_listens():
    port = int(refused_url().rsplit(":", 1)[1])
    got: list = []
    enough = asyncio.Event()

    def emit(ev):
        got.append(ev)
        if sum(isinstance(e, ResourcesSampled) for e in got) >= 6:
            enough.set()

    sampler = SystemSampler(7, hz=20.0, server_port=port)
    task = asyncio.create_task(sampler.run(emit))
    await asyncio.wait_for(enough.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    samples = [e for e in got if isinstance(e, ResourcesSampled)]
    downs = [e for e in got if isinstance(e, SourceDown)]
    assert len(downs) == 1 and f"no process listens on port {port}" in downs[0].reason
    assert all(s.server_rss_bytes is None for s in samples)
    # 20 Hz: never faster than the schedule (a burst after a slow read would be), and the
    # 20 asked for, not the default 1 Hz. On a busy machine a slow read skips ticks (by design),
    # so the mean can be a multiple of 50 ms: no tighter upper bound holds there.
    gaps = [(b.t_ns - a.t_ns) / 1e6 for a, b in itertools.pairwise(samples)]
    assert 0.7 * 50 <= sum(gaps) / len(gaps) < 500, gaps


async def test_cpu_is_a_real_delta_even_while_other_threads_do_blocking_work():
    """psutil keeps cpu_percent's last reading per thread: reading on a pool's different
    threads gives 0.0 deltas. A busy core must show as busy in every sample."""
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    samples: list = []
    enough = asyncio.Event()

    def emit(ev):
        if isinstance(ev, ResourcesSampled):
            samples.append(ev)
            if len(samples) >= 5:
                enough.set()

    async def other_blocking_work():  # keeps asyncio's default thread pool busy and rotating
        while True:
            await asyncio.gather(*(asyncio.to_thread(time.sleep, 0.005) for _ in range(4)))

    try:
        noise = asyncio.create_task(other_blocking_work())
        task = asyncio.create_task(SystemSampler(1, hz=20).run(emit))
        await asyncio.wait_for(enough.wait(), 10)
        task.cancel()
        noise.cancel()
        await asyncio.gather(task, noise, return_exceptions=True)
    finally:
        burner.kill()
        burner.wait()
    assert all(max(s.per_core) > 20 for s in samples), [s.per_core for s in samples]


def test_host_info_describes_the_machine():
    h = host_info()
    assert h["cores_logical"] == psutil.cpu_count()
    assert h["mem_total_bytes"] == psutil.virtual_memory().total
    assert h["hostname"] == socket.gethostname() and h["python"]
    if hasattr(os, "sched_getaffinity"):
        assert h["cpus_allowed"] == len(os.sched_getaffinity(0))
