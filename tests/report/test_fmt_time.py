"""Times are stored in UTC and shown in the user's local time, the same in the CLI and the
dashboard (both use ``local_time``)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from llmtop.core.fmt import local_time


@pytest.fixture
def kolkata() -> Iterator[None]:
    """A zone with a half-hour offset, so a forgotten conversion cannot pass by luck."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = old
        time.tzset()


def test_stored_utc_is_shown_in_local_time(kolkata):
    assert local_time("2026-11-24T23:45:10.123+00:00") == "2026-11-25 05:15"
    assert local_time("2026-11-24T23:45:10.123+00:00", with_seconds=True) == "2026-11-25 05:15:10"


def test_text_that_is_not_a_time_is_shown_as_it_is(kolkata):
    assert local_time("yesterday-ish") == "yesterday-ish"
