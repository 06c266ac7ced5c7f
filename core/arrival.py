"""When a read's bytes arrived: the clock every token's timestamp comes from.

A coroutine that awaits a socket is resumed one loop iteration after the bytes were read, behind
every callback queued before it; ``perf_counter_ns()`` at that point includes their work. The
loops llmtop runs its recordings on (recorder/loop_probe.py's ``StampingLoop``) know when the
select that reported the bytes returned, and say so through ``received_ns()``; any other loop
(a test's, a library user's) gets ``perf_counter_ns`` at the resume, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


def arrival_clock() -> Callable[[], int]:
    """The running loop's ``received_ns`` if it has one, else ``time.perf_counter_ns`` (same
    clock, CLOCK_MONOTONIC, either way; the latter too outside a running loop)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # a coroutine driven by hand (tests/faults/test_faults_fuzz.py)
        return time.perf_counter_ns
    stamp = getattr(loop, "received_ns", None)
    return stamp if callable(stamp) else time.perf_counter_ns
