"""Waiting for another process's doing (a file, a log, rows in a database), which sends no event
to wait on: poll until it holds. The timeout is a wait, not a bound: a busy machine only makes it
take longer."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    cond: Callable[[], bool], timeout: float = 60.0, what: str = "", every: float = 0.005
) -> None:
    """Poll ``cond`` every ``every`` seconds until it holds; ``AssertionError`` naming ``what``
    after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or cond}")
        time.sleep(every)
