"""Short scheduler slices for the threads that stamp (recorder/short_slice.py): granted where the
kernel has them (Linux 6.12+), the thread's nice value and a policy the user chose kept, and
``llmtop record``'s event loop runs with them."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from support.cli import llmtop_exe
from support.servers import Behavior, FakeServer

from llmtop.recorder.short_slice import SLICE_NS, request_short_slice


def in_thread(fn):
    """``fn()`` on a fresh thread (its scheduling attributes die with it)."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join()
    return out[0]


def slice_of(sched: Path) -> int | None:
    """``se.slice`` from a ``/proc/.../sched`` file (kernels with EEVDF slices show it)."""
    for line in sched.read_text().splitlines():
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
    return None


def granted_here() -> bool:
    return in_thread(request_short_slice)


needs_slices = pytest.mark.skipif(
    not Path("/proc/thread-self/sched").exists() or not granted_here(),
    reason="no per-thread slices here (Linux 6.12+)",
)


@needs_slices
def test_the_slice_is_granted_and_the_nice_value_kept():
    def ask() -> tuple[bool, int | None, int]:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, 3)  # this thread only, as `nice` would
        granted = request_short_slice()
        return granted, slice_of(Path("/proc/thread-self/sched")), os.getpriority(os.PRIO_PROCESS, tid)  # fmt: skip

    assert in_thread(ask) == (True, SLICE_NS, 3)


def test_a_policy_the_user_chose_is_left_alone():
    def ask() -> tuple[bool, int]:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        return request_short_slice(), os.sched_getscheduler(0)

    assert in_thread(ask) == (False, os.SCHED_BATCH)


@needs_slices
def test_record_stamps_on_a_thread_with_short_slices(tmp_path):
    """While its requests wait for a slow first token, ``llmtop record``'s loop (its main
    thread) has the short slice."""
    with FakeServer({"slow": Behavior(ttft_ms=30_000, tokens=1)}) as srv:
        proc = subprocess.Popen(
            [llmtop_exe(), "record", "--backend", "openai", "--url", srv.openai_url, "--model",
             "slow", "--requests", "1", "--warmup", "0", "--db", str(tmp_path / "s.db")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            sched = Path(f"/proc/{proc.pid}/sched")
            deadline = time.monotonic() + 60
            while slice_of(sched) != SLICE_NS:  # set as the first request goes out
                assert proc.poll() is None and time.monotonic() < deadline, "never granted"
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
