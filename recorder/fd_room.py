"""Room for many sockets, made before the first request: each stream is a file descriptor.

Two things go wrong past a few hundred streams otherwise. The soft limit on open files (often
1,024 on a desktop) refuses the next connection with "too many open files" although the hard
limit allows more. And the kernel's table of descriptors grows by doubling (64, 256, 512, ...)
when a new descriptor does not fit; in a process with threads (llmtop has its writer and
samplers) Linux then waits for an RCU grace period, 10-25 ms during which the event loop stops
reading tokens: a stall measured at the 512th descriptor in every 256-stream run
(bench/fidelity.py). Growing the table once, before the run, moves that wait out of it.
"""

from __future__ import annotations

import os

try:
    import resource
except ImportError:  # not on Windows: nothing to do there
    resource = None  # type: ignore[assignment]

SPARE_FDS = 64
"""Descriptors besides the streams': the database, its journal, samplers' /proc reads, pipes."""
MIN_TABLE = 1024
"""Grow at least this far: a proxy or a dashboard does not know its streams in advance, and a
table of 1,024 descriptors costs 8 KiB."""


def make_room_for_sockets(streams: int) -> int:
    """Raise the soft open-files limit towards the hard one if ``streams`` need it, and grow the
    descriptor table to fit them; returns the descriptors now available (the soft limit)."""
    if resource is None:
        return streams + SPARE_FDS
    want = max(streams + SPARE_FDS, MIN_TABLE)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    top = want if soft == resource.RLIM_INFINITY else min(want, soft)
    grow_table(top)
    return int(soft) if soft != resource.RLIM_INFINITY else want


def grow_table(size: int) -> None:
    """Make the kernel's descriptor table hold ``size`` descriptors: a descriptor at
    ``size - 1``, closed at once (the table never shrinks). Nothing is done when that number is
    in use: the table is that big already, and ``dup2`` would close it."""
    if size < 1 or _is_open(size - 1):
        return
    try:
        src = os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return
    try:
        os.dup2(src, size - 1)
        os.close(size - 1)
    except OSError:
        pass
    finally:
        os.close(src)


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
